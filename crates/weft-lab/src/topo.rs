//! Namespace plumbing for the lab, through iproute2 (the lab is a harness:
//! clarity over speed). Every command names the namespace it acts in;
//! none runs in the host's own.

use crate::LabError;
use std::path::Path;
use std::process::{Command, Stdio};

pub fn ip(args: &[&str]) -> Result<(), LabError> {
    let o = Command::new("ip")
        .args(args)
        .stdout(Stdio::null())
        .output()
        .map_err(|e| LabError::Msg(format!("run ip {}: {e}", args.join(" "))))?;
    if o.status.success() {
        Ok(())
    } else {
        Err(LabError::Msg(format!(
            "ip {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        )))
    }
}

/// `ip -n <ns> ...`
pub fn ipn(ns: &str, args: &[&str]) -> Result<(), LabError> {
    let mut a = vec!["-n", ns];
    a.extend_from_slice(args);
    ip(&a)
}

pub fn netns_exists(name: &str) -> bool {
    Path::new("/run/netns").join(name).exists()
}

pub fn create_netns(name: &str) -> Result<(), LabError> {
    ip(&["netns", "add", name])?;
    ipn(name, &["link", "set", "lo", "up"])
}

/// Kills every process in the namespace, then removes it.
pub fn remove_netns(name: &str) -> Result<(), LabError> {
    if let Ok(o) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&o.stdout).split_whitespace() {
            let _ = Command::new("kill")
                .args(["-9", pid])
                .stderr(Stdio::null())
                .status();
        }
    }
    if netns_exists(name) {
        ip(&["netns", "del", name])?;
    }
    Ok(())
}

/// Kills a process group (the lab starts pods and agents with setsid).
pub fn kill_group(pid: u32) {
    let _ = Command::new("kill")
        .args(["-9", "--", &format!("-{pid}")])
        .stderr(Stdio::null())
        .status();
}

/// Plugs namespace `ns` into the underlay bridge: `eth0` with `addr` inside,
/// `port` on the bridge in `underlay`. The port takes BIG TCP packets,
/// as a NIC that supports them would: the agent decides whether the
/// node's end (its uplink) and its pods use them.
pub fn plug(
    underlay: &str,
    port: &str,
    ns: &str,
    addr: &str,
    gw: Option<&str>,
) -> Result<(), LabError> {
    ipn(
        underlay,
        &[
            "link", "add", port, "type", "veth", "peer", "name", "eth0", "netns", ns,
        ],
    )?;
    set_gso(underlay, port)?;
    ipn(underlay, &["link", "set", port, "master", "ul0", "up"])?;
    ipn(ns, &["addr", "add", addr, "dev", "eth0"])?;
    ipn(ns, &["link", "set", "eth0", "up"])?;
    if let Some(gw) = gw {
        ipn(ns, &["route", "add", "default", "via", gw])?;
    }
    Ok(())
}

/// Raises `dev` in namespace `ns` to the agent's BIG TCP size.
fn set_gso(ns: &str, dev: &str) -> Result<(), LabError> {
    weft_kernel::net::Net::set_gso_ipv4_max_in(
        &Path::new("/run/netns").join(ns),
        &[dev],
        weft_agent::reconcile::BIG_TCP_SIZE,
    )
    .map_err(|e| LabError::Msg(format!("{ns}: {dev}: GSO size: {e}")))
}
