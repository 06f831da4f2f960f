//! Random mutations of valid configurations, each run through the real
//! binary as ADD then DEL. Whatever the input: no panic, an error is one
//! JSON document with a code and a message, and after DEL nothing is left
//! on the node, in the pod or in the IPAM directory.
//!
//! Deterministic: the seed is fixed (`WEFT_FUZZ_SEED` picks another,
//! `WEFT_FUZZ_CASES` another count), and a failure names the case and its
//! input so it can be replayed.

use crate::common::*;
use serde_json::{json, Map, Value};
use std::collections::HashSet;
use std::path::Path;
use std::time::Instant;
use weft_testkit::{PluginRun, Prng};

const SEED: u64 = 0x005e_ed17_cafe_f00d;
const CASES: u64 = 500;

/// A path to a value inside a document.
#[derive(Clone, Debug)]
enum Seg {
    Key(String),
    Idx(usize),
}

fn paths(v: &Value, at: &mut Vec<Seg>, out: &mut Vec<Vec<Seg>>) {
    out.push(at.clone());
    match v {
        Value::Object(m) => {
            for (k, c) in m {
                at.push(Seg::Key(k.clone()));
                paths(c, at, out);
                at.pop();
            }
        }
        Value::Array(a) => {
            for (i, c) in a.iter().enumerate() {
                at.push(Seg::Idx(i));
                paths(c, at, out);
                at.pop();
            }
        }
        _ => {}
    }
}

fn get_mut<'a>(v: &'a mut Value, path: &[Seg]) -> Option<&'a mut Value> {
    path.iter().try_fold(v, |v, s| match s {
        Seg::Key(k) => v.get_mut(k.as_str()),
        Seg::Idx(i) => v.get_mut(*i),
    })
}

/// A random node of the document other than the root.
fn some_path(rng: &mut Prng, v: &Value) -> Option<Vec<Seg>> {
    let mut all = Vec::new();
    paths(v, &mut Vec::new(), &mut all);
    all.retain(|p| !p.is_empty());
    (!all.is_empty()).then(|| rng.pick(&all))
}

fn weird_string(rng: &mut Prng) -> String {
    let bits = [
        "\u{202e}evil",
        "\u{0}",
        "😀",
        "e\u{301}",
        "\u{fffd}",
        "\u{feff}",
        "a\u{7f}b",
        "名前",
        "\n\r\t",
        "../..",
        "%00",
        "\\",
        "\"",
        "eth0",
        "lo",
        "cni0",
        " ",
    ];
    (0..1 + rng.below(3)).map(|_| rng.pick(&bits)).collect()
}

fn huge_string(rng: &mut Prng) -> String {
    let unit = rng.pick(&["A", "é", "😀", "/.."]);
    unit.repeat(20_000 + rng.below(60_000))
}

fn odd_value(rng: &mut Prng) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => json!(rng.chance(50)),
        2 => json!(-1),
        3 => json!(0),
        4 => json!(4_294_967_296u64),
        5 => json!(1e300),
        6 => json!(1.5),
        7 => json!(""),
        8 => json!(weird_string(rng)),
        9 => json!([]),
        10 => json!({}),
        11 => json!([1, "a", null]),
        12 => json!({"a": {"b": [1]}}),
        _ => json!(u64::MAX),
    }
}

const CIDRS: &[&str] = &[
    "10.1.0.0/33",
    "10.1.0.0/0",
    "0.0.0.0/0",
    "::/0",
    "::/129",
    "garbage",
    "10.1.0.0",
    "300.1.1.1/24",
    "10.1.0.0/24/1",
    "10.1.0.0/31",
    "10.1.0.0/30",
    "10.1.0.9/24",
    "10.1.0.0/25",
    "10.2.0.0/24",
    "fd00:1::/120",
    "fd00:1::/127",
    "",
];

const IPS: &[&str] = &[
    "10.1.0.1",
    "10.1.0.5",
    "10.1.0.255",
    "10.1.0.0",
    "10.9.9.9",
    "fd00:1::5",
    "1.2.3",
    "",
    "10.1.0.5/24",
    "::",
];

