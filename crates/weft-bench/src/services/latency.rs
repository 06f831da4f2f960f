//! First-packet latency: TCP connect() times from a client pod to a
//! ClusterIP through the node's Service rules.
//!
//! ```text
//!  client ns                 node ns (the rules under test)           server ns
//!  eth0 10.244.0.2 ── c0 10.244.0.1        s0 10.244.1.1 ── eth0 10.244.1.2, .3
//!                     forwarding on; DNAT ClusterIP → 10.244.1.2|3:8080      listener :8080
//! ```
//!
//! Every connect is a new connection, so its SYN is a conntrack miss that
//! walks the NAT rules (later packets of a connection never do); connect()
//! returns on the SYN-ACK, so one sample is one round trip through the
//! rules and back. The listener accepts and closes.

use super::ns::{ip, Ns, Run};
use super::objects::{SERVER_IPS, TARGET_PORT};
use anyhow::{bail, Context, Result};
use std::net::{Ipv4Addr, SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

pub const CLIENT_IP: Ipv4Addr = Ipv4Addr::new(10, 244, 0, 2);

/// Client, node and server namespaces, wired, with a listener running.
pub struct Topology {
    pub node: Ns,
    client: Ns,
    server: Ns,
    stop: Arc<AtomicBool>,
    /// Connections the listener has accepted so far.
    accepted: Arc<AtomicUsize>,
    acceptor: Option<std::thread::JoinHandle<()>>,
}

impl Topology {
    pub fn new(run: &Run, tag: &str) -> Result<Topology> {
        let node = run.ns(&format!("{tag}-node"))?;
        let client = run.ns(&format!("{tag}-cli"))?;
        let server = run.ns(&format!("{tag}-srv"))?;
        for (host_if, peer, addr, gw, extra) in [
            ("c0", &client, "10.244.0.1/24", "10.244.0.1", None),
            (
                "s0",
                &server,
                "10.244.1.1/24",
                "10.244.1.1",
                Some(SERVER_IPS[1]),
            ),
        ] {
            ip(&[
                "-n", &node.name, "link", "add", host_if, "type", "veth", "peer", "name", "eth0",
                "netns", &peer.name,
            ])?;
            ip(&["-n", &node.name, "addr", "add", addr, "dev", host_if])?;
            ip(&["-n", &node.name, "link", "set", host_if, "up"])?;
            let own = if host_if == "c0" {
                CLIENT_IP
            } else {
                SERVER_IPS[0]
            };
            ip(&[
                "-n",
                &peer.name,
                "addr",
                "add",
                &format!("{own}/24"),
                "dev",
                "eth0",
            ])?;
            if let Some(x) = extra {
                ip(&[
                    "-n",
                    &peer.name,
                    "addr",
                    "add",
                    &format!("{x}/24"),
                    "dev",
                    "eth0",
                ])?;
            }
            ip(&["-n", &peer.name, "link", "set", "eth0", "up"])?;
            ip(&["-n", &peer.name, "route", "add", "default", "via", gw])?;
        }
        node.run(|| {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1").context("enable forwarding")
        })?;
        let listener = server.run(|| {
            TcpListener::bind(("0.0.0.0", TARGET_PORT)).context("bind the server's listener")
        })?;
        let stop = Arc::new(AtomicBool::new(false));
        let accepted = Arc::new(AtomicUsize::new(0));
        let (s2, a2) = (stop.clone(), accepted.clone());
        let acceptor = std::thread::spawn(move || {
            for c in listener.incoming() {
                if s2.load(Ordering::Relaxed) {
                    break;
                }
                drop(c);
                a2.fetch_add(1, Ordering::Release);
            }
        });
        Ok(Topology {
            node,
            client,
            server,
            stop,
            accepted,
            acceptor: Some(acceptor),
        })
    }

    /// `count` connects to `dst`, one after another, each timed. The next
    /// starts only once the listener has accepted the last one, so its
    /// accept queue never overflows (a dropped SYN would cost a 1 s
    /// retransmission, a property of the rig, not of the rules).
    pub fn connects(&self, dst: SocketAddrV4, count: usize) -> Result<Vec<Duration>> {
        self.client.run(|| {
            let mut out = Vec::with_capacity(count);
            let addr = SocketAddr::V4(dst);
            for _ in 0..count {
                let before = self.accepted.load(Ordering::Acquire);
                let t = Instant::now();
                let c = TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .with_context(|| format!("connect to {dst}"))?;
                out.push(t.elapsed());
                drop(c);
                let deadline = Instant::now() + Duration::from_secs(2);
                while self.accepted.load(Ordering::Acquire) == before {
                    if Instant::now() > deadline {
                        bail!("the listener did not accept a connection to {dst}");
                    }
                    std::thread::yield_now();
                }
            }
            Ok(out)
        })
    }

    /// Whether `dst` answers from the client.
    pub fn reachable(&self, dst: SocketAddrV4) -> Result<()> {
        match self.connects(dst, 1) {
            Ok(_) => Ok(()),
            Err(e) => bail!("{dst} does not answer through {}: {e:#}", self.node.name),
        }
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        // Wake the acceptor with one last connection from inside.
        let _ = self.server.run(|| {
            Ok(TcpStream::connect_timeout(
                &SocketAddr::from((SERVER_IPS[0], TARGET_PORT)),
                Duration::from_secs(1),
            ))
        });
        if let Some(h) = self.acceptor.take() {
            let _ = h.join();
        }
    }
}
