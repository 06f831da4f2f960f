//! Issue 17's findings against weft-cni, each replayed: IPAM delegated to
//! weft-cni itself, network names that leave the data directory, configs
//! host-local refuses, GC freeing a live pod's address, host veth names
//! that collide, and records that cannot be read.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};
use weft_testkit::{run_plugin, unique, PluginRun};

/// A cgroup (v1 `pids`) that caps how many processes a run may have: a
/// plugin that execs itself in a loop hits the cap instead of the machine.
struct PidCap(PathBuf);

impl PidCap {
    fn new(max: u32) -> PidCap {
        let p = Path::new("/sys/fs/cgroup/pids").join(unique("pids"));
        std::fs::create_dir(&p).expect("create pids cgroup");
        std::fs::write(p.join("pids.max"), max.to_string()).expect("set pids.max");
        PidCap(p)
    }

    /// How many forks the cap refused.
    fn refused(&self) -> u64 {
        let e = std::fs::read_to_string(self.0.join("pids.events")).unwrap_or_default();
        e.split_whitespace()
            .nth(1)
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    fn pids(&self) -> Vec<String> {
        std::fs::read_to_string(self.0.join("cgroup.procs"))
            .unwrap_or_default()
            .split_whitespace()
            .map(String::from)
            .collect()
    }
}

impl Drop for PidCap {
    fn drop(&mut self) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !self.pids().is_empty() && Instant::now() < deadline {
            for pid in self.pids() {
                let _ = std::process::Command::new("kill")
                    .args(["-9", &pid])
                    .status();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = std::fs::remove_dir(&self.0);
    }
}

/// Runs ADD inside `cap`, under a 10 s kill switch: (the run, how long).
fn add_capped(
    node: &Node,
    pod: &Pod,
    conf: &Value,
    cap: &PidCap,
    cni_path: &str,
) -> (PluginRun, Duration) {
    use std::io::Write;
    use std::process::Stdio;
    let procs = cap.0.join("cgroup.procs");
    // The shell joins the cgroup before anything runs, and from outside
    // the node namespace: `ip netns exec` mounts a /sys without cgroups.
    let mut c = std::process::Command::new("sh");
    c.args([
        "-c",
        &format!(
            "echo $$ > {} && exec ip netns exec \"$1\" timeout -s KILL 10 \"$0\"",
            procs.display()
        ),
    ])
    .arg(&node.plugin)
    .arg(&node.ns.name)
    .env_clear()
    .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
    .env("CNI_COMMAND", "ADD")
    .env("CNI_PATH", cni_path)
    .env("CNI_CONTAINERID", &pod.id)
    .env("CNI_IFNAME", &pod.ifname)
    .env("CNI_NETNS", pod.netns())
    .stdin(Stdio::piped())
    .stdout(Stdio::piped())
    .stderr(Stdio::piped());
    let t = Instant::now();
    let mut child = c.spawn().expect("spawn");
    let _ = child
        .stdin
        .take()
        .unwrap()
        .write_all(conf.to_string().as_bytes());
    let o = child.wait_with_output().expect("wait");
    let run = PluginRun {
        success: o.status.success(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    };
    (run, t.elapsed())
}

fn msg(r: &PluginRun) -> String {
    r.json()["msg"].as_str().unwrap_or("").to_string()
}

#[test]
fn ipam_delegated_to_weft_cni_itself_is_refused_without_a_fork() {
    let node = Node::new();
    let pod = Pod::new();
    let dir = TempDir::new("selfipam");
    // By name, and under another name through a symlink and a hard link.
    std::os::unix::fs::symlink(&node.plugin, dir.0.join("sym-ipam")).unwrap();
    let hard = std::fs::hard_link(&node.plugin, dir.0.join("hard-ipam")).is_ok();
    let cni_path = format!(
        "{}:{}:/usr/lib/cni",
        dir.0.display(),
        node.plugin.parent().unwrap().display()
    );
    let mut types = vec!["weft-cni", "sym-ipam"];
    if hard {
        types.push("hard-ipam");
    }
    for ty in types {
        let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
        conf["ipam"] = json!({"type": ty, "dataDir": node.data.0.display().to_string()});
        let cap = PidCap::new(32);
        let (r, took) = add_capped(&node, &pod, &conf, &cap, &cni_path);
        assert_protocol(&r, "ADD");
        assert_eq!(cap.refused(), 0, "{ty}: forks hit the cap: a loop");
        assert!(took < Duration::from_secs(5), "{ty}: took {took:?}");
        assert_eq!(r.code(), 7, "{ty}: {}", r.stdout);
        assert!(msg(&r).starts_with("ipam.type:"), "{ty}: {}", r.stdout);
    }
    assert!(node.veths().is_empty());
}

#[test]
fn a_delegation_loop_through_another_plugin_stops() {
    let node = Node::new();
    let pod = Pod::new();
    let dir = TempDir::new("loopipam");
    let count = dir.0.join("count");
    // An "IPAM plugin" that notes each run and runs weft-cni again, with
    // the same environment and config: the loop weft-cni cannot see by
    // name or inode.
    let script = dir.0.join("loop-ipam");
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\necho run >> {}\nexec {}\n",
            count.display(),
            node.plugin.display()
        ),
    )
    .unwrap();
    std::process::Command::new("chmod")
        .args(["+x", script.to_str().unwrap()])
        .status()
        .unwrap();
    let cni_path = format!("{}:/usr/lib/cni", dir.0.display());
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["ipam"] = json!({"type": "loop-ipam", "dataDir": node.data.0.display().to_string()});
    let cap = PidCap::new(48);
    let (r, took) = add_capped(&node, &pod, &conf, &cap, &cni_path);
    assert_protocol(&r, "ADD");
    assert_eq!(cap.refused(), 0, "forks hit the cap: the loop did not stop");
    assert!(took < Duration::from_secs(5), "took {took:?}");
    let runs = std::fs::read_to_string(&count)
        .unwrap_or_default()
        .lines()
        .count();
    assert!((1..=4).contains(&runs), "the loop went {runs} rounds");
    assert_eq!(r.code(), 7, "{}", r.stdout);
    assert!(msg(&r).contains("WEFT_CNI_DEPTH"), "{}", r.stdout);
    assert!(node.veths().is_empty());
    assert!(node.records().is_empty(), "{:?}", node.records());
}

#[test]
fn a_network_name_cannot_reach_outside_the_data_dir() {
    let node = Node::new();
    let pod = Pod::new();
    let deep = node.data.0.join("a/b");
    for name in [
        "../../x",
        "..",
        "a/b",
        "we\u{1}ft",
        "wéft",
        "tab\tnet",
        "-x",
    ] {
        let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
        conf["name"] = json!(name);
        conf["ipam"]["dataDir"] = json!(deep.display().to_string());
        let r = node.run("ADD", &pod, &conf);
        assert_eq!(r.code(), 7, "{name:?}: {}", r.stdout);
        assert!(msg(&r).starts_with("name: "), "{name:?}: {}", r.stdout);
        let r = node.run("DEL", &pod, &conf);
        assert_eq!(r.code(), 7, "DEL {name:?}: {}", r.stdout);
    }
    // Nothing was made anywhere: not where `../../x` points, not in the
    // data directory itself.
    assert!(!node.data.0.join("x").exists());
    assert!(
        !deep.exists(),
        "{:?}",
        std::fs::read_dir(&node.data.0).unwrap().count()
    );
    assert!(node.veths().is_empty());

    // A megabyte of name makes an error of a few hundred bytes.
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["name"] = json!("../".repeat(350_000));
    let r = node.run("ADD", &pod, &conf);
    assert_eq!(r.code(), 7);
    assert!(r.stdout.len() < 1024, "{} bytes of error", r.stdout.len());
    assert!(msg(&r).contains('…'), "{}", r.stdout);
    // Other echoed fields too, from the config and from the environment.
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["runtimeConfig"] = json!({"mac": "m".repeat(1 << 20)});
    let r = node.run("ADD", &pod, &conf);
    assert_eq!(r.code(), 7);
    assert!(r.stdout.len() < 1024, "{} bytes of error", r.stdout.len());
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    // (An environment string is at most 128 KiB.)
    let big = format!("IgnoreUnknown=0;{}=1", "K".repeat(100_000));
    let r = node.exec(&node.plugin, "ADD", &pod, &conf, &[("CNI_ARGS", &big)]);
    assert_eq!(r.code(), 4);
    assert!(r.stdout.len() < 1024, "{} bytes of error", r.stdout.len());
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["mtu"] = json!("9".repeat(1 << 20));
    let r = node.run("ADD", &pod, &conf);
    assert_eq!(r.code(), 7);
    assert!(r.stdout.len() < 4096, "{} bytes of error", r.stdout.len());
}

#[test]
fn configs_host_local_refuses_are_refused() {
    let node = Node::new();
    let pod = Pod::new();
    let cases: &[(Value, &str)] = &[
        // One pod, two addresses of one /24.
        (
            json!([[{"subnet": "10.1.0.0/24"}], [{"subnet": "10.1.0.0/25"}]]),
            "ipam.ranges[1]: range set overlaps ipam.ranges[0]",
        ),
        (
            json!([[{"subnet": "10.1.0.0/24", "rangeEnd": "10.1.0.100"}],
                   [{"subnet": "10.2.0.0/24"}],
                   [{"subnet": "10.1.0.0/24", "rangeStart": "10.1.0.50"}]]),
            "ipam.ranges[2]: range set overlaps ipam.ranges[0]",
        ),
        (
            json!([[{"subnet": "10.1.0.0/24"}, {"subnet": "10.1.0.128/25"}]]),
            "ipam.ranges[0][1]: range overlaps ipam.ranges[0][0]",
        ),
        (
            json!([[{"subnet": "0.0.0.0/0"}]]),
            "ipam.ranges[0][0].subnet: ",
        ),
        (json!([[{"subnet": "::/0"}]]), "ipam.ranges[0][0].subnet: "),
    ];
    for (ranges, want) in cases {
        let mut conf = node.conf("1.1.0", &[]);
        conf["ipam"]["ranges"] = ranges.clone();
        let r = node.run("ADD", &pod, &conf);
        if r.success {
            node.del(&pod, &conf);
        }
        assert_eq!(r.code(), 7, "{ranges}: {}", r.stdout);
        assert!(msg(&r).starts_with(want), "{ranges}: {}", r.stdout);
    }
    assert!(node.veths().is_empty());
    assert!(!node.store().exists(), "a refused ADD created the store");
}

#[test]
fn a_failed_add_takes_back_the_ipam_directory_it_made() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    // The failure comes after the address is reserved: the pod already
    // has an eth0.
    let busy = Pod::new();
    busy.ns.ok("ip link add eth0 type bridge");
    let r = node.run("ADD", &busy, &conf);
    assert!(!r.success);
    assert!(
        !node.store().exists(),
        "left {:?}",
        std::fs::read_dir(node.store())
            .map(|d| d.flatten().map(|e| e.file_name()).collect::<Vec<_>>())
    );
    // A directory that was there before (another pod's) stays.
    let ok = Pod::new();
    node.add(&ok, &conf);
    let r = node.run("ADD", &busy, &conf);
    assert!(!r.success);
    node.del(&ok, &conf);
    assert!(node.store().join("lock").exists());
}

