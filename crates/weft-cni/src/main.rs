//! weft-cni: exec'd by a container runtime with the verb in the environment
//! and the network configuration on stdin. Stdout carries only the result or
//! the error JSON; nothing else is ever written there.

use std::io::{Read, Write};
use std::process::ExitCode;

fn main() -> ExitCode {
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
