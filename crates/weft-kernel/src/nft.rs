//! Applies nftables scripts through the `nft` binary in one transaction.
//!
//! `nft -f` is atomic: the whole script commits or nothing does, which is
//! what lets a failed ADD leave no half-applied rules.

use crate::error::KernelError;
use std::io::Write;
use std::path::PathBuf;
use std::process::{Command, Stdio};

/// The `nft` binary: `$WEFT_NFT`, else the usual sbin paths, else `$PATH`.
/// Runtimes often exec plugins with a minimal PATH, hence the fixed paths.
pub fn binary() -> PathBuf {
    sbin_tool("WEFT_NFT", "nft")
}

/// A tool from `$<env>`, else /usr/sbin, /sbin or /usr/bin, else `$PATH`.
pub(crate) fn sbin_tool(env: &str, name: &str) -> PathBuf {
    if let Some(p) = std::env::var_os(env) {
        return PathBuf::from(p);
    }
    for dir in ["/usr/sbin", "/sbin", "/usr/bin"] {
        let p = std::path::Path::new(dir).join(name);
        if p.exists() {
            return p;
        }
    }
    PathBuf::from(name)
}

pub fn apply(script: &str) -> Result<(), KernelError> {
    let mut child = Command::new(binary())
        .args(["-f", "-"])
        .stdin(Stdio::piped())
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|e| KernelError::io("exec nft", e))?;
    if let Some(mut stdin) = child.stdin.take() {
        stdin
            .write_all(script.as_bytes())
            .map_err(|e| KernelError::io("write nft script", e))?;
    }
    let out = child
        .wait_with_output()
        .map_err(|e| KernelError::io("wait for nft", e))?;
    if out.status.success() {
        Ok(())
    } else {
        Err(KernelError::nft(
            String::from_utf8_lossy(&out.stderr).trim(),
        ))
    }
}

/// Whether an nft failure means a table, set or element does not exist.
pub fn is_missing(e: &KernelError) -> bool {
    e.nft_failure() == Some(crate::error::NftFailure::Missing)
}

/// Whether `table <family> <name>` exists. `nft list tables` prints names
/// only, so this stays cheap however many elements the table holds. An
/// ENOENT from a script can mean a missing table *or* a missing element;
/// this tells the two apart.
pub fn table_exists(family: &str, name: &str) -> Result<bool, KernelError> {
    let want = format!("table {family} {name}");
    Ok(list(&["list", "tables", family])?.is_some_and(|t| t.lines().any(|l| l.trim() == want)))
}

/// Deletes the anti-spoofing elements of links that are gone
/// (`weft_core::nft::sweep`), in one transaction; returns how many sets
/// had some. One wait for the kernel's commit however many there are, off
/// any pod's ADD or DEL. A missing table has nothing to sweep.
pub fn sweep_guard() -> Result<usize, KernelError> {
    let Some(listing) = list(&["-j", "list", "table", "bridge", weft_core::nft::TABLE])? else {
        return Ok(0);
    };
    // A netlink handle only when some element looks stale (most sweeps
    // find none).
    let net = std::cell::OnceCell::new();
    let script = weft_core::nft::sweep(&listing, |n| {
        // Only a link the kernel confirms gone; on any doubt, keep.
        let Ok(net) = net.get_or_init(crate::net::Net::new) else {
            return false;
        };
        matches!(net.link_by_index(n), Ok(None))
    });
    if script.is_empty() {
        return Ok(0);
    }
    apply(&script)?;
    Ok(script.lines().count())
}

/// Lays weft-cni's tables and this version's rules. A bridge table of an
/// older layout (or none) is upgraded in one transaction
/// (`weft_core::nft::upgrade`), with the MAC check's pairs of the ports
/// that still exist carried over into its ifindex-keyed sets; a table
/// already of this layout (another ADD may have just upgraded it) only
/// has its chains refilled (`weft_core::nft::skeleton`). If the old pairs
/// cannot be read, nothing is laid: an upgrade without them would take
/// live pods out of the check.
pub fn lay_skeleton() -> Result<(), KernelError> {
    let macs = live_macs()?;
    match apply(&weft_core::nft::upgrade(&macs)) {
        Err(e) if e.nft_failure() == Some(crate::error::NftFailure::Exists) => {
            apply(&weft_core::nft::skeleton())
        }
        r => r,
    }
}