/// Sets a field the plugin reads to a value that is valid, out of range
/// or of the wrong kind.
fn set_field(rng: &mut Prng, c: &mut Value) {
    let port = |rng: &mut Prng| -> Value {
        let any = 1 + rng.below(65535);
        rng.pick(&[
            json!(8080),
            json!(0),
            json!(65536),
            json!(-1),
            json!(any),
            json!("80"),
        ])
    };
    let num = |rng: &mut Prng, ok: u64| -> Value {
        rng.pick(&[
            json!(ok),
            json!(0),
            json!(-1),
            json!(65536),
            json!(4_294_967_296u64),
            json!(1e20),
            json!(1.5),
            json!(ok.to_string()),
        ])
    };
    let Some(o) = c.as_object_mut() else { return };
    match rng.below(22) {
        0 => {
            o.insert("mtu".into(), num(rng, 1400));
        }
        1 => {
            let vid = 1 + rng.below(4094) as u64;
            o.insert("vlan".into(), num(rng, vid));
        }
        2 => {
            o.insert("gsoIpv4MaxSize".into(), num(rng, 196_608));
        }
        3 => {
            let pm = json!([{"hostPort": port(rng), "containerPort": port(rng),
                "protocol": rng.pick(&["tcp", "udp", "sctp", "TCP", "icmp", ""]),
                "hostIP": rng.pick(&["", "10.1.0.1", "::1", "nope"])}]);
            o.entry("runtimeConfig")
                .or_insert(json!({}))
                .as_object_mut()
                .map(|r| r.insert("portMappings".into(), pm));
        }
        4 => {
            let ips: Vec<&str> = (0..rng.below(3)).map(|_| rng.pick(IPS)).collect();
            o.entry("runtimeConfig")
                .or_insert(json!({}))
                .as_object_mut()
                .map(|r| r.insert("ips".into(), json!(ips)));
        }
        5 => {
            let mac = rng.pick(&["02:00:00:00:00:01", "zz", "01:00:5e:00:00:01", ""]);
            o.entry("runtimeConfig")
                .or_insert(json!({}))
                .as_object_mut()
                .map(|r| r.insert("mac".into(), json!(mac)));
        }
        6 => {
            let ips: Vec<&str> = (0..1 + rng.below(2)).map(|_| rng.pick(IPS)).collect();
            o.insert("args".into(), json!({"cni": {"ips": ips}}));
        }
        7 => {
            let k = rng.pick(&[
                "ipMasq",
                "isGateway",
                "isDefaultGateway",
                "forceAddress",
                "hairpinMode",
                "promiscMode",
                "macspoofchk",
                "enabledad",
                "rps",
            ]);
            o.insert(k.into(), json!(rng.chance(70)));
        }
        8 => {
            let v = rng.pick(&[
                "0.1.0", "0.2.0", "0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0", "2.0.0", "", "1.0",
            ]);
            o.insert("cniVersion".into(), json!(v));
        }
        9 => {
            let n = rng.pick(&["weftnet", "other", "a..b", "-x", "../up", "x/y", "名前", ""]);
            o.insert("name".into(), json!(n));
        }
        10 => {
            let b = rng.pick(&["wfz0", "cni0", "lo", "", "a/b", "waytoolongbridgename", "é"]);
            o.insert("bridge".into(), json!(b));
        }
        11 => {
            let t = rng.pick(&[
                "host-local",
                "weft",
                "",
                "static",
                "weft-cni",
                "nonexistent",
                "../x",
            ]);
            if let Some(i) = o.get_mut("ipam").and_then(Value::as_object_mut) {
                i.insert("type".into(), json!(t));
                if t == "static" {
                    i.insert(
                        "addresses".into(),
                        json!([{"address": rng.pick(CIDRS), "gateway": rng.pick(IPS)}]),
                    );
                }
            }
        }
        12..=15 => {
            // A range, new or replacing one.
            let mut r = Map::new();
            r.insert("subnet".into(), json!(rng.pick(CIDRS)));
            for k in ["rangeStart", "rangeEnd", "gateway"] {
                if rng.chance(30) {
                    r.insert(k.into(), json!(rng.pick(IPS)));
                }
            }
            if let Some(i) = o.get_mut("ipam").and_then(Value::as_object_mut) {
                let sets = i.entry("ranges").or_insert(json!([]));
                if let Some(a) = sets.as_array_mut() {
                    if a.is_empty() || rng.chance(50) {
                        a.push(json!([r]));
                    } else {
                        let k = rng.below(a.len());
                        if let Some(s) = a[k].as_array_mut() {
                            s.push(Value::Object(r));
                        }
                    }
                }
            }
        }
        16 => {
            if let Some(i) = o.get_mut("ipam").and_then(Value::as_object_mut) {
                i.insert("subnet".into(), json!(rng.pick(CIDRS)));
                if rng.chance(50) {
                    i.remove("ranges");
                }
            }
        }
        17 => {
            if let Some(i) = o.get_mut("ipam").and_then(Value::as_object_mut) {
                i.insert(
                    "routes".into(),
                    json!([{"dst": rng.pick(CIDRS)}, {"dst": "0.0.0.0/0", "gw": rng.pick(IPS)}]),
                );
            }
        }
        18 => {
            o.insert(
                "dns".into(),
                json!({"nameservers": [rng.pick(IPS)], "search": [weird_string(rng)]}),
            );
        }
        19 => {
            o.insert("prevResult".into(), odd_value(rng));
        }
        20 => {
            // A conflist where one plugin's config should be, or a chain
            // nested inside the config.
            let inner = c.clone();
            *c = if rng.chance(50) {
                json!({"cniVersion": inner["cniVersion"].clone(), "name": inner["name"].clone(),
                       "plugins": [inner.clone(), inner]})
            } else {
                let mut outer = inner.clone();
                outer["plugins"] = json!([inner]);
                outer
            };
        }
        _ => {
            o.insert("cni.dev/valid-attachments".into(), odd_value(rng));
        }
    }
}

