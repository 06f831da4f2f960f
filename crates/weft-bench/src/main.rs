//! weft-bench: measures CNI ADD/DEL latency. Root only. Prints a markdown
//! table (or JSON with --json) on stdout; progress goes to stderr.

use anyhow::Result;
use clap::Parser;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use weft_bench::{report, subject::Subject, Options};

#[derive(Parser, Debug)]
#[command(
    about = "CNI ADD/DEL latency: weft-cni vs the reference bridge + host-local vs the kernel floor"
)]
struct Args {
    /// Pods in the sequential phase (ADD all, then DEL all).
    #[arg(long, default_value_t = 50)]
    pods: usize,
    /// Calls started at once in each parallel round.
    #[arg(long, default_value_t = 20)]
    parallel: usize,
    /// Parallel rounds.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Small counts for a CI smoke run (5 pods, 4 parallel, 1 round).
    #[arg(long)]
    quick: bool,
    /// Print JSON instead of markdown.
    #[arg(long)]
    json: bool,
    /// The weft-cni binary (default: next to this one).
    #[arg(long)]
    weft: Option<PathBuf>,
    /// Directory holding the reference `bridge` and `host-local`.
    #[arg(long, default_value = "/usr/lib/cni")]
    reference_dir: PathBuf,
}

fn main() -> ExitCode {
    let args = Args::parse();
    weft_bench::cli::init_logs();
    weft_bench::cli::exit("weft-bench", run(args), false, "")
}

fn run(a: Args) -> Result<()> {
    let (pods, parallel, rounds) = if a.quick {
        (5, 4, 1)
    } else {
        (a.pods, a.parallel, a.rounds)
    };
    let weft = match a.weft {
        Some(p) => p,
        None => std::env::current_exe()?.with_file_name("weft-cni"),
    };
    // A signal only raises the flag: the run stops at the next call and
    // the lab's drop removes every namespace and file it made.
    let stop = Arc::new(AtomicBool::new(false));
    for sig in [signal_hook::consts::SIGINT, signal_hook::consts::SIGTERM] {
        signal_hook::flag::register(sig, Arc::clone(&stop))?;
    }
    let opts = Options {
        pods,
        parallel,
        rounds,
        weft,
        reference_dir: a.reference_dir,
        subjects: Subject::ALL.to_vec(),
    };
    let load_before = weft_bench::loadavg();
    let rows = weft_bench::run(&opts, &stop)?;
    let (kernel, cpus, cpu_model) = weft_bench::machine();
    let meta = report::Meta {
        command: std::env::args().collect::<Vec<_>>().join(" "),
        kernel,
        cpus,
        cpu_model,
        pods,
        parallel,
        rounds,
        load_before,
        load_after: weft_bench::loadavg(),
    };
    if a.json {
        println!("{:#}", report::json(&meta, &rows));
    } else {
        print!("{}", report::markdown(&meta, &rows));
    }
    Ok(())
}
