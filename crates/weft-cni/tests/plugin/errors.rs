//! Error results: the spec's codes, one JSON document on stdout, and a
//! failed ADD that leaves nothing behind.

use crate::common::*;
use serde_json::{json, Value};
use weft_testkit::{run_plugin, PluginRun};

/// Runs weft-cni with exactly `env` (no CNI_* added) and `stdin`.
fn raw(node: &Node, command: &str, env: &[(&str, &str)], stdin: &str) -> PluginRun {
    let r = run_plugin(&node.ns, &node.plugin, command, env, stdin);
    assert_protocol(&r, command);
    r
}

fn code_and_msg(r: &PluginRun) -> (u64, String) {
    assert!(!r.success, "expected failure, got {}", r.stdout);
    let v = r.json();
    (r.code(), v["msg"].as_str().unwrap_or("").to_string())
}

#[test]
fn decode_version_and_environment_errors_carry_spec_codes() {
    let node = Node::new();
    let pod = Pod::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    let netns = pod.netns();
    let full = [
        ("CNI_CONTAINERID", pod.id.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", netns.as_str()),
    ];

    // Undecodable configuration → 6.
    for bad in ["{not json", "", "[1,2]"] {
        let r = raw(&node, "ADD", &full, bad);
        assert_eq!(code_and_msg(&r).0, 6, "stdin {bad:?}: {}", r.stdout);
    }

    // Unsupported cniVersion → 1.
    for v in ["0.9.0", "2.0.0", "1.1"] {
        let mut c = conf.clone();
        c["cniVersion"] = json!(v);
        let r = raw(&node, "ADD", &full, &c.to_string());
        assert_eq!(code_and_msg(&r).0, 1, "cniVersion {v}: {}", r.stdout);
    }

    // Each required variable missing → 4, naming it.
    for missing in ["CNI_CONTAINERID", "CNI_IFNAME", "CNI_NETNS"] {
        let env: Vec<_> = full
            .iter()
            .copied()
            .filter(|(k, _)| *k != missing)
            .collect();
        let r = raw(&node, "ADD", &env, &conf.to_string());
        let (code, msg) = code_and_msg(&r);
        assert_eq!(code, 4, "without {missing}: {}", r.stdout);
        assert!(msg.contains(missing), "{msg}");
    }

    // A bad subnet → 7, naming the field.
    let mut c = conf.clone();
    c["ipam"]["ranges"] = json!([[{"subnet": "10.1.0.300/24"}]]);
    let r = raw(&node, "ADD", &full, &c.to_string());
    let (code, msg) = code_and_msg(&r);
    assert_eq!(code, 7, "{}", r.stdout);
    assert!(msg.contains("ipam.ranges[0][0].subnet"), "{msg}");

    // CHECK needs 0.4.0, GC needs 1.1.0 → 1.
    let mut c = conf.clone();
    c["cniVersion"] = json!("0.3.1");
    let r = raw(&node, "CHECK", &full, &c.to_string());
    assert_eq!(code_and_msg(&r).0, 1, "{}", r.stdout);
    let mut c = conf.clone();
    c["cniVersion"] = json!("1.0.0");
    c["cni.dev/valid-attachments"] = json!([]);
    let r = raw(&node, "GC", &[], &c.to_string());
    assert_eq!(code_and_msg(&r).0, 1, "{}", r.stdout);

    // DEL is the one verb that may come without a netns (it is gone).
    let env: Vec<_> = full
        .iter()
        .copied()
        .filter(|(k, _)| *k != "CNI_NETNS")
        .collect();
    let r = raw(&node, "DEL", &env, &conf.to_string());
    assert!(r.success, "DEL without CNI_NETNS: {}", r.stdout);

    // Nothing of the above reached the kernel or the disk.
    assert!(node.veths().is_empty());
    assert!(node.reservations().is_empty());
    assert!(node.records().is_empty());
}

#[test]
fn unknown_cni_args_need_ignore_unknown() {
    let node = Node::new();
    let pod = Pod::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);

    let r = node.exec(&node.plugin, "ADD", &pod, &conf, &[("CNI_ARGS", "FOO=bar")]);
    let (code, msg) = code_and_msg(&r);
    assert_eq!(code, 4, "{}", r.stdout);
    assert!(msg.contains("FOO"), "{msg}");
    assert!(node.veths().is_empty() && node.reservations().is_empty());

    let r = node.exec(
        &node.plugin,
        "ADD",
        &pod,
        &conf,
        &[("CNI_ARGS", "IgnoreUnknown=1;FOO=bar;K8S_POD_NAME=web")],
    );
    assert!(r.success, "{}", r.stdout);
    assert_eq!(result_ips(&r.json()).len(), 1);
    node.del(&pod, &conf);
}

/// The node holds no trace of `pod`: no veth, no reservation, no record.
fn assert_nothing_for(node: &Node, pod: &Pod, veths_before: &std::collections::BTreeSet<String>) {
    assert_eq!(&node.veths(), veths_before, "a veth was left behind");
    assert!(
        node.reservations().iter().all(|(_, id, _)| *id != pod.id),
        "{:?}",
        node.reservations()
    );
    let rec = node.records();
    assert!(
        rec.iter().all(|n| !n.starts_with(&pod.id)),
        "record left: {rec:?}"
    );
    assert!(node.stray_files().is_empty(), "{:?}", node.stray_files());
    let out = pod.ns.ok("ip -br link");
    assert!(!out.contains("eth0"), "eth0 left in the pod: {out}");
}

