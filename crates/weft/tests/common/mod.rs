//! Shared helpers for the lab end-to-end tests: a lab that is torn down on
//! drop, commands inside its namespaces, and polling for convergence.

#![allow(dead_code)]

use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::time::{Duration, Instant};
use weft_testkit::{require_root, unique};

pub const WEFT: &str = env!("CARGO_BIN_EXE_weft");

pub fn weft(args: &[&str]) -> Output {
    Command::new(WEFT).args(args).output().expect("run weft")
}

pub fn ok(args: &[&str]) -> String {
    let o = weft(args);
    assert!(
        o.status.success(),
        "weft {args:?} failed\nstdout: {}\nstderr: {}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

/// A lab that is taken down on drop, even when the test fails.
pub struct Lab(pub String);

impl Lab {
    pub fn up(extra: &[&str]) -> Lab {
        require_root();
        let lab = Lab(unique("lab"));
        let mut a = vec!["lab", "up", "--name", &lab.0];
        a.extend_from_slice(extra);
        ok(&a);
        lab
    }

    pub fn dir(&self) -> PathBuf {
        Path::new("/run/weft/labs").join(&self.0)
    }

    pub fn exec(&self, target: &str, cmd: &[&str]) -> Output {
        let mut a = vec!["lab", "exec", "--name", &self.0, target, "--"];
        a.extend_from_slice(cmd);
        weft(&a)
    }

    /// Runs a shell snippet in a target and returns stdout, panicking on failure.
    pub fn sh(&self, target: &str, script: &str) -> String {
        let o = self.exec(target, &["sh", "-c", script]);
        assert!(
            o.status.success(),
            "in {target}: `{script}` failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }

    pub fn status(&self) -> String {
        ok(&["lab", "status", "--name", &self.0])
    }

    /// A pod's first IP, from `lab status`.
    pub fn ip_of(&self, pod: &str) -> String {
        let s = self.status();
        s.lines()
            .find(|l| l.split_whitespace().next() == Some(pod))
            .and_then(|l| l.split_whitespace().nth(2))
            .unwrap_or_else(|| panic!("{pod} not in status:\n{s}"))
            .split(',')
            .next()
            .unwrap()
            .to_string()
    }

    /// A node's underlay IP, from `lab status`.
    pub fn node_ip(&self, node: &str) -> String {
        let s = self.status();
        s.lines()
            .find(|l| l.split_whitespace().next() == Some(node))
            .and_then(|l| l.split_whitespace().nth(1))
            .unwrap_or_else(|| panic!("{node} not in status:\n{s}"))
            .to_string()
    }

    pub fn ping(&self, from: &str, to: &str) -> bool {
        self.exec(from, &["ping", "-c", "1", "-W", "1", to])
            .status
            .success()
    }

    pub fn apply(&self, yaml: &str) -> String {
        self.with_manifest("apply", yaml)
    }

    pub fn delete(&self, yaml: &str) -> String {
        self.with_manifest("delete", yaml)
    }

    /// `lab <verb> -f <temp file>`; the file is gone before any assertion.
    fn with_manifest(&self, verb: &str, yaml: &str) -> String {
        let f = write_temp(yaml);
        let o = weft(&["lab", verb, "--name", &self.0, "-f", f.to_str().unwrap()]);
        let _ = std::fs::remove_file(f);
        assert!(
            o.status.success(),
            "weft lab {verb} failed\nstdout: {}\nstderr: {}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        );
        String::from_utf8_lossy(&o.stdout).into_owned()
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        let _ = weft(&["lab", "down", "--name", &self.0]);
    }
}

pub fn write_temp(text: &str) -> PathBuf {
    let p = std::env::temp_dir().join(format!("{}.yaml", unique("manifest")));
    std::fs::write(&p, text).unwrap();
    p
}

/// Polls `f` until it returns true or `secs` pass; returns the last result.
pub fn eventually(secs: u64, mut f: impl FnMut() -> bool) -> bool {
    let t = Instant::now();
    loop {
        if f() {
            return true;
        }
        if t.elapsed() > Duration::from_secs(secs) {
            return false;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

pub fn namespaces_of(lab: &str) -> Vec<String> {
    std::fs::read_dir("/run/netns")
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(&format!("weft-{lab}.")))
        .collect()
}

/// Pod manifests pinned to nodes: (name, node).
pub fn pods_yaml(pods: &[(&str, &str)]) -> String {
    pods.iter()
        .map(|(p, n)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata: {{name: {p}}}\nspec: {{nodeName: {n}, containers: [{{name: c, command: [sleep, infinity]}}]}}\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}