#[test]
fn a_config_without_ipam_creates_nothing_on_the_host() {
    let node = Node::new();
    let pod = Pod::new();
    let name = unique("noipam");
    let default_dir = Path::new(weft_core::cni::config::DEFAULT_DATA_DIR).join(&name);
    struct Cleanup(PathBuf);
    impl Drop for Cleanup {
        fn drop(&mut self) {
            let _ = std::fs::remove_dir_all(&self.0);
        }
    }
    let _cleanup = Cleanup(default_dir.clone());
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["name"] = json!(name);
    conf.as_object_mut().unwrap().remove("ipam");
    for verb in ["ADD", "DEL"] {
        let r = node.run(verb, &pod, &conf);
        assert_eq!(r.code(), 7, "{verb}: {}", r.stdout);
        assert!(msg(&r).starts_with("ipam"), "{verb}: {}", r.stdout);
    }
    assert!(
        !default_dir.exists(),
        "{} was created",
        default_dir.display()
    );
    assert!(node.veths().is_empty());
}

/// Rewrites `ip`'s reservation file as `content`.
fn rewrite(node: &Node, ip: &str, content: &[u8]) {
    std::fs::write(node.store().join(ip), content).unwrap();
}

#[test]
fn gc_never_frees_a_listed_attachment_whatever_its_file_says() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    let pods: Vec<Pod> = (0..6).map(|_| Pod::new()).collect();
    let ips: Vec<String> = pods
        .iter()
        .map(|p| result_ips(&node.add(p, &conf))[0].clone())
        .collect();
    let id = |i: usize| pods[i].id.clone();
    // Live: host-local's ID-only format, with and without a newline, the
    // two-line format with a bare \n, an empty file and a torn one.
    rewrite(&node, &ips[0], id(0).as_bytes());
    rewrite(&node, &ips[1], format!("{}\n", id(1)).as_bytes());
    rewrite(&node, &ips[2], format!("{}\neth0", id(2)).as_bytes());
    rewrite(&node, &ips[3], b"");
    rewrite(&node, &ips[4], format!("{}\r\net", id(4)).as_bytes());
    // Stale: pod 5, in the ID-only format.
    rewrite(&node, &ips[5], id(5).as_bytes());
    // Not a reservation at all.
    std::fs::create_dir(node.store().join("10.1.0.200")).unwrap();

    let live: Vec<(&str, &str)> = pods[..5].iter().map(|p| (p.id.as_str(), "eth0")).collect();
    let r = node.gc(&conf, &live);
    for (i, ip) in ips[..5].iter().enumerate() {
        assert!(
            node.store().join(ip).exists(),
            "GC freed live pod {i}'s {ip}: {}",
            r.stdout
        );
    }
    assert!(
        !node.store().join(&ips[5]).exists(),
        "stale {} kept",
        ips[5]
    );
    assert!(node.store().join("10.1.0.200").is_dir());
    // All done, but the empty and the torn file are reported (101), not a
    // failure (100); the directory only on stderr.
    assert_eq!(r.code(), 101, "{}\n{}", r.stdout, r.stderr);
    let m = msg(&r);
    assert!(m.contains(&ips[3]) && m.contains(&ips[4]), "{m}");
    assert!(!m.contains(&ips[0]) && !m.contains(&ips[1]), "{m}");
    assert!(r.stderr.contains("10.1.0.200"), "{}", r.stderr);
    // The next ADD gets none of the live addresses, even asking for one.
    let next = Pod::new();
    let mut c = conf.clone();
    c["runtimeConfig"] = json!({"ips": [ips[0].clone()]});
    let taken = node.run("ADD", &next, &c);
    assert!(!taken.success, "{} handed out twice", ips[0]);
    let got = result_ips(&node.add(&next, &conf))[0].clone();
    assert!(!ips[..5].contains(&got), "{got} handed out twice");

    // DEL releases what it holds in any of host-local's formats.
    for p in &pods[..3] {
        node.del(p, &conf);
    }
    for ip in &ips[..3] {
        assert!(!node.store().join(ip).exists(), "DEL left {ip} reserved");
    }
    // And a DEL with no record to go by finds them too.
    let solo = Pod::new();
    let ip = result_ips(&node.add(&solo, &conf))[0].clone();
    for n in node.records() {
        if n.starts_with(&solo.id) {
            std::fs::remove_file(node.store().join("weft").join(n)).unwrap();
        }
    }
    rewrite(&node, &ip, format!("{}\n", solo.id).as_bytes());
    node.del(&solo, &conf);
    assert!(
        !node.store().join(&ip).exists(),
        "record-less DEL left {ip}"
    );
    assert!(
        !node
            .veths()
            .contains(&weft_cni::host_veth_name(&solo.id, "eth0")),
        "record-less DEL left the veth"
    );
}