/// One mutation of the document itself.
fn mutate(rng: &mut Prng, c: &mut Value) {
    match rng.below(6) {
        0 => {
            // Drop a field, anywhere.
            if let Some(mut p) = some_path(rng, c) {
                let last = p.pop().unwrap();
                match (get_mut(c, &p), last) {
                    (Some(Value::Object(m)), Seg::Key(k)) => {
                        m.remove(&k);
                    }
                    (Some(Value::Array(a)), Seg::Idx(i)) => {
                        a.remove(i);
                    }
                    _ => {}
                }
            }
        }
        1 => {
            // Give a value another type.
            if let Some(p) = some_path(rng, c) {
                let v = odd_value(rng);
                if let Some(slot) = get_mut(c, &p) {
                    *slot = v;
                }
            }
        }
        2 => {
            // A huge or strange string where a string is.
            let mut all = Vec::new();
            paths(c, &mut Vec::new(), &mut all);
            all.retain(|p| matches!(get_mut(c, p), Some(Value::String(_))));
            if !all.is_empty() {
                let p = rng.pick(&all);
                let s = if rng.chance(40) {
                    huge_string(rng)
                } else {
                    weird_string(rng)
                };
                if let Some(slot) = get_mut(c, &p) {
                    *slot = json!(s);
                }
            }
        }
        _ => set_field(rng, c),
    }
}

