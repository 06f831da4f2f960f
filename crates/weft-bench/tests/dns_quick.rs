//! Runs weft-bench-dns with `--quick` (500 Services, one round of 2 s):
//! both servers must answer the checked names as expected, every table
//! must have figures above zero for both, and the run must leave no
//! namespace or temp dir behind. Timings are reported, never asserted.

use std::process::Command;
use weft_testkit::{require_root, workspace_bin};

fn leftovers(pid: u32) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("wbd-{pid}-")))
        .collect()
}

/// The first `n` cells after the name of the row for `server` in the table
/// under `heading`, as numbers.
fn row(stdout: &str, heading: &str, server: &str, n: usize) -> Vec<f64> {
    let (_, table) = stdout
        .split_once(heading)
        .unwrap_or_else(|| panic!("no {heading:?} in:\n{stdout}"));
    let line = table
        .lines()
        .take_while(|l| !l.starts_with("####"))
        .find(|l| l.starts_with(&format!("| {server} |")))
        .unwrap_or_else(|| panic!("no {server} row under {heading:?} in:\n{stdout}"));
    line.split('|')
        .skip(2)
        .map(|c| c.trim().replace(',', ""))
        .take(n)
        .map(|c| {
            c.parse()
                .unwrap_or_else(|_| panic!("{c:?} is not a number in {line:?}"))
        })
        .collect()
}

#[test]
fn quick_run_measures_both_servers_and_cleans_up() {
    require_root();
    let child = Command::new(env!("CARGO_BIN_EXE_weft-bench-dns"))
        .arg("--quick")
        .arg("--weft")
        .arg(workspace_bin("weft"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn weft-bench-dns");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for weft-bench-dns");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "weft-bench-dns failed:\n{stdout}\n{stderr}"
    );
    assert!(
        leftovers(pid).is_empty(),
        "namespaces left: {:?}",
        leftovers(pid)
    );
    assert!(!std::env::temp_dir()
        .join(format!("weft-bench-dns-{pid}"))
        .exists());

    for server in ["weft dns", "unbound"] {
        // QPS, server CPU, QPS per core, lost, not NOERROR, per-run.
        let t = row(&stdout, "#### Throughput", server, 5);
        assert!(t[0] > 0.0 && t[1] > 0.0 && t[2] > 0.0, "{server}: {t:?}");
        assert_eq!(t[4], 0.0, "{server}: answers other than NOERROR");
        // answers, p50, p99, max, timeouts, CPU, QPS per core.
        let l = row(&stdout, "#### Latency", server, 7);
        assert!(l[0] > 0.0 && l[1] > 0.0 && l[2] >= l[1], "{server}: {l:?}");
        // ready after, VmRSS loaded, VmRSS after, VmHWM, threads.
        let m = row(&stdout, "#### Memory", server, 5);
        assert!(m[1] > 0.0 && m[2] > 0.0 && m[4] >= 1.0, "{server}: {m:?}");
    }
    assert!(stdout.contains("| weft / unbound |"), "{stdout}");
    assert!(
        stdout.contains("answered every one as expected"),
        "{stdout}"
    );
    assert!(stdout.contains("Targets:"), "{stdout}");
    eprintln!("{stdout}\n{stderr}");
}