/// Two container IDs whose first host veth names are the same: a birthday
/// search over 32 bits, some 80k hashes.
fn colliding_ids(tag: &str) -> (String, String) {
    let mut seen: HashMap<String, String> = HashMap::new();
    for n in 0u64..2_000_000 {
        let id = format!("{tag}-{n}");
        let name = weft_cni::host_veth_name(&id, "eth0");
        if let Some(other) = seen.insert(name, id.clone()) {
            return (other, id);
        }
    }
    panic!("no collision in 2M names: the hash is not 32 bits any more?");
}

#[test]
fn pods_whose_veth_names_collide_both_work_and_stay_apart() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    let (ia, ib) = colliding_ids("coll");
    let (mut a, mut b) = (Pod::new(), Pod::new());
    a.id = ia;
    b.id = ib;
    let ra = node.add(&a, &conf);
    let rb = node.add(&b, &conf);
    let (va, vb) = (result_host_veth(&ra), result_host_veth(&rb));
    assert_ne!(va, vb);
    assert_eq!(node.veths(), [va.clone(), vb.clone()].into());
    a.ping("10.1.0.1");
    b.ping("10.1.0.1");
    a.ping(&result_ips(&rb)[0]);
    // CHECK finds each pod's own host end.
    for (p, r) in [(&a, &ra), (&b, &rb)] {
        let mut c = conf.clone();
        c["prevResult"] = r.clone();
        let ck = node.run("CHECK", p, &c);
        assert!(ck.success, "CHECK {}: {}", p.id, ck.stdout);
    }
    node.del(&a, &conf);
    assert_eq!(
        node.veths(),
        [vb.clone()].into(),
        "DEL of one took the other"
    );
    // A bridge whose MAC weft-cni did not pin takes its lowest port's, so
    // A's going may have changed it; B's cached neighbour entry would then
    // take up to a minute to notice (the agent pins it; this test runs
    // without one).
    b.ns.ok("ip neigh flush dev eth0");
    b.ping("10.1.0.1");
    node.del(&b, &conf);
    assert!(node.veths().is_empty());
}

