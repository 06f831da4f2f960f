//! weft-cni: exec'd by a container runtime with the verb in the environment
//! and the network configuration on stdin. Stdout carries only the result or
//! the error JSON; nothing else is ever written there: logs go to stderr
//! (the runtime keeps it), or to the file `WEFT_CNI_LOG_FILE` names, at the
//! level `WEFT_CNI_LOG` sets (default warn).

use std::io::{Read, Write};
use std::process::ExitCode;

fn init_logs() {
    let filter = tracing_subscriber::EnvFilter::try_from_env("WEFT_CNI_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let b = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(false);
    let file = std::env::var_os("WEFT_CNI_LOG_FILE").and_then(|p| {
        std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .ok()
    });
    match file {
        Some(f) => b.with_writer(std::sync::Mutex::new(f)).init(),
        None => b.with_writer(std::io::stderr).init(),
    }
}

fn main() -> ExitCode {
    init_logs();
    let mut stdin = Vec::new();
    let _ = std::io::stdin().read_to_end(&mut stdin);
    let env = weft_cni::Env::from_process();
    let out = weft_cni::run(&env, &stdin);
    let mut stdout = std::io::stdout().lock();
    if let Some(text) = &out.stdout {
        let _ = stdout.write_all(text.as_bytes());
        let _ = stdout.write_all(b"\n");
    }
    let _ = stdout.flush();
    if out.ok {
        ExitCode::SUCCESS
    } else {
        ExitCode::FAILURE
    }
}
