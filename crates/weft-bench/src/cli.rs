//! What every bench binary does the same way: logs, root, interruption,
//! and the exit status.

use anyhow::{bail, Result};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};

/// Logs on stderr (stdout carries the report); `RUST_LOG` filters.
pub fn init_logs() {
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
}

/// The exit status for a run's result. A signal makes whatever was running
/// fail, so an interrupted run says that rather than the error it caused.
pub fn exit(bin: &str, r: Result<()>, interrupted: bool, cleaned: &str) -> ExitCode {
    match r {
        Ok(()) => ExitCode::SUCCESS,
        Err(_) if interrupted => {
            eprintln!("{bin}: interrupted; {cleaned} removed");
            ExitCode::FAILURE
        }
        Err(e) => {
            eprintln!("{bin}: {e:#}");
            ExitCode::FAILURE
        }
    }
}

/// Fails unless running as root; `why` says what needs it.
pub fn require_root(bin: &str, why: &str) -> Result<()> {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let uid = status
        .lines()
        .find_map(|l| l.strip_prefix("Uid:"))
        .and_then(|l| l.split_whitespace().next());
    if uid != Some("0") {
        bail!("{bin} needs root: {why}");
    }
    Ok(())
}

/// Fails once a signal has asked the run to stop.
pub fn check_stop(stop: &AtomicBool) -> Result<()> {
    if stop.load(Ordering::Relaxed) {
        bail!("interrupted");
    }
    Ok(())
}