/// The MAC check's pairs in the bridge table, of the ports whose link
/// exists, by ifindex. No table or set: none.
fn live_macs() -> Result<Vec<(u32, String)>, KernelError> {
    let args = [
        "-j",
        "list",
        "set",
        "bridge",
        weft_core::nft::TABLE,
        weft_core::nft::MAC_SRC,
    ];
    let Some(listing) = list(&args)? else {
        return Ok(Vec::new());
    };
    let listed = weft_core::nft::listed_macs(&listing);
    if listed.is_empty() {
        return Ok(Vec::new());
    }
    let net = crate::net::Net::new()?;
    let mut live = Vec::new();
    for (port, mac) in listed {
        // A number is a link that is gone (see `weft_core::nft::sweep`).
        if let Some(l) = net.link_by_name(&port)? {
            live.push((l.index, mac));
        }
    }
    Ok(live)
}

/// The named counters of `table <family> <name>`: (name, packets, bytes).
/// A missing table has none. Read on demand (a metrics scrape), so an
/// exec of nft is cheap enough and keeps no state in the agent.
pub fn counters(family: &str, name: &str) -> Result<Vec<(String, u64, u64)>, KernelError> {
    Ok(list(&["list", "counters", "table", family, name])?
        .map(|text| parse_counters(&text))
        .unwrap_or_default())
}

/// Runs a listing `nft` command; None when what it names does not exist
/// (a table not laid yet has nothing to list).
fn list(args: &[&str]) -> Result<Option<String>, KernelError> {
    let out = Command::new(binary())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KernelError::io("exec nft", e))?;
    if out.status.success() {
        return Ok(Some(String::from_utf8_lossy(&out.stdout).into_owned()));
    }
    let e = KernelError::nft(String::from_utf8_lossy(&out.stderr).trim());
    if is_missing(&e) {
        Ok(None)
    } else {
        Err(e)
    }
}

/// Parses `nft list counters` output: `counter NAME {` then
/// `packets P bytes B`.
fn parse_counters(text: &str) -> Vec<(String, u64, u64)> {
    let mut out = Vec::new();
    let mut name: Option<String> = None;
    for line in text.lines() {
        let w: Vec<&str> = line.split_whitespace().collect();
        match w.as_slice() {
            ["counter", n, "{"] => name = Some(n.trim_matches('"').to_string()),
            ["packets", p, "bytes", b, ..] => {
                if let (Some(n), Ok(p), Ok(b)) = (name.take(), p.parse(), b.parse()) {
                    out.push((n, p, b));
                }
            }
            _ => {}
        }
    }
    out
}

/// A long-lived `nft -i` in the namespace it was started in.
///
/// Each `nft -f` run closes its netlink socket on exit, and after a
/// transaction that deleted anything the close waits for an RCU grace
/// period (~11-14 ms on the machines weft is benchmarked on; add-only
/// transactions don't pay it). A session keeps one socket open, so a small
/// change costs well under a millisecond. One input line is one
/// transaction in interactive mode, so a script is sent as one line; a
/// following `list` command whose output is known marks the end, and
/// anything on stderr by then is that transaction's error.
pub struct NftSession {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    out: std::sync::mpsc::Receiver<Vec<u8>>,
    /// Non-blocking: whatever nft wrote before the probe's output is in
    /// the pipe by the time that output is read.
    err: std::process::ChildStderr,
}

/// Scripts longer than this go through `nft -f` instead: nft's scanner
/// rejects very long lines.
pub const SESSION_MAX_SCRIPT: usize = 64 * 1024;

/// Applies scripts through a lazily started `NftSession`, long ones
/// through `nft -f`. A session that failed is not reused (its state is
/// unknown); the next call starts another.
#[derive(Default)]
pub struct Nft {
    session: Option<NftSession>,
}