/// Text-level damage serde_json's values cannot express.
fn damage_text(rng: &mut Prng, text: String) -> String {
    match rng.below(6) {
        // A key given twice, the second time with another value.
        0 => text.replacen(
            "\"name\":",
            &format!("\"name\":{},\"name\":", json!(weird_string(rng))),
            1,
        ),
        // Nesting deeper than any parser should follow.
        1 => text.replacen(
            "\"cniVersion\":",
            &format!(
                "\"deep\":{}0{},\"cniVersion\":",
                "[".repeat(20_000),
                "]".repeat(20_000)
            ),
            1,
        ),
        // A lone surrogate escape.
        2 => text.replacen("\"type\":\"", "\"type\":\"\\ud800", 1),
        // Cut short.
        3 => {
            let mut cut = rng.below(text.len().max(1));
            while !text.is_char_boundary(cut) {
                cut -= 1;
            }
            text[..cut].to_string()
        }
        // Trailing garbage, or a second document.
        4 => text + rng.pick(&[" x", "{}", "\u{0}", "]"]),
        // Raw control bytes inside a string.
        _ => text.replacen("\"bridge\":\"", "\"bridge\":\"\u{1}\u{7}", 1),
    }
}

/// The valid configurations mutations start from.
fn seeds(node: &Node) -> Vec<Value> {
    let data = node.data.0.display().to_string();
    let mut v4 = node.conf("1.1.0", &["10.1.0.0/24"]);
    v4["ipMasq"] = json!(true);
    let dual = node.conf("1.0.0", &["10.1.0.0/24", "fd00:1::/120"]);
    let mut legacy = node.conf("0.4.0", &[]);
    legacy["ipam"] = json!({"type": "host-local", "subnet": "10.1.0.0/24",
        "rangeStart": "10.1.0.10", "rangeEnd": "10.1.0.50", "dataDir": data,
        "routes": [{"dst": "0.0.0.0/0"}]});
    legacy["isDefaultGateway"] = json!(true);
    let mut ports = node.conf("1.1.0", &["10.1.0.0/24"]);
    ports["runtimeConfig"] =
        json!({"portMappings": [{"hostPort": 8080, "containerPort": 80, "protocol": "tcp"}]});
    ports["macspoofchk"] = json!(true);
    let mut delegated = node.conf("1.0.0", &[]);
    delegated["ipam"] = json!({"type": "static", "dataDir": data,
        "addresses": [{"address": "10.1.0.50/24", "gateway": "10.1.0.1"}]});
    let mut tuned = node.conf("0.3.1", &["10.1.0.0/24"]);
    tuned["mtu"] = json!(1400);
    tuned["hairpinMode"] = json!(true);
    tuned["runtimeConfig"] = json!({"ips": ["10.1.0.77"], "mac": "02:11:22:33:44:55"});
    vec![v4, dual, legacy, ports, delegated, tuned]
}

/// The leftovers of a case: host links other than bridges, links in the
/// pod, per-pod nft elements, files in the data directory other than locks
/// and cursors, and network directories no ADD ever succeeded in (`used`).
fn leftovers(node: &Node, pod: &Pod, used: &HashSet<String>) -> Vec<String> {
    let mut out = Vec::new();
    let links: Value = serde_json::from_str(&node.ns.ok("ip -d -j link show")).expect("ip -j link");
    for l in links.as_array().into_iter().flatten() {
        let name = l["ifname"].as_str().unwrap_or("?");
        let kind = l["linkinfo"]["info_kind"].as_str().unwrap_or("");
        if name != "lo" && kind != "bridge" {
            out.push(format!("node link {name} ({kind})"));
        }
    }
    let in_pod = pod.ns.ok("ip -o link show");
    for l in in_pod.lines() {
        if !l.contains(": lo:") {
            out.push(format!("pod link {l}"));
        }
    }
    for (set, addrs) in node.nft_pod_elements() {
        out.push(format!("nft {set} {addrs:?}"));
    }
    for e in std::fs::read_dir(&node.data.0)
        .into_iter()
        .flatten()
        .flatten()
    {
        let n = e.file_name().to_string_lossy().into_owned();
        if !used.contains(&n) {
            out.push(format!("directory {n} of a network no ADD succeeded in"));
        }
    }
    let mut stack = vec![node.data.0.clone()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).into_iter().flatten().flatten() {
            let p = e.path();
            let n = e.file_name().to_string_lossy().into_owned();
            if p.is_dir() {
                stack.push(p);
            } else if n != "lock" && !n.starts_with("last_reserved_ip.") {
                out.push(format!("file {}", rel(&node.data.0, &p)));
            }
        }
    }
    out
}

