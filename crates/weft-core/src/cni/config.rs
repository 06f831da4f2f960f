//! The network configuration a runtime passes on stdin.
//!
//! Option names and meanings follow the reference `bridge` plugin with
//! `host-local` IPAM, so a conflist can swap `"type": "bridge"` for
//! `"type": "weft-cni"` and keep working. Unknown keys are accepted, as the spec
//! requires of plugins.

pub use super::error::invalid_config_path;
use super::error::{clip, invalid_config, CniError, Code};
use super::result::Dns;
use super::version::Version;
use ipnet::IpNet;
use serde::Deserialize;
use std::net::IpAddr;
use std::path::PathBuf;

/// Default bridge name, as in the reference plugin.
pub const DEFAULT_BRIDGE: &str = "cni0";
/// Default IPAM state directory, as in host-local.
pub const DEFAULT_DATA_DIR: &str = "/var/lib/cni/networks";
/// The longest network name: the name is a directory under `dataDir`, and
/// no file name may be longer (NAME_MAX).
pub const MAX_NAME: usize = 255;

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(default, rename = "type")]
    pub plugin_type: String,
    #[serde(default)]
    pub bridge: Option<String>,
    #[serde(default)]
    pub is_gateway: bool,
    #[serde(default)]
    pub is_default_gateway: bool,
    #[serde(default)]
    pub force_address: bool,
    #[serde(default)]
    pub ip_masq: bool,
    #[serde(default)]
    pub mtu: Option<u32>,
    /// weft's own key, not the reference plugin's: the IPv4 GSO and GRO
    /// limit of both veth ends and the bridge, above 64 KiB for BIG TCP
    /// (IPv6 keeps the default). The agent sets it only where every device
    /// a pod's packets cross can take it.
    #[serde(default)]
    pub gso_ipv4_max_size: Option<u32>,
    /// weft's own key: let every CPU take the receive work of the host
    /// end of the pair (receive packet steering), so a pod's packets are
    /// routed on another CPU than the one that sent them.
    #[serde(default)]
    pub rps: bool,
    #[serde(default)]
    pub hairpin_mode: bool,
    #[serde(default)]
    pub promisc_mode: bool,
    #[serde(default)]
    pub vlan: Option<u16>,
    #[serde(default)]
    pub macspoofchk: bool,
    /// weft's own: packets from the pod must carry its addresses
    /// (`weft_core::nft::skeleton`). The agent's conflist turns it on.
    #[serde(default)]
    pub ipspoofchk: bool,
    #[serde(default)]
    pub enabledad: bool,
    #[serde(default)]
    pub ipam: Option<IpamConf>,
    #[serde(default)]
    pub dns: Option<Dns>,
    #[serde(default)]
    pub runtime_config: RuntimeConfig,
    #[serde(default)]
    pub args: Option<ConfArgs>,
    /// Kept raw: it is passed through, and only CHECK reads it.
    #[serde(default)]
    pub prev_result: Option<serde_json::Value>,
    #[serde(default, rename = "cni.dev/valid-attachments")]
    pub valid_attachments: Option<Vec<Attachment>>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct IpamConf {
    #[serde(default, rename = "type")]
    pub ipam_type: String,
    #[serde(default)]
    pub ranges: Vec<Vec<RangeConf>>,
    /// The pre-`ranges` single-range form host-local still accepts.
    #[serde(default, flatten)]
    pub legacy: LegacyRange,
    #[serde(default)]
    pub routes: Vec<RouteConf>,
    #[serde(default)]
    pub data_dir: Option<PathBuf>,
    #[serde(default)]
    pub resolv_conf: Option<PathBuf>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct LegacyRange {
    #[serde(default)]
    pub subnet: Option<IpNet>,
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct RangeConf {
    pub subnet: IpNet,
    #[serde(default)]
    pub range_start: Option<IpAddr>,
    #[serde(default)]
    pub range_end: Option<IpAddr>,
    #[serde(default)]
    pub gateway: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
pub struct RouteConf {
    pub dst: IpNet,
    #[serde(default)]
    pub gw: Option<IpAddr>,
}

#[derive(Debug, Clone, Deserialize, Default)]
#[serde(rename_all = "camelCase")]
pub struct RuntimeConfig {
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
    #[serde(default)]
    pub port_mappings: Vec<PortMapping>,
    #[serde(default)]
    pub dns: Option<Dns>,
}

/// The `args` convention: `{"cni": {"ips": [...], "mac": "..."}}`.
#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConfArgs {
    #[serde(default)]
    pub cni: Option<ConfArgsCni>,
}

#[derive(Debug, Clone, Deserialize, Default)]
pub struct ConfArgsCni {
    #[serde(default)]
    pub ips: Vec<String>,
    #[serde(default)]
    pub mac: Option<String>,
}

/// One hostPort → pod mapping (the `portMappings` capability).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PortMapping {
    pub host_port: u16,
    pub container_port: u16,
    #[serde(default = "default_protocol")]
    pub protocol: String,
    #[serde(default, rename = "hostIP", alias = "hostIp")]
    pub host_ip: Option<String>,
}

fn default_protocol() -> String {
    "tcp".to_string()
}

/// One entry of `cni.dev/valid-attachments` (GC).
#[derive(Debug, Clone, Deserialize, PartialEq, Eq, Hash)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

impl NetConf {
    /// Decodes and validates stdin. Undecodable JSON is error 6; a field with
    /// the wrong type or value is error 7 naming the field; an unsupported
    /// cniVersion is error 1.
    pub fn parse(stdin: &[u8]) -> Result<(NetConf, Version), CniError> {
        let value: serde_json::Value = serde_json::from_slice(stdin).map_err(|e| {
            CniError::new(Code::Decode, "network configuration is not valid JSON")
                .with_details(e.to_string())
        })?;
        if !value.is_object() {
            return Err(CniError::new(
                Code::Decode,
                "network configuration must be a JSON object",
            ));
        }
        match value.get("cniVersion") {
            Some(serde_json::Value::String(_)) => {}
            Some(_) => return Err(invalid_config("cniVersion: must be a string")),
            None => return Err(invalid_config("cniVersion: missing")),
        }
        let conf: NetConf = serde_path_to_error::deserialize(value).map_err(|e| {
            let path = e.path().to_string();
            invalid_config(format!("{path}: {}", e.inner()))
        })?;
        let version = Version::parse_supported(&conf.cni_version)?;
        conf.validate()?;
        Ok((conf, version))
    }

    fn validate(&self) -> Result<(), CniError> {
        if !self.name.is_empty() {
            validate_name(&self.name)?;
        }
        if let Some(mtu) = self.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid_config(format!("mtu: {mtu} is outside 68..65535")));
            }
        }
        if let Some(g) = self.gso_ipv4_max_size {
            // The kernel's GSO_MAX_SIZE is 8 × 65535 (a veth's TSO limit).
            if !(65_536..=524_280).contains(&g) {
                return Err(invalid_config(format!(
                    "gsoIpv4MaxSize: {g} is outside 65536..524280"
                )));
            }
        }
        if let Some(vlan) = self.vlan {
            if vlan > 4094 {
                return Err(invalid_config(format!("vlan: {vlan} is outside 0..4094")));
            }
        }
        if let Some(b) = &self.bridge {
            if b.is_empty() || b.len() > 15 || b.contains('/') || b.contains(char::is_whitespace) {
                return Err(invalid_config(format!(
                    "bridge: {} is not a valid interface name (1-15 characters)",
                    clip(b)
                )));
            }
        }
        for (i, pm) in self.runtime_config.port_mappings.iter().enumerate() {
            let p = pm.protocol.to_ascii_lowercase();
            if !matches!(p.as_str(), "tcp" | "udp" | "sctp") {
                return Err(invalid_config(format!(
                    "runtimeConfig.portMappings[{i}].protocol: {} is not tcp, udp or sctp",
                    clip(&pm.protocol)
                )));
            }
            if pm.host_port == 0 || pm.container_port == 0 {
                return Err(invalid_config(format!(
                    "runtimeConfig.portMappings[{i}]: hostPort and containerPort must be 1..65535"
                )));
            }
            if let Some(h) = &pm.host_ip {
                if !h.is_empty() && h.parse::<IpAddr>().is_err() {
                    return Err(invalid_config(format!(
                        "runtimeConfig.portMappings[{i}].hostIP: {} is not an IP address",
                        clip(h)
                    )));
                }
            }
        }
        Ok(())
    }

    pub fn bridge_name(&self) -> &str {
        self.bridge.as_deref().unwrap_or(DEFAULT_BRIDGE)
    }

    /// The IPAM section; every verb but VERSION needs one.
    pub fn ipam(&self) -> Result<&IpamConf, CniError> {
        self.ipam
            .as_ref()
            .ok_or_else(|| invalid_config("ipam: missing"))
    }

    /// The container MAC: runtimeConfig wins over args, as in the reference.
    pub fn requested_mac(&self) -> Option<&str> {
        self.runtime_config.mac.as_deref().or_else(|| {
            self.args
                .as_ref()
                .and_then(|a| a.cni.as_ref())
                .and_then(|c| c.mac.as_deref())
        })
    }

    /// Requested IPs from runtimeConfig or the args convention.
    pub fn requested_ips(&self) -> Vec<String> {
        if !self.runtime_config.ips.is_empty() {
            return self.runtime_config.ips.clone();
        }
        self.args
            .as_ref()
            .and_then(|a| a.cni.as_ref())
            .map(|c| c.ips.clone())
            .unwrap_or_default()
    }

    /// Whether IPAM runs in-process (the host-local superset) or is delegated.
    pub fn ipam_is_builtin(&self) -> bool {
        self.ipam
            .as_ref()
            .map(|i| matches!(i.ipam_type.as_str(), "host-local" | "weft" | ""))
            .unwrap_or(false)
    }

    pub fn data_dir(&self) -> PathBuf {
        self.ipam
            .as_ref()
            .and_then(|i| i.data_dir.clone())
            .unwrap_or_else(|| PathBuf::from(DEFAULT_DATA_DIR))
    }
}

