//! End-to-end tests of `weft lab`: real namespaces, real packets.
//! Each test uses its own lab name, so they run in parallel, and tears the
//! lab down even when an assertion fails.

mod common;

use common::{namespaces_of, ok, weft, Lab};
use std::path::Path;
use weft_testkit::{require_root, unique};

fn up(manifests: &Path) -> Lab {
    Lab::up(&["-f", manifests.to_str().unwrap()])
}

fn demo() -> &'static Path {
    Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/demo"))
}

#[test]
fn demo_pods_talk_and_down_removes_everything() {
    let lab = up(demo());
    let web = lab.ip_of("default/web");
    let client = lab.ip_of("default/client");
    assert_ne!(web, client);
    assert!(web.starts_with("10.244.0."), "{web}");

    let ping = lab.exec("default/client", &["ping", "-c", "1", "-W", "2", &web]);
    assert!(ping.status.success(), "pod -> pod ping failed");
    let gw = lab.exec(
        "default/client",
        &["ping", "-c", "1", "-W", "2", "10.244.0.1"],
    );
    assert!(gw.status.success(), "pod -> node ping failed");
    let back = lab.exec("node/node-1", &["ping", "-c", "1", "-W", "2", &client]);
    assert!(back.status.success(), "node -> pod ping failed");

    // The web pod's process runs inside its namespace and serves HTTP.
    let mut body = String::new();
    for _ in 0..50 {
        let o = lab.exec(
            "default/client",
            &[
                "timeout",
                "5",
                "busybox",
                "wget",
                "-qO-",
                &format!("http://{web}:8080/"),
            ],
        );
        body = String::from_utf8_lossy(&o.stdout).into_owned();
        if o.status.success() {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    assert!(body.contains("hello from web"), "got {body:?}");

    // exec passes the command's exit code through.
    assert_eq!(
        lab.exec("default/client", &["sh", "-c", "exit 7"])
            .status
            .code(),
        Some(7)
    );

    let name = lab.0.clone();
    assert_eq!(
        namespaces_of(&name).len(),
        6,
        "underlay, external, node-1, the cluster DNS pod and two pods"
    );
    ok(&["lab", "down", "--name", &name]);
    assert!(
        namespaces_of(&name).is_empty(),
        "namespaces left: {:?}",
        namespaces_of(&name)
    );
    assert!(!Path::new("/run/weft/labs").join(&name).exists());
    // A second down is harmless.
    ok(&["lab", "down", "--name", &name]);
}

#[test]
fn bad_manifest_is_reported_by_file_and_field_and_changes_nothing() {
    require_root();
    let dir = std::env::temp_dir().join(unique("manifests"));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("a.yaml"),
        "kind: Pod\nmetadata: {name: fine}\nspec: {containers: [{name: c, command: [sleep, '60']}]}\n",
    )
    .unwrap();
    std::fs::write(
        dir.join("b.yaml"),
        "kind: Pod\nmetadata: {name: broken}\nspec:\n  containers:\n  - name: c\n    command: 42\n",
    )
    .unwrap();
    let name = unique("bad");
    let o = weft(&["lab", "up", "--name", &name, "-f", dir.to_str().unwrap()]);
    let err = String::from_utf8_lossy(&o.stderr).into_owned();
    let _ = std::fs::remove_dir_all(&dir);
    assert!(!o.status.success());
    assert!(
        err.contains("b.yaml") && err.contains("spec.containers[0].command"),
        "{err}"
    );
    assert!(namespaces_of(&name).is_empty());
    assert!(!Path::new("/run/weft/labs").join(&name).exists());
}

#[test]
fn two_labs_run_side_by_side() {
    let a = up(demo());
    let b = up(demo());
    // Same addresses in each, isolated from each other.
    assert_eq!(a.ip_of("default/web"), b.ip_of("default/web"));
    for lab in [&a, &b] {
        let web = lab.ip_of("default/web");
        assert!(lab
            .exec("default/client", &["ping", "-c", "1", "-W", "2", &web])
            .status
            .success());
    }
    let dup = weft(&["lab", "up", "--name", &a.0, "-f", demo().to_str().unwrap()]);
    assert!(
        !dup.status.success(),
        "a second up of a running lab must fail"
    );
}

#[test]
fn services_get_cluster_ips_and_node_ports_like_the_api_server_gives() {
    let lab = up(demo());
    let s = lab.status();
    let line = s
        .lines()
        .find(|l| l.starts_with("default/web ") && l.contains("NodePort"))
        .unwrap_or_else(|| panic!("no web service in status:\n{s}"));
    assert!(
        line.contains("10.96.0.16") && line.contains("80:30000/TCP"),
        "{line}"
    );
    // Re-applying keeps the allocation; a clash is refused by field.
    let out = lab.apply(&std::fs::read_to_string(demo().join("service.yaml")).unwrap());
    assert!(out.contains("service/default/web configured"), "{out}");
    let f = common::write_temp(
        "apiVersion: v1\nkind: Service\nmetadata: {name: clash}\nspec: {clusterIP: 10.96.0.16, ports: [{port: 1}]}\n",
    );
    let o = weft(&["lab", "apply", "--name", &lab.0, "-f", f.to_str().unwrap()]);
    let _ = std::fs::remove_file(f);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("spec.clusterIP"),
        "{err}"
    );
}