fn rel(base: &Path, p: &Path) -> String {
    p.strip_prefix(base).unwrap_or(p).display().to_string()
}

/// The case's input, cut to a readable length for a failure message.
fn shown(text: &str) -> String {
    let mut end = text.len().min(1500);
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!(
        "{}{}",
        &text[..end],
        if end < text.len() { "…" } else { "" }
    )
}

fn no_panic(r: &PluginRun, what: &str) {
    assert!(
        !r.stderr.contains("panicked") && !r.stdout.contains("internal error (panic)"),
        "{what}: the plugin panicked\nstdout: {}\nstderr: {}",
        r.stdout,
        r.stderr
    );
}

#[test]
fn mutated_configs_never_panic_and_never_leak() {
    let seed = std::env::var("WEFT_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(SEED);
    let cases = std::env::var("WEFT_FUZZ_CASES")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(CASES);
    let mut rng = Prng(seed | 1);
    let node = Node::new();
    let seeds = seeds(&node);
    let mut pod = Pod::new();
    let start = Instant::now();
    let (mut added, mut refused) = (0, 0);
    let mut used = HashSet::new();
    for case in 0..cases {
        let mut conf = rng.pick(&seeds);
        for _ in 0..1 + rng.below(3) {
            mutate(&mut rng, &mut conf);
        }
        // The IPAM directory stays the test's, whatever else changed.
        if let Some(i) = conf.get_mut("ipam").and_then(Value::as_object_mut) {
            i.insert("dataDir".into(), json!(node.data.0.display().to_string()));
        }
        let mut text = conf.to_string();
        if rng.chance(12) {
            text = damage_text(&mut rng, text);
        }
        pod.id = format!("fz-{case}");
        pod.ifname = if rng.chance(90) {
            "eth0".into()
        } else {
            rng.pick(&["net1", "a/b", "toolongforanifname", "é", "."])
                .into()
        };
        let args = if rng.chance(85) {
            ""
        } else {
            rng.pick(&[
                "IgnoreUnknown=1;K8S_POD_NAME=x",
                "IP=10.1.0.77",
                "MAC=zz",
                "junk",
            ])
        };
        let what = |verb: &str| format!("case {case} (seed {seed}) {verb} of {}", shown(&text));

        let netns = pod.netns();
        let env = [
            ("CNI_CONTAINERID", pod.id.as_str()),
            ("CNI_IFNAME", pod.ifname.as_str()),
            ("CNI_NETNS", netns.as_str()),
            ("CNI_ARGS", args),
        ];
        for verb in ["ADD", "DEL"] {
            let r = weft_testkit::run_plugin(&node.ns, &node.plugin, verb, &env, &text);
            no_panic(&r, &what(verb));
            let proto = std::panic::catch_unwind(|| assert_protocol(&r, verb));
            assert!(proto.is_ok(), "{}: {r:?}", what(verb));
            if verb == "ADD" {
                if r.success {
                    added += 1;
                    let name = serde_json::from_str::<Value>(&text)
                        .ok()
                        .and_then(|c| c["name"].as_str().map(String::from));
                    used.extend(name);
                } else {
                    refused += 1;
                }
            }
        }
        let left = leftovers(&node, &pod, &used);
        assert!(left.is_empty(), "{}: left {left:?}", what("ADD+DEL"));
        if case % 50 == 49 {
            // A fresh pod now and then, as namespaces are cheap enough.
            pod = Pod::new();
        }
    }
    eprintln!(
        "fuzz: {cases} cases from seed {seed} in {:?}: {added} ADDs succeeded, {refused} refused",
        start.elapsed()
    );
    // Mutations that never let an ADD through would test DEL's cleanup of
    // nothing.
    assert!(
        added * 10 >= cases,
        "only {added} of {cases} ADDs succeeded"
    );
    assert!(
        refused * 10 >= cases,
        "only {refused} of {cases} ADDs failed"
    );
}