#[test]
fn a_failed_add_leaves_nothing_behind() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["ipMasq"] = json!(true);

    // A requested address outside the range.
    let pod = Pod::new();
    let mut c = conf.clone();
    c["runtimeConfig"] = json!({"ips": ["10.9.9.9/24"]});
    let r = node.run("ADD", &pod, &c);
    assert!(!r.success);
    assert_nothing_for(&node, &pod, &Default::default());

    // An interface of that name already in the pod: the pod's own device
    // must survive the rollback.
    let busy = Pod::new();
    busy.ns.ok("ip link add eth0 type bridge");
    let r = node.run("ADD", &busy, &conf);
    assert!(!r.success);
    assert!(node.veths().is_empty(), "{:?}", node.veths());
    assert!(node.reservations().is_empty() && node.records().is_empty());
    assert!(busy.ns.ok("ip -d link show eth0").contains("bridge"));

    // A hostPort another pod holds: the failure comes late, after the veth
    // and the address exist, so this exercises the rollback.
    let mut c = conf.clone();
    c["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let holder = Pod::new();
    let rh = node.add(&holder, &c);
    let before = node.veths();
    let elems_before = node.nft_pod_elements();
    let r = node.run("ADD", &pod, &c);
    assert!(!r.success, "second claim on hostPort 8080 succeeded");
    let (_, msg) = code_and_msg(&r);
    assert!(msg.contains("8080") || msg.contains("hostPort"), "{msg}");
    assert_nothing_for(&node, &pod, &before);
    assert_eq!(
        node.nft_pod_elements(),
        elems_before,
        "the holder's elements changed"
    );

    // The runtime's DEL after the failed ADD must not take the holder's port.
    node.del(&pod, &c);
    assert_eq!(node.nft_pod_elements(), elems_before);
    let ip = &result_ips(&rh)[0];
    let hp: Vec<_> = elems_before.iter().filter(|(s, _)| s == "hp4").collect();
    assert!(hp.iter().all(|(_, a)| a.contains(ip)), "{hp:?}");

    // The same pod succeeds once the port is free.
    node.del(&holder, &c);
    let r = node.add(&pod, &c);
    assert_eq!(result_ips(&r).len(), 1);
    node.del(&pod, &c);
    assert!(node.nft_pod_elements().is_empty());
}

#[test]
fn version_and_status_answer_with_one_document() {
    let node = Node::new();
    for req in ["1.1.0", "1.0.0", "0.4.0"] {
        let r = raw(
            &node,
            "VERSION",
            &[],
            &json!({"cniVersion": req}).to_string(),
        );
        assert!(r.success);
        let v: Value = r.json();
        assert_eq!(v["cniVersion"], req);
        let sv: Vec<&str> = v["supportedVersions"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_str().unwrap())
            .collect();
        for want in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
            assert!(sv.contains(&want), "{sv:?} lacks {want}");
        }
    }
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    let r = raw(&node, "STATUS", &[], &conf.to_string());
    assert!(r.success, "{}", r.stdout);
    let r = raw(&node, "FROB", &[], &conf.to_string());
    assert_eq!(code_and_msg(&r).0, 4);
}

/// Logs never reach stdout (only the result or error JSON does): they go to
/// stderr, or to `WEFT_CNI_LOG_FILE`, each line naming the attachment and
/// its pod.
#[test]
fn logs_go_to_stderr_or_a_file_with_the_pod_named() {
    let node = Node::new();
    let pod = Pod::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    let args = "K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web-0;IgnoreUnknown=1";
    // A netns that does not exist: the ADD fails, and says so in a log line.
    let env = [
        ("CNI_CONTAINERID", pod.id.as_str()),
        ("CNI_IFNAME", "eth0"),
        ("CNI_NETNS", "/var/run/netns/weft-no-such-netns"),
        ("CNI_ARGS", args),
    ];
    let r = raw(&node, "ADD", &env, &conf.to_string());
    assert!(!r.success);
    r.json(); // stdout is exactly one JSON document
    for want in [
        "container_id=",
        "namespace=\"shop\"",
        "pod=\"web-0\"",
        "failed",
    ] {
        assert!(
            r.stderr.contains(want),
            "{want} not in stderr: {}",
            r.stderr
        );
    }
    let tmp = TempDir::new("cnilog");
    let file = tmp.0.join("weft-cni.log");
    let file_s = file.to_string_lossy().to_string();
    let mut env = env.to_vec();
    env.push(("WEFT_CNI_LOG_FILE", file_s.as_str()));
    let r = raw(&node, "ADD", &env, &conf.to_string());
    r.json();
    let logged = std::fs::read_to_string(&file).unwrap_or_default();
    assert!(logged.contains("pod=\"web-0\""), "{logged}");
    assert!(!r.stderr.contains("web-0"), "{}", r.stderr);
}
