//! Deletes conntrack entries through the `conntrack` tool (conntrack-tools),
//! as kube-proxy long did. UDP has no connection end, so an entry that
//! NATs a client to a backend that went away, or that was created while a
//! Service had no backend, would hold the client's flow until it times
//! out; DNS resolvers re-use their source port and never recover.

use crate::error::KernelError;
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The `conntrack` binary: `$WEFT_CONNTRACK`, else the sbin paths, else `$PATH`.
pub fn binary() -> PathBuf {
    crate::nft::sbin_tool("WEFT_CONNTRACK", "conntrack")
}

/// Which UDP entries to delete: those whose original destination is
/// `dst` (any address when `None`, as for a NodePort) and port `dport`,
/// and, when `backend` is given, only those NATed to it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UdpFilter {
    pub v6: bool,
    pub dst: Option<IpAddr>,
    pub dport: u16,
    pub backend: Option<IpAddr>,
}

impl UdpFilter {
    pub fn args(&self) -> Vec<String> {
        let mut a: Vec<String> = vec![
            "-D".into(),
            "-f".into(),
            if self.v6 { "ipv6" } else { "ipv4" }.into(),
            "-p".into(),
            "udp".into(),
        ];
        if let Some(d) = self.dst {
            a.extend(["--orig-dst".into(), d.to_string()]);
        }
        a.extend(["--orig-port-dst".into(), self.dport.to_string()]);
        if let Some(b) = self.backend {
            a.extend(["--reply-src".into(), b.to_string()]);
        }
        a
    }
}

/// Deletes the matching entries in the current network namespace; none
/// matching is not an error.
pub fn delete_udp(f: &UdpFilter) -> Result<(), KernelError> {
    let out = Command::new(binary())
        .args(f.args())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .output()
        .map_err(|e| KernelError::io("exec conntrack", e))?;
    let err = String::from_utf8_lossy(&out.stderr);
    // conntrack exits 1 with "0 flow entries have been deleted" when
    // nothing matched.
    if out.status.success() || err.contains("0 flow entries") {
        Ok(())
    } else {
        Err(KernelError::Other(format!("conntrack: {}", err.trim())))
    }
}
