//! Runs the benchmark end to end with small counts: every configuration
//! must produce its rows and the run must leave no namespace behind.
//! Timings are reported, never asserted.

use std::process::Command;
use weft_testkit::{require_root, workspace_bin};

fn our_namespaces(pid: u32) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("wb-{pid}-")))
        .collect()
}

#[test]
fn quick_run_reports_every_configuration_and_cleans_up() {
    require_root();
    let child = Command::new(env!("CARGO_BIN_EXE_weft-bench"))
        .args(["--quick", "--json", "--weft"])
        .arg(workspace_bin("weft-cni"))
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn weft-bench");
    let pid = child.id();
    let out = child.wait_with_output().expect("wait for weft-bench");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "weft-bench failed:\n{stderr}");
    assert!(
        our_namespaces(pid).is_empty(),
        "namespaces left: {:?}",
        our_namespaces(pid)
    );
    assert!(!std::env::temp_dir()
        .join(format!("weft-bench-{pid}"))
        .exists());

    let v: serde_json::Value = serde_json::from_slice(&out.stdout).expect("JSON on stdout");
    let rows = v["rows"].as_array().expect("rows");
    // 7 configurations (ipspoofchk the newest) × {ADD, DEL} ×
    // {sequential, parallel}.
    assert_eq!(rows.len(), 28, "{v:#}");
    for r in rows {
        let n = r["summary"]["n"].as_u64().unwrap();
        let expected = if r["mode"] == "sequential" { 5 } else { 4 };
        assert_eq!(n, expected, "{r}");
        assert!(r["summary"]["median_ms"].as_f64().unwrap() > 0.0, "{r}");
    }
    let weft_add = rows
        .iter()
        .find(|r| r["configuration"] == "weft-cni, ipMasq" && r["op"] == "ADD")
        .expect("weft ADD row");
    assert!(weft_add["ratios"]["vs_reference"].as_f64().is_some());
    assert!(!v["targets"].as_array().unwrap().is_empty());
    eprintln!("{stderr}");
}