#[test]
fn a_link_of_the_same_name_is_never_taken_for_ours() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["ipMasq"] = json!(true);
    let pod = Pod::new();
    // Someone else's link already has the pod's first name.
    let name = weft_cni::host_veth_name(&pod.id, "eth0");
    node.ns
        .ok(&format!("ip link add {name} type veth peer name wtother0"));
    let theirs = || node.ns.ok(&format!("ip -o link show {name}"));
    let before = theirs();

    // An ADD that fails late (the hostPort is held), after its veth and
    // address exist: its rollback must take only what it made.
    let mut hp = conf.clone();
    hp["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    let holder = Pod::new();
    node.add(&holder, &hp);
    let r = node.run("ADD", &pod, &hp);
    assert!(!r.success, "second claim on hostPort 8080 succeeded");
    assert!(
        node.veths().contains(&name),
        "rollback deleted a link it did not make"
    );
    node.del(&pod, &hp);
    assert!(
        node.veths().contains(&name),
        "DEL after a failed ADD deleted it"
    );

    // An ADD that succeeds takes another name, and its DEL (and a second,
    // record-less, DEL) leaves the other link alone.
    let r = node.add(&pod, &conf);
    assert_ne!(result_host_veth(&r), name);
    pod.ping("10.1.0.1");
    node.del(&pod, &conf);
    node.del(&pod, &conf);
    assert_eq!(theirs(), before);
    node.del(&holder, &hp);
    assert_eq!(node.veths(), ["wtother0".to_string(), name].into());
}

