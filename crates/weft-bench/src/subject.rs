//! What is measured: the plugin configurations and the kernel floors, and
//! the network configuration the plugins get. Pure.

use serde::Serialize;
use std::path::Path;

/// One thing whose ADD and DEL latency is measured.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Subject {
    /// weft-cni as the `bridge` plugin with its built-in host-local IPAM.
    Weft { masq: bool },
    /// The reference `bridge` plugin, delegating to `host-local`.
    Reference { masq: bool },
    /// weft-cni without ipMasq and with `ipspoofchk` (what the agent's
    /// conflist asks for): what anti-spoofing costs an ADD and a DEL.
    WeftSpoofChk,
    /// `ip link add <veth> type veth peer name eth0 netns <pod>` and
    /// `ip link del <veth>`, one exec each: the floor for any exec'd plugin.
    FloorIp,
    /// The same two operations as single netlink requests from inside this
    /// process: the kernel's own cost, with no exec at all.
    FloorNetlink,
}

impl Subject {
    /// Every subject, in the order they are run and reported.
    pub const ALL: [Subject; 7] = [
        Subject::FloorNetlink,
        Subject::FloorIp,
        Subject::Reference { masq: true },
        Subject::Weft { masq: true },
        Subject::Reference { masq: false },
        Subject::Weft { masq: false },
        Subject::WeftSpoofChk,
    ];

    pub fn label(self) -> &'static str {
        match self {
            Subject::Weft { masq: true } => "weft-cni, ipMasq",
            Subject::Weft { masq: false } => "weft-cni, no ipMasq",
            Subject::WeftSpoofChk => "weft-cni, no ipMasq, ipspoofchk",
            Subject::Reference { masq: true } => "reference bridge+host-local, ipMasq",
            Subject::Reference { masq: false } => "reference bridge+host-local, no ipMasq",
            Subject::FloorIp => "kernel floor: `ip link` veth (exec)",
            Subject::FloorNetlink => "kernel floor: netlink veth (in-process)",
        }
    }

    /// A short tag for namespace and directory names.
    pub fn tag(self) -> &'static str {
        match self {
            Subject::Weft { masq: true } => "wm",
            Subject::Weft { masq: false } => "wn",
            Subject::WeftSpoofChk => "wg",
            Subject::Reference { masq: true } => "rm",
            Subject::Reference { masq: false } => "rn",
            Subject::FloorIp => "fi",
            Subject::FloorNetlink => "fn",
        }
    }

    pub fn is_plugin(self) -> bool {
        matches!(
            self,
            Subject::Weft { .. } | Subject::Reference { .. } | Subject::WeftSpoofChk
        )
    }

    /// The reference counterpart of a weft configuration.
    pub fn reference(self) -> Option<Subject> {
        match self {
            Subject::Weft { masq } => Some(Subject::Reference { masq }),
            Subject::WeftSpoofChk => Some(Subject::Reference { masq: false }),
            _ => None,
        }
    }
}

/// The bridge every plugin configuration uses, inside its own node netns.
pub const BRIDGE: &str = "wbbr0";
/// Big enough for every pod of a run to hold an address at once.
pub const SUBNET: &str = "10.88.0.0/16";

/// The network configuration a runtime would hand the plugin (one entry of
/// a conflist, with `name` and `cniVersion` filled in). weft and the
/// reference get byte-identical configurations: weft is a drop-in `bridge`.
pub fn plugin_config(masq: bool, data_dir: &Path) -> String {
    config_value(masq, data_dir).to_string()
}

/// weft's configuration with `ipspoofchk` (a key only weft-cni reads).
pub fn spoofchk_config(data_dir: &Path) -> String {
    let mut v = config_value(false, data_dir);
    v["ipspoofchk"] = true.into();
    v.to_string()
}

fn config_value(masq: bool, data_dir: &Path) -> serde_json::Value {
    serde_json::json!({
        "cniVersion": "1.0.0",
        "name": "weft-bench",
        "type": "bridge",
        "bridge": BRIDGE,
        "isGateway": true,
        "ipMasq": masq,
        "ipam": {
            "type": "host-local",
            "subnet": SUBNET,
            "dataDir": data_dir,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_is_the_reference_bridge_format() {
        let c: serde_json::Value =
            serde_json::from_str(&plugin_config(true, Path::new("/tmp/x"))).unwrap();
        assert_eq!(c["type"], "bridge");
        assert_eq!(c["ipMasq"], true);
        assert_eq!(c["ipam"]["type"], "host-local");
        assert_eq!(c["ipam"]["dataDir"], "/tmp/x");
    }

    #[test]
    fn tags_are_unique_and_every_weft_has_a_reference() {
        let mut tags: Vec<_> = Subject::ALL.iter().map(|s| s.tag()).collect();
        tags.sort();
        tags.dedup();
        assert_eq!(tags.len(), Subject::ALL.len());
        for s in Subject::ALL {
            if let Some(r) = s.reference() {
                assert!(Subject::ALL.contains(&r));
            }
        }
    }
}