impl Nft {
    pub fn apply(&mut self, script: &str) -> Result<(), KernelError> {
        if script.len() > SESSION_MAX_SCRIPT {
            return apply(script);
        }
        if self.session.is_none() {
            self.session = NftSession::start().ok();
        }
        let Some(s) = self.session.as_mut() else {
            return apply(script);
        };
        s.apply(script).inspect_err(|_| self.session = None)
    }
}

impl NftSession {
    pub fn start() -> Result<NftSession, KernelError> {
        let mut child = Command::new(binary())
            .arg("-i")
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .map_err(|e| KernelError::io("exec nft -i", e))?;
        let stdin = child
            .stdin
            .take()
            .ok_or_else(|| KernelError::Other("nft -i: no stdin".into()))?;
        let mut stdout = child
            .stdout
            .take()
            .ok_or_else(|| KernelError::Other("nft -i: no stdout".into()))?;
        let stderr = child
            .stderr
            .take()
            .ok_or_else(|| KernelError::Other("nft -i: no stderr".into()))?;
        let (tx, out) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            use std::io::Read;
            let mut b = [0u8; 16384];
            while let Ok(n) = stdout.read(&mut b) {
                if n == 0 || tx.send(b[..n].to_vec()).is_err() {
                    break;
                }
            }
        });
        let fl = nix::fcntl::fcntl(&stderr, nix::fcntl::FcntlArg::F_GETFL)
            .map_err(|e| KernelError::io("nft -i stderr", std::io::Error::from(e)))?;
        let fl = nix::fcntl::OFlag::from_bits_truncate(fl) | nix::fcntl::OFlag::O_NONBLOCK;
        nix::fcntl::fcntl(&stderr, nix::fcntl::FcntlArg::F_SETFL(fl))
            .map_err(|e| KernelError::io("nft -i stderr", std::io::Error::from(e)))?;
        let err = stderr;
        Ok(NftSession {
            child,
            stdin,
            out,
            err,
        })
    }

    /// Runs `script` as one transaction. The probe that follows lists an
    /// empty table of its own (`inet weft-session`, no chains, no hooks):
    /// listing anything in a big table would make nft load that table's
    /// elements first, which at 10k Services costs ~300 ms.
    pub fn apply(&mut self, script: &str) -> Result<(), KernelError> {
        let probe = "add table inet weft-session; list table inet weft-session";
        let line: Vec<&str> = script
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect();
        self.drain_err();
        while self.out.try_recv().is_ok() {}
        let msg = format!("{}\n{probe}\n", line.join("; "));
        self.stdin
            .write_all(msg.as_bytes())
            .map_err(|e| KernelError::io("write to nft -i", e))?;
        let mut buf: Vec<u8> = Vec::new();
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match self.out.recv_timeout(left) {
                Ok(chunk) => buf.extend_from_slice(&chunk),
                Err(_) => return Err(KernelError::nft("nft -i did not answer")),
            }
            let text = String::from_utf8_lossy(&buf);
            if text.contains("table inet weft-session {") && text.trim_end().ends_with('}') {
                break;
            }
        }
        let err = self.drain_err();
        if err.is_empty() {
            Ok(())
        } else {
            Err(KernelError::nft(err))
        }
    }
}

impl NftSession {
    fn drain_err(&mut self) -> String {
        use std::io::Read;
        let mut all = Vec::new();
        let mut b = [0u8; 4096];
        while let Ok(n) = self.err.read(&mut b) {
            if n == 0 {
                break;
            }
            all.extend_from_slice(&b[..n]);
        }
        String::from_utf8_lossy(&all).trim().to_string()
    }
}

impl Drop for NftSession {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[cfg(test)]
mod counter_tests {
    #[test]
    fn parses_named_counters() {
        let text = "table inet weft {\n\tcounter vxlan_foreign {\n\t\tpackets 3 bytes 420\n\t}\n\tcounter \"b\" {\n\t\tpackets 0 bytes 0\n\t}\n}\n";
        assert_eq!(
            super::parse_counters(text),
            vec![
                ("vxlan_foreign".to_string(), 3, 420),
                ("b".to_string(), 0, 0)
            ]
        );
    }
}