#[test]
fn del_after_the_netns_is_gone_spares_the_pod_now_named_like_it() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    let (ia, ib) = colliding_ids("gone");
    let mut a = Pod::new();
    a.id = ia;
    let va = result_host_veth(&node.add(&a, &conf));
    let (a_id, a_netns) = (a.id.clone(), a.netns());
    drop(a); // the runtime removed the netns, and the kernel the pair
    let deadline = Instant::now() + Duration::from_secs(10);
    while node.veths().contains(&va) {
        assert!(Instant::now() < deadline, "{va} outlived its netns");
        std::thread::sleep(Duration::from_millis(20));
    }
    let mut b = Pod::new();
    b.id = ib;
    let rb = node.add(&b, &conf);
    let vb = result_host_veth(&rb);
    // A's DEL comes late; its record names what is now B's link.
    let r = run_plugin(
        &node.ns,
        &node.plugin,
        "DEL",
        &[
            ("CNI_CONTAINERID", &a_id),
            ("CNI_IFNAME", "eth0"),
            ("CNI_NETNS", &a_netns),
        ],
        &conf.to_string(),
    );
    assert!(r.success, "{}", r.stdout);
    assert_eq!(node.veths(), [vb].into(), "A's DEL removed B's veth");
    b.ns.ok("ip neigh flush dev eth0"); // see above
    b.ping("10.1.0.1");
    node.del(&b, &conf);
}