/// libcni's rule for network names, which its plugin skeleton (and so
/// host-local) enforces: an ASCII letter or digit, then ASCII letters,
/// digits, `_`, `.` or `-`. The name becomes a directory under `dataDir`,
/// so the rule is also what keeps the IPAM store inside it: no `/`, no
/// `..` component, no `\`, no control or non-ASCII characters.
pub fn validate_name(name: &str) -> Result<(), CniError> {
    let ok = name
        .bytes()
        .next()
        .is_some_and(|b| b.is_ascii_alphanumeric())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'_' | b'.' | b'-'));
    if !ok {
        return Err(invalid_config_path(
            "name",
            format!(
                "{} must be ASCII letters, digits, '_', '.' or '-', starting with a letter or digit",
                clip(name)
            ),
        ));
    }
    if name.len() > MAX_NAME {
        return Err(invalid_config_path(
            "name",
            format!("{} is longer than {MAX_NAME} bytes", clip(name)),
        ));
    }
    Ok(())
}

impl IpamConf {
    /// The range sets, with the legacy single-range form folded in.
    pub fn range_sets(&self) -> Result<Vec<Vec<RangeConf>>, CniError> {
        let mut sets = self.ranges.clone();
        if let Some(subnet) = self.legacy.subnet {
            sets.insert(
                0,
                vec![RangeConf {
                    subnet,
                    range_start: self.legacy.range_start,
                    range_end: self.legacy.range_end,
                    gateway: self.legacy.gateway,
                }],
            );
        }
        if sets.is_empty() || sets.iter().any(|s| s.is_empty()) {
            return Err(invalid_config(
                "ipam.ranges: at least one range set with at least one range is required",
            ));
        }
        Ok(sets)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn accepts_reference_bridge_conf_and_unknown_keys() {
        let (c, v) = NetConf::parse(
            br#"{"cniVersion":"0.4.0","name":"n","type":"weft-cni","bridge":"br0",
            "isGateway":true,"ipMasq":true,"somethingElse":{"x":1},
            "ipam":{"type":"host-local","subnet":"10.1.0.0/16","routes":[{"dst":"0.0.0.0/0"}]}}"#,
        )
        .unwrap();
        assert_eq!(v, Version::V0_4_0);
        assert_eq!(c.bridge_name(), "br0");
        assert_eq!(c.ipam().unwrap().range_sets().unwrap().len(), 1);
    }

