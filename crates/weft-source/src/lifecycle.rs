//! How a daemon stops: SIGTERM or SIGINT asks it to drain and exit 0; a
//! second signal exits at once. The daemon's main loop waits on a
//! `Latest`, so closing it is how the request reaches the loop, wherever
//! it is blocked.
//!
//! Exit codes, the same for every daemon (README, "Exit codes"):
//! 0 stopped on a signal after draining; 1 a failure while starting or
//! running (an address in use, the kernel refusing); 2 invalid flags or
//! configuration, found before anything was bound or changed.

use crate::latest::Latest;
use std::sync::Arc;

pub const EXIT_OK: u8 = 0;
pub const EXIT_FAILURE: u8 = 1;
pub const EXIT_CONFIG: u8 = 2;

/// Closes `latest` on the first SIGTERM/SIGINT; exits with 128 + the
/// signal on the second, for an operator who will not wait for a drain.
pub fn stop_on_signals<T: Send + 'static>(latest: Arc<Latest<T>>) -> std::io::Result<()> {
    use signal_hook::consts::{SIGINT, SIGTERM};
    let mut signals = signal_hook::iterator::Signals::new([SIGTERM, SIGINT])?;
    std::thread::Builder::new()
        .name("signals".into())
        .spawn(move || {
            let mut seen = false;
            for sig in signals.forever() {
                if seen {
                    std::process::exit(128 + sig);
                }
                seen = true;
                tracing::info!(signal = sig, "stopping: draining, then exit");
                latest.close();
            }
        })?;
    Ok(())
}
