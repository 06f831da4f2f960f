//! IPAM: the built-in host-local superset, or delegation to another plugin
//! found on CNI_PATH, as the spec describes.

use crate::env::Env;
use crate::kernel_err;
use ipnet::IpNet;
use std::io::Write;
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use weft_core::cni::config::invalid_config_path;
use weft_core::cni::error::clip;
use weft_core::cni::{CniError, CniResult, Code, Dns, IpConfig, NetConf, Route};
use weft_core::ipam::RangeSet;
use weft_kernel::ipam_store::IpamStore;

/// Addresses (with their subnet prefix and gateway) plus routes and DNS.
#[derive(Debug, Clone, Default)]
pub struct Allocation {
    pub ips: Vec<IpConfig>,
    pub routes: Vec<Route>,
    pub dns: Dns,
}

/// Parses requested addresses, which may come with or without a prefix.
pub fn parse_requested(ips: &[String], field: &str) -> Result<Vec<IpAddr>, CniError> {
    ips.iter()
        .map(|s| {
            s.parse::<IpAddr>()
                .or_else(|_| s.parse::<IpNet>().map(|n| n.addr()))
                .map_err(|_| {
                    invalid_config_path(field, format!("{} is not an IP address", clip(s)))
                })
        })
        .collect()
}

pub fn range_sets(conf: &NetConf) -> Result<Vec<RangeSet>, CniError> {
    let sets = conf.ipam()?.range_sets()?;
    let paths: Vec<String> = (0..sets.len())
        .map(|i| format!("ipam.ranges[{i}]"))
        .collect();
    RangeSet::canonicalize_all(&sets, &paths)
}

/// Allocates one address per range set under the network's lock and
/// returns the still-locked store, so the caller can write its record
/// before anyone else looks.
pub fn builtin_add(
    conf: &NetConf,
    id: &str,
    ifname: &str,
    requested: &[IpAddr],
) -> Result<(IpamStore, Vec<IpConfig>), CniError> {
    let sets = range_sets(conf)?;
    for r in requested {
        if !sets.iter().any(|s| s.range_for(*r).is_some()) {
            return Err(CniError::new(
                Code::InvalidConfig,
                format!("requested IP {r} is not in any configured range"),
            ));
        }
    }
    let store = IpamStore::open(&conf.data_dir(), &conf.name).map_err(kernel_err("ipam store"))?;
    if store.get_record(id, ifname).is_some() {
        return Err(crate::add::already_attached(conf, id, ifname));
    }
    let mut got: Vec<IpConfig> = Vec::new();
    let undo = |store: &IpamStore, got: &[IpConfig]| {
        for ip in got {
            let _ = store.release(ip.address.addr(), id, ifname);
        }
    };
    for (i, set) in sets.iter().enumerate() {
        let wanted = requested.iter().find(|r| set.range_for(**r).is_some());
        let picked = match wanted {
            Some(ip) => match store.reserve(*ip, id, ifname) {
                Ok(true) => Some(*ip),
                Ok(false) => {
                    undo(&store, &got);
                    return Err(CniError::new(
                        Code::Internal,
                        format!("requested IP {ip} is already allocated"),
                    ));
                }
                Err(e) => {
                    undo(&store, &got);
                    return Err(kernel_err("reserve address")(e));
                }
            },
            None => {
                let mut picked = None;
                for (_, ip) in set.candidates(store.last_reserved(i)) {
                    match store.reserve(ip, id, ifname) {
                        Ok(true) => {
                            picked = Some(ip);
                            break;
                        }
                        Ok(false) => continue,
                        Err(e) => {
                            undo(&store, &got);
                            return Err(kernel_err("reserve address")(e));
                        }
                    }
                }
                if let Some(ip) = picked {
                    let _ = store.set_last_reserved(i, ip);
                }
                picked
            }
        };
        let Some(ip) = picked else {
            undo(&store, &got);
            return Err(CniError::new(
                Code::Internal,
                format!("no IP addresses available in range set ipam.ranges[{i}]"),
            ));
        };
        let range = set.range_for(ip).expect("picked from this set");
        got.push(IpConfig {
            address: range.with_prefix(ip),
            gateway: Some(range.gateway),
            interface: None,
        });
    }
    Ok((store, got))
}

/// Routes and DNS the built-in IPAM reports, as host-local does.
pub fn builtin_extras(conf: &NetConf) -> Result<(Vec<Route>, Dns), CniError> {
    let ipam = conf.ipam()?;
    let routes = ipam
        .routes
        .iter()
        .map(|r| Route {
            dst: r.dst,
            gw: r.gw,
        })
        .collect();
    let dns = match &ipam.resolv_conf {
        Some(p) => parse_resolv_conf(p)?,
        None => Dns::default(),
    };
    Ok((routes, dns))
}

/// A resolv.conf larger than this is refused: the file is named by the
/// configuration, and `/dev/zero` or a pipe must not hang or swell an ADD.
const RESOLV_CONF_MAX: u64 = 64 * 1024;

