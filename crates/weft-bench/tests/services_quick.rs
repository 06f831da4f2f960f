//! Runs weft-bench-services with `--quick` (1000 Services): every table
//! must come out and the run must leave no namespace or temp dir behind.
//! Timings are reported, never asserted.

use std::process::Command;
use weft_testkit::{require_root, workspace_bin};

fn leftovers(pid: u32) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("wbs-{pid}-")))
        .collect()
}

#[test]
fn quick_run_prints_every_table_and_cleans_up() {
    require_root();
    let child = Command::new(env!("CARGO_BIN_EXE_weft-bench-services"))
        .arg("--quick")
        .arg("--weft")
        .arg(workspace_bin("weft"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn weft-bench-services");
    let pid = child.id();
    let out = child
        .wait_with_output()
        .expect("wait for weft-bench-services");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "weft-bench-services failed:\n{stderr}"
    );
    assert!(
        leftovers(pid).is_empty(),
        "namespaces left: {:?}",
        leftovers(pid)
    );
    assert!(!std::env::temp_dir()
        .join(format!("weft-bench-services-{pid}"))
        .exists());

    for heading in [
        "#### Full sync",
        "#### One change with 1000 Services present",
        "#### First-packet latency",
        "#### weft agent memory",
    ] {
        assert!(stdout.contains(heading), "no {heading:?} in:\n{stdout}");
    }
    let row = |prefix: &str| {
        stdout
            .lines()
            .find(|l| l.starts_with(prefix))
            .unwrap_or_else(|| panic!("no row {prefix:?} in:\n{stdout}"))
            .to_string()
    };
    // Full sync at 1000: weft and both iptables flavors measured.
    let full = row("| 1000 | 1 |");
    assert!(!full.contains('—'), "{full}");
    for subject in ["weft", "iptables-nft", "iptables-legacy"] {
        assert!(
            stdout.contains(&format!("| add one Service | {subject} |")),
            "{stdout}"
        );
    }
    assert!(
        stdout.contains("ServiceProxy::sync, 3 of 3 as an element diff"),
        "{stdout}"
    );
    for path in [
        "| bare path, no rules",
        "| weft (nft maps",
        "| kube-proxy rules, iptables-nft |",
        "| kube-proxy rules, iptables-legacy |",
    ] {
        assert!(!row(path).contains("| 0 |"), "{}", row(path));
    }
    let (_, mem) = stdout
        .split_once("#### weft agent memory")
        .expect("memory table");
    let mem = mem
        .lines()
        .find(|l| l.starts_with("| 1000 | "))
        .expect("memory row for 1000 Services");
    assert!(!mem.contains("failed"), "{mem}");
    assert!(stdout.contains("Targets:"), "{stdout}");
    eprintln!("{stdout}\n{stderr}");
}