    #[test]
    fn errors_name_the_field() {
        let e = NetConf::parse(
            br#"{"cniVersion":"1.0.0","name":"n","type":"weft-cni",
            "ipam":{"type":"host-local","ranges":[[{"subnet":"10.1.0.300/16"}]]}}"#,
        )
        .unwrap_err();
        assert_eq!(e.code, Code::InvalidConfig);
        assert!(e.msg.starts_with("ipam.ranges[0][0].subnet"), "{}", e.msg);

        for bad in ["1000", "524288"] {
            let conf = format!(r#"{{"cniVersion":"1.0.0","gsoIpv4MaxSize":{bad}}}"#);
            let e = NetConf::parse(conf.as_bytes()).unwrap_err();
            assert!(e.msg.starts_with("gsoIpv4MaxSize:"), "{}", e.msg);
        }
        let (c, _) = NetConf::parse(br#"{"cniVersion":"1.0.0","gsoIpv4MaxSize":196608}"#).unwrap();
        assert_eq!(c.gso_ipv4_max_size, Some(196_608));
        let e = NetConf::parse(br#"{"cniVersion":"1.0.0","mtu":"big"}"#).unwrap_err();
        assert!(e.msg.starts_with("mtu:"), "{}", e.msg);

        assert_eq!(NetConf::parse(b"{not json").unwrap_err().code, Code::Decode);
        assert_eq!(
            NetConf::parse(br#"{"cniVersion":"0.9.0"}"#)
                .unwrap_err()
                .code,
            Code::IncompatibleVersion
        );
        assert_eq!(
            NetConf::parse(br#"{"name":"x"}"#).unwrap_err().code,
            Code::InvalidConfig
        );
    }

    #[test]
    fn network_names_follow_libcni_and_stay_inside_data_dir() {
        for good in ["weftnet", "k8s-pod-network", "a", "net_1.v2", "0", "a..b"] {
            validate_name(good).unwrap_or_else(|e| panic!("{good:?}: {e}"));
        }
        let long = "n".repeat(MAX_NAME + 1);
        for bad in [
            "../../x",
            "..",
            ".",
            "a/b",
            "/abs",
            "a\\b",
            "-x",
            "_x",
            ".hidden",
            "tab\there",
            "nl\n",
            "nul\0",
            "del\x7f",
            "café",
            "名前",
            "sp ace",
            &long,
        ] {
            let e = validate_name(bad).unwrap_err();
            assert_eq!(e.code, Code::InvalidConfig, "{bad:?}");
            assert!(e.msg.starts_with("name: "), "{}", e.msg);
        }
        let conf = format!(
            r#"{{"cniVersion":"1.0.0","name":"{}"}}"#,
            "x/".repeat(1 << 19)
        );
        let e = NetConf::parse(conf.as_bytes()).unwrap_err();
        assert!(
            e.msg.starts_with("name: ") && e.msg.len() < 512,
            "{}",
            e.msg.len()
        );
    }
}