fn parse_resolv_conf(p: &Path) -> Result<Dns, CniError> {
    use std::io::Read;
    let fail = |why: String| {
        CniError::new(
            Code::Io,
            format!(
                "ipam.resolvConf: cannot read {}: {why}",
                clip(&p.display().to_string())
            ),
        )
    };
    // Only a regular file: opening a FIFO would block the ADD until a
    // writer came, and a device could be read without end. Checked before
    // opening for that reason, and again on the open file in case the
    // path changed in between.
    let regular = |m: std::io::Result<std::fs::Metadata>| -> Result<(), CniError> {
        match m {
            Ok(m) if m.is_file() => Ok(()),
            Ok(_) => Err(fail("not a regular file".into())),
            Err(e) => Err(fail(e.to_string())),
        }
    };
    regular(std::fs::metadata(p))?;
    let f = std::fs::File::open(p).map_err(|e| fail(e.to_string()))?;
    regular(f.metadata())?;
    let mut text = String::new();
    f.take(RESOLV_CONF_MAX + 1)
        .read_to_string(&mut text)
        .map_err(|e| fail(e.to_string()))?;
    if text.len() as u64 > RESOLV_CONF_MAX {
        return Err(fail(format!("larger than {RESOLV_CONF_MAX} bytes")));
    }
    let mut dns = Dns::default();
    for line in text.lines() {
        let mut f = line.split_whitespace();
        match f.next() {
            Some("nameserver") => dns.nameservers.extend(f.map(String::from)),
            Some("domain") => dns.domain = f.next().map(String::from),
            Some("search") => dns.search = f.map(String::from).collect(),
            Some("options") => dns.options.extend(f.map(String::from)),
            _ => {}
        }
    }
    Ok(dns)
}

/// Finds an IPAM plugin on CNI_PATH, refusing weft-cni itself: it is no
/// IPAM plugin, and running it as one would run this very configuration
/// again, and again, a new process each time.
fn find_plugin(env: &Env, name: &str) -> Result<PathBuf, CniError> {
    let myself = || {
        invalid_config_path(
            "ipam.type",
            format!(
                "{} is weft-cni itself; use \"host-local\" (built in) or another IPAM plugin",
                clip(name)
            ),
        )
    };
    if name.contains('/') || name == "." || name == ".." {
        return Err(invalid_config_path(
            "ipam.type",
            format!("{} must be a plain name", clip(name)),
        ));
    }
    if name == "weft-cni" {
        return Err(myself());
    }
    let path = env.path.as_deref().ok_or_else(|| {
        CniError::new(
            Code::InvalidEnv,
            "CNI_PATH: required to run the IPAM plugin",
        )
    })?;
    let bin = path
        .split(':')
        .filter(|d| !d.is_empty())
        .map(|d| Path::new(d).join(name))
        .find(|p| p.is_file())
        .ok_or_else(|| {
            invalid_config_path(
                "ipam.type",
                format!("plugin {} not found in CNI_PATH {}", clip(name), clip(path)),
            )
        })?;
    if is_this_executable(&bin) {
        return Err(myself());
    }
    Ok(bin)
}

/// Whether `bin` is this process's executable under another name: a
/// symlink (same resolved path) or a hard link or bind mount (same inode).
fn is_this_executable(bin: &Path) -> bool {
    use std::os::unix::fs::MetadataExt;
    let Ok(me) = std::env::current_exe() else {
        return false;
    };
    let same_path = match (std::fs::canonicalize(bin), std::fs::canonicalize(&me)) {
        (Ok(a), Ok(b)) => a == b,
        _ => false,
    };
    let same_inode = match (std::fs::metadata(bin), std::fs::metadata(&me)) {
        (Ok(a), Ok(b)) => (a.dev(), a.ino()) == (b.dev(), b.ino()),
        _ => false,
    };
    same_path || same_inode
}

/// Runs the delegated IPAM plugin with the same config and environment.
pub fn delegate(
    env: &Env,
    conf: &NetConf,
    command: &str,
    stdin: &[u8],
) -> Result<Option<CniResult>, CniError> {
    let name = &conf.ipam()?.ipam_type;
    let bin = find_plugin(env, name)?;
    let mut cmd = Command::new(&bin);
    cmd.env("CNI_COMMAND", command)
        .env(
            crate::env::DEPTH_VAR,
            (env.depth.saturating_add(1)).to_string(),
        )
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit());
    let mut child = cmd
        .spawn()
        .map_err(|e| CniError::new(Code::Io, format!("exec {}: {e}", bin.display())))?;
    if let Some(mut i) = child.stdin.take() {
        let _ = i.write_all(stdin);
    }
    let out = child
        .wait_with_output()
        .map_err(|e| CniError::new(Code::Io, format!("wait for {}: {e}", bin.display())))?;
    let v: Option<serde_json::Value> = serde_json::from_slice(&out.stdout).ok();
    if !out.status.success() {
        let (code, msg) = v
            .as_ref()
            .map(|v| {
                (
                    v.get("code").and_then(|c| c.as_u64()).unwrap_or(100),
                    v.get("msg")
                        .and_then(|m| m.as_str())
                        .unwrap_or("")
                        .to_string(),
                )
            })
            .unwrap_or((100, String::new()));
        let code = match code {
            1 => Code::IncompatibleVersion,
            2 => Code::UnsupportedField,
            3 => Code::ContainerUnknown,
            4 => Code::InvalidEnv,
            5 => Code::Io,
            6 => Code::Decode,
            7 => Code::InvalidConfig,
            11 => Code::TryAgainLater,
            _ => Code::Internal,
        };
        return Err(CniError::new(
            code,
            format!("ipam plugin {} {command}: {msg}", clip(name)),
        ));
    }
    if command != "ADD" {
        return Ok(None);
    }
    let v = v.ok_or_else(|| {
        CniError::new(
            Code::Decode,
            format!("ipam plugin {} returned no JSON result", clip(name)),
        )
    })?;
    CniResult::from_json(&v).map(Some)
}

/// Delegated IPAM is given the same stdin as this plugin, so any failure
/// to clean up is reported but never stops the rest of DEL.
pub fn delegate_quiet(
    env: &Env,
    conf: &NetConf,
    command: &str,
    stdin: &[u8],
) -> Result<(), CniError> {
    delegate(env, conf, command, stdin).map(|_| ())
}
