//! `weft`: one binary for everything but the CNI plugin. For now, the lab.

use anyhow::Result;
use clap::{Parser, Subcommand};
use std::path::PathBuf;
use std::process::ExitCode;
use weft_lab::{LabEnv, UpOptions};

#[derive(Parser)]
#[command(name = "weft", version, about = "Kubernetes pod networking: the lab, and soon the agent, DNS and gateway")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// A cluster on this host: nodes and pods as network namespaces.
    Lab {
        #[command(subcommand)]
        cmd: LabCmd,
    },
}

#[derive(Subcommand)]
enum LabCmd {
    /// Create a node and one pod per Pod manifest in PATH.
    Up {
        #[arg(long, default_value = "weft")]
        name: String,
        /// A manifest file or a directory of them.
        #[arg(short = 'f', long = "filename")]
        file: Option<PathBuf>,
        /// The node's pod subnet.
        #[arg(long, default_value = "10.244.1.0/24")]
        pod_cidr: ipnet_arg::Net,
    },
    /// Remove the lab and everything in it.
    Down {
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// List the lab's pods, nodes and IPs.
    Status {
        #[arg(long, default_value = "weft")]
        name: String,
    },
    /// Run a command in a pod (<namespace>/<pod>) or a node (node/<name>).
    Exec {
        #[arg(long, default_value = "weft")]
        name: String,
        target: String,
        #[arg(last = true, required = true)]
        command: Vec<String>,
    },
}

mod ipnet_arg {
    /// A CIDR argument (clap needs FromStr + Clone).
    #[derive(Clone, Debug)]
    pub struct Net(pub String);
    impl std::str::FromStr for Net {
        type Err = String;
        fn from_str(s: &str) -> Result<Self, String> {
            let ok = s.split_once('/').is_some_and(|(a, p)| {
                a.parse::<std::net::IpAddr>().is_ok() && p.parse::<u8>().is_ok()
            });
            if ok {
                Ok(Net(s.to_string()))
            } else {
                Err(format!("{s:?} is not a CIDR like 10.244.1.0/24"))
            }
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let env = LabEnv::system();
    match cli.cmd {
        Cmd::Lab { cmd } => match cmd {
            LabCmd::Up { name, file, pod_cidr } => {
                let st = weft_lab::up(
                    &env,
                    &UpOptions {
                        name,
                        manifests: file,
                        pod_cidr: pod_cidr.0.parse()?,
                    },
                )?;
                print!("{}", weft_lab::render_status(&st));
                Ok(0)
            }
            LabCmd::Down { name } => {
                weft_lab::down(&env, &name)?;
                println!("lab {name} removed");
                Ok(0)
            }
            LabCmd::Status { name } => {
                print!("{}", weft_lab::render_status(&weft_lab::status(&env, &name)?));
                Ok(0)
            }
            LabCmd::Exec { name, target, command } => Ok(weft_lab::exec(&env, &name, &target, &command)?),
        },
    }
}

fn main() -> ExitCode {
    match run(Cli::parse()) {
        Ok(code) => ExitCode::from(code.clamp(0, 255) as u8),
        Err(e) => {
            eprintln!("weft: {e:#}");
            ExitCode::FAILURE
        }
    }
}
