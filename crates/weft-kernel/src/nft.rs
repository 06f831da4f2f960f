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
    if let Some(p) = std::env::var_os("WEFT_NFT") {
        return PathBuf::from(p);
    }
    for p in ["/usr/sbin/nft", "/sbin/nft", "/usr/bin/nft"] {
        if std::path::Path::new(p).exists() {
            return PathBuf::from(p);
        }
    }
    PathBuf::from("nft")
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
        Err(KernelError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ))
    }
}

/// Whether an nft failure means a table or set does not exist.
pub fn is_missing(e: &KernelError) -> bool {
    matches!(e, KernelError::Nft(m) if m.contains("No such file or directory"))
}

/// Whether `table <family> <name>` exists. `nft list tables` prints names
/// only, so this stays cheap however many elements the table holds. An
/// ENOENT from a script can mean a missing table *or* a missing element;
/// this tells the two apart.
pub fn table_exists(family: &str, name: &str) -> Result<bool, KernelError> {
    let out = Command::new(binary())
        .args(["list", "tables", family])
        .stdin(Stdio::null())
        .output()
        .map_err(|e| KernelError::io("exec nft", e))?;
    if !out.status.success() {
        return Err(KernelError::Nft(
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ));
    }
    let want = format!("table {family} {name}");
    Ok(String::from_utf8_lossy(&out.stdout)
        .lines()
        .any(|l| l.trim() == want))
}
