//! Many plugins at once, plugins killed mid-ADD, and GC cleaning up after
//! both and after a reboot.

use crate::common::*;
use serde_json::{json, Value};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::time::Duration;
use weft_testkit::{finish, spawn_plugin};

fn pods(n: usize) -> Vec<Pod> {
    // Namespaces are made in parallel: `ip netns add` is the slow part.
    std::thread::scope(|s| {
        let hs: Vec<_> = (0..n).map(|_| s.spawn(Pod::new)).collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn spawn(node: &Node, command: &str, pod: &Pod, conf: &Value) -> std::process::Child {
    let netns = pod.netns();
    spawn_plugin(
        &node.ns,
        &node.plugin,
        command,
        &[
            ("CNI_CONTAINERID", &pod.id),
            ("CNI_IFNAME", &pod.ifname),
            ("CNI_NETNS", &netns),
        ],
        &conf.to_string(),
    )
}

/// What a node must look like when exactly `valid` (pod, ADD result) are
/// attached: their reservations, records, veths and nft elements, and
/// nothing else.
fn assert_only(node: &Node, valid: &[(&Pod, Value)]) {
    let want_owners: HashSet<(String, String)> = valid
        .iter()
        .map(|(p, _)| (p.id.clone(), p.ifname.clone()))
        .collect();
    let want_ips: HashMap<String, String> = valid
        .iter()
        .flat_map(|(p, r)| result_ips(r).into_iter().map(|ip| (ip, p.id.clone())))
        .collect();

    let res = node.reservations();
    for (ip, id, ifname) in &res {
        assert!(
            want_owners.contains(&(id.clone(), ifname.clone())),
            "{ip} is reserved for {id}/{ifname}, which is not a valid attachment"
        );
        assert_eq!(
            want_ips.get(&ip.to_string()),
            Some(id),
            "{ip} is reserved for {id} but that pod was given another address"
        );
    }
    // Files are per address, so an address cannot be held twice; an
    // attachment holding two (one leaked) would show here.
    assert_eq!(
        res.len(),
        want_ips.len(),
        "reservations {res:?} vs addresses {want_ips:?}"
    );
    assert_eq!(node.records().len(), valid.len(), "{:?}", node.records());
    assert!(node.stray_files().is_empty(), "{:?}", node.stray_files());

    let want_veths: BTreeSet<String> = valid.iter().map(|(_, r)| result_host_veth(r)).collect();
    assert_eq!(node.veths(), want_veths, "host veths");

    // Every element names a valid pod (a hostIP element also names the
    // node's own address).
    for (set, addrs) in node.nft_pod_elements() {
        assert!(
            addrs.iter().any(|a| want_ips.contains_key(a)),
            "nft {set} still has an element for {addrs:?}"
        );
    }
}

#[test]
fn a_hundred_concurrent_adds_get_distinct_addresses() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.2.0.0/16"]);
    conf["ipMasq"] = json!(true);
    let pods = pods(100);

    let children: Vec<_> = pods.iter().map(|p| spawn(&node, "ADD", p, &conf)).collect();
    let results: Vec<Value> = children
        .into_iter()
        .map(|c| {
            let r = finish(c);
            assert_protocol(&r, "ADD");
            assert!(r.success, "ADD failed: {}\n{}", r.stdout, r.stderr);
            r.json()
        })
        .collect();

    let ips: HashSet<String> = results.iter().map(|r| result_ips(r)[0].clone()).collect();
    assert_eq!(ips.len(), 100, "addresses handed out twice");
    for (p, r) in pods.iter().zip(&results) {
        assert_eq!(p.addrs(), result_cidrs(r), "{}", p.id);
    }
    let valid: Vec<(&Pod, Value)> = pods.iter().zip(results.iter().cloned()).collect();
    assert_only(&node, &valid);
    // ipMasq is per network: a hundred pods, no per-pod elements.
    assert!(node.nft_pod_elements().is_empty());

    // Two pods picked from both ends still talk.
    pods[0].ping(&result_ips(&results[99])[0]);

    let children: Vec<_> = pods.iter().map(|p| spawn(&node, "DEL", p, &conf)).collect();
    for c in children {
        let r = finish(c);
        assert_protocol(&r, "DEL");
        assert!(r.success, "DEL failed: {}\n{}", r.stdout, r.stderr);
    }
    assert_only(&node, &[]);
}

#[test]
fn gc_after_kill_9_during_add_leaves_only_valid_attachments() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.3.0.0/16"]);
    conf["ipMasq"] = json!(true);
    let mut rng = Rng::new();
    let mut all: Vec<Pod> = Vec::new();
    let mut completed: Vec<(usize, Value)> = Vec::new();
    let (mut killed, per_round) = (0, 4);

    for _ in 0..30 {
        let batch = pods(per_round);
        let children: Vec<_> = batch
            .iter()
            .enumerate()
            .map(|(j, p)| {
                // A hostPort of its own for every pod: the NAT step too
                // gets killed half-way.
                let mut c = conf.clone();
                c["runtimeConfig"] = json!({"portMappings": [{
                    "hostPort": 9000 + all.len() + j, "containerPort": 80, "protocol": "tcp"
                }]});
                spawn(&node, "ADD", p, &c)
            })
            .collect();
        let delays: Vec<u64> = (0..per_round).map(|_| rng.below(10_000)).collect();
        let outcomes: Vec<_> = std::thread::scope(|s| {
            let hs: Vec<_> = children
                .into_iter()
                .zip(delays)
                .enumerate()
                .map(|(j, (mut c, delay))| {
                    let plugin = &node.plugin;
                    s.spawn(move || {
                        // One ADD per round runs to the end, so GC has
                        // valid attachments, made among killed ones, to keep.
                        if j > 0 {
                            // The delay counts from when `ip netns exec`
                            // has become the plugin, so the kills land
                            // across the plugin's own few milliseconds.
                            wait_for_exec(c.id(), plugin);
                            std::thread::sleep(Duration::from_micros(delay));
                            let _ = c.kill(); // SIGKILL; no-op once exited
                        }
                        finish(c)
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        for (i, r) in outcomes.into_iter().enumerate() {
            if r.success {
                completed.push((all.len() + i, r.json()));
            } else {
                // Killed: no output, half of it, or even all of it (a
                // kill between printing and exiting still fails the ADD as
                // the runtime sees it). Never an error of its own.
                let out: Option<Value> = serde_json::from_str(&r.stdout).ok();
                assert!(
                    out.is_none_or(|v| v.get("code").is_none()),
                    "an ADD failed by itself: {}\n{}",
                    r.stdout,
                    r.stderr
                );
                killed += 1;
            }
        }
        all.extend(batch);
    }
    eprintln!(
        "kill -9: {} ADDs completed, {killed} killed",
        completed.len()
    );
    // A plugin killed while `nft` ran leaves that child to finish alone.
    node.wait_quiet();
    eprintln!(
        "kill -9: before GC: {} reservations, {} records, {} veths, {} nft elements",
        node.reservations().len(),
        node.records().len(),
        node.veths().len(),
        node.nft_pod_elements().len()
    );

    let valid: Vec<(&str, &str)> = completed
        .iter()
        .map(|(i, _)| (all[*i].id.as_str(), "eth0"))
        .collect();
    let gc = node.gc(&conf, &valid);
    assert!(gc.success, "GC failed: {}", gc.stdout);

    let survivors: Vec<(&Pod, Value)> = completed
        .iter()
        .map(|(i, r)| (&all[*i], r.clone()))
        .collect();
    assert_only(&node, &survivors);
    // The survivors still work.
    let ips: BTreeSet<String> = survivors
        .iter()
        .map(|(_, r)| result_ips(r)[0].clone())
        .collect();
    assert_eq!(ips.len(), survivors.len(), "an address was given twice");
    if let [(a, _), (_, rb), ..] = survivors.as_slice() {
        a.ping(&result_ips(rb)[0]);
    }

    // GC is idempotent, and an empty valid list clears the node.
    assert!(node.gc(&conf, &valid).success);
    assert!(node.gc(&conf, &[]).success);
    assert_only(&node, &[]);
}

#[test]
fn gc_after_a_reboot_releases_what_is_gone() {
    let mut node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.4.0.0/24", "fd00:4::/64"]);
    conf["ipMasq"] = json!(true);
    let pods: Vec<Pod> = (0..3).map(|_| Pod::new()).collect();
    let results: Vec<Value> = pods.iter().map(|p| node.add(p, &conf)).collect();
    assert_eq!(node.reservations().len(), 6);

    // Reboot: every device, rule and namespace is gone; the disk is not.
    // The runtime brings pod 0 back under the same ID; 1 and 2 are gone.
    let kept = pods[0].id.clone();
    drop(pods);
    node.reboot();
    assert!(node.veths().is_empty());
    let gc = node.gc(&conf, &[(&kept, "eth0")]);
    assert!(gc.success, "GC after reboot: {}", gc.stdout);

    let res = node.reservations();
    assert_eq!(res.len(), 2, "{res:?}");
    assert!(res.iter().all(|(_, id, _)| *id == kept), "{res:?}");
    assert_eq!(node.records().len(), 1);
    assert!(node.stray_files().is_empty());

    // New pods get addresses and work on the rebooted node.
    let fresh = Pod::new();
    let r = node.add(&fresh, &conf);
    let taken: BTreeSet<String> = result_ips(&results[0]).into_iter().collect();
    assert!(result_ips(&r).iter().all(|ip| !taken.contains(ip)), "{r}");
    ping_from(&node.ns, &result_ips(&r)[0]);
    node.del(&fresh, &conf);

    assert!(node.gc(&conf, &[]).success);
    assert!(node.reservations().is_empty());
    assert!(node.records().is_empty());
}

/// Waits until process `pid` runs `exe` (or has exited).
fn wait_for_exec(pid: u32, exe: &std::path::Path) {
    let link = format!("/proc/{pid}/exe");
    let deadline = std::time::Instant::now() + Duration::from_secs(5);
    while std::time::Instant::now() < deadline {
        match std::fs::read_link(&link) {
            Ok(p) if p == exe => return,
            Ok(_) => std::thread::sleep(Duration::from_micros(100)),
            Err(_) => return, // gone: exited (a zombie has no exe)
        }
    }
}