/// The record file of `pod`, by its name on disk.
fn record_of(node: &Node, pod: &Pod) -> PathBuf {
    let n = node
        .records()
        .into_iter()
        .find(|n| n.starts_with(&pod.id.replace('_', "%5f")))
        .expect("a record");
    node.store().join("weft").join(n)
}

#[test]
fn corrupt_records_are_reported_and_their_veths_still_go() {
    let node = Node::new();
    let conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    let (stale, live, deleted) = (Pod::new(), Pod::new(), Pod::new());
    let rs = node.add(&stale, &conf);
    let rl = node.add(&live, &conf);
    node.add(&deleted, &conf);
    for p in [&stale, &live, &deleted] {
        std::fs::write(record_of(&node, p), b"{\"containerId\": tor").unwrap();
    }

    // DEL still removes the veth and releases the address.
    node.del(&deleted, &conf);
    assert!(!node
        .veths()
        .contains(&weft_cni::host_veth_name(&deleted.id, "eth0")));
    assert!(node
        .reservations()
        .iter()
        .all(|(_, id, _)| *id != deleted.id));
    assert!(node.records().iter().all(|n| !n.starts_with(&deleted.id)));

    // GC removes the stale one's veth and address, keeps the live one,
    // and says what it could not read.
    let r = node.gc(&conf, &[(&live.id, "eth0")]);
    assert_eq!(node.veths(), [result_host_veth(&rl)].into(), "{}", r.stdout);
    let held: Vec<String> = node
        .reservations()
        .iter()
        .map(|(ip, _, _)| ip.to_string())
        .collect();
    assert_eq!(held, result_ips(&rl));
    assert!(!held.contains(&result_ips(&rs)[0]));
    assert_eq!(r.code(), 101, "{}\n{}", r.stdout, r.stderr);
    let m = msg(&r);
    assert!(m.contains(&stale.id) && m.contains(&live.id), "{m}");
    assert!(r.stderr.contains(&stale.id), "{}", r.stderr);
    // Reported once: the stale record is gone, the live one stays for its
    // DEL.
    assert_eq!(node.records().len(), 1);
    live.ping("10.1.0.1");
    node.del(&live, &conf);
    assert!(node.veths().is_empty() && node.reservations().is_empty());
    let r = node.gc(&conf, &[]);
    assert!(r.success, "{}", r.stdout);
}

/// A `resolvConf` that never ends (`/dev/zero`) or never opens (a FIFO
/// with no writer) is refused at once with code 5, as is one over the size
/// limit; a real one still fills the result's `dns`.
#[test]
fn resolv_conf_is_read_only_from_a_small_regular_file() {
    let node = Node::new();
    let dir = TempDir::new("resolv");
    let fifo = dir.0.join("fifo");
    let made = std::process::Command::new("mkfifo")
        .arg(&fifo)
        .status()
        .expect("mkfifo");
    assert!(made.success());
    let big = dir.0.join("big");
    std::fs::write(&big, "# padding\n".repeat(10_000)).unwrap();
    for path in [Path::new("/dev/zero"), fifo.as_path(), big.as_path()] {
        let pod = Pod::new();
        let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
        conf["ipam"]["resolvConf"] = json!(path);
        let t = Instant::now();
        let r = node.run("ADD", &pod, &conf);
        assert!(
            t.elapsed() < Duration::from_secs(10),
            "{path:?} held the ADD"
        );
        assert!(!r.success, "{path:?} was read");
        assert_eq!(r.code(), 5, "{path:?}: {}", msg(&r));
        assert!(msg(&r).contains("ipam.resolvConf"), "{}", msg(&r));
    }
    let good = dir.0.join("resolv.conf");
    std::fs::write(
        &good,
        "nameserver 10.96.0.10\nsearch default.svc.cluster.local\n",
    )
    .unwrap();
    let pod = Pod::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["ipam"]["resolvConf"] = json!(good);
    let r = node.add(&pod, &conf);
    assert_eq!(r["dns"]["nameservers"][0], "10.96.0.10", "{r}");
    node.del(&pod, &conf);
}
