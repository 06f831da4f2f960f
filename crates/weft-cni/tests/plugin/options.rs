//! Bridge options beyond the basics: macspoofchk, vlan, mtu, enabledad.

use crate::common::*;
use serde_json::json;

#[test]
fn macspoofchk_drops_frames_with_a_forged_source_mac() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["macspoofchk"] = json!(true);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&a, &conf);
    let rb = node.add(&b, &conf);
    let ipb = &result_ips(&rb)[0];
    a.ping(ipb);

    // The container changes its own MAC: its frames no longer pass.
    let real = ra["interfaces"][2]["mac"].as_str().unwrap().to_string();
    a.ns.ok("ip link set eth0 address 02:de:ad:be:ef:01");
    let o = a.ns.sh(&format!("ping -c1 -W1 {ipb}"));
    assert!(!o.status.success(), "a forged source MAC got through");
    a.ns.ok(&format!("ip link set eth0 address {real}"));
    a.ns.ok(&format!("ip neigh flush dev eth0; ping -c1 -W2 {ipb}"));

    // DEL removes the pod's elements; the other pod's stay.
    node.del(&a, &conf);
    let sets = node.ns.ok("nft list set bridge weft-cni macs");
    assert!(!sets.contains(&real), "{sets}");
    let mb = rb["interfaces"][2]["mac"].as_str().unwrap();
    assert!(sets.contains(mb), "{sets}");
    node.del(&b, &conf);
}

/// Issue 17: with `ipspoofchk` a pod sends only from its own address; a
/// second address inside its namespace (what a raw socket amounts to) and
/// an ARP claim get nowhere, and DEL takes its elements out.
#[test]
fn ipspoofchk_drops_packets_from_addresses_that_are_not_the_pods() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["ipspoofchk"] = json!(true);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&a, &conf);
    let rb = node.add(&b, &conf);
    let (ipa, ipb) = (&result_ips(&ra)[0], &result_ips(&rb)[0]);
    a.ping(ipb);
    let elems = node.ns.ok("nft list set bridge weft-cni ipsrc4");
    assert!(
        elems.contains(ipa.as_str()) && elems.contains(ipb.as_str()),
        "{elems}"
    );

    // The same pod, from an address it does not own.
    a.ns.ok("ip addr add 10.1.0.200/32 dev eth0");
    let o = a.ns.sh(&format!("ping -c1 -W1 -I 10.1.0.200 {ipb}"));
    assert!(!o.status.success(), "a forged source address got through");
    a.ns.ok(&format!("ping -c1 -W2 -I {ipa} {ipb}"));
    let dropped = node.ns.ok("nft list counter bridge weft-cni spoofed");
    assert!(!dropped.contains("packets 0 "), "{dropped}");
    a.ns.ok("ip addr del 10.1.0.200/32 dev eth0");

    // DEL leaves the pod's elements (keyed by an ifindex no link will have
    // again); GC sweeps them, and keeps the live pod's.
    node.del(&a, &conf);
    let before = node.ns.ok("nft list set bridge weft-cni ipsrc4");
    assert!(before.contains(ipa.as_str()), "{before}");
    let gc = node.gc(&conf, &[(b.id.as_str(), b.ifname.as_str())]);
    assert!(gc.success, "GC failed: {}", gc.stdout);
    let after = node.ns.ok("nft list table bridge weft-cni");
    assert!(
        !after.contains(ipa.as_str()),
        "GC left a gone pod's elements:\n{after}"
    );
    assert!(
        after.contains(ipb.as_str()),
        "GC took a live pod's elements:\n{after}"
    );
    node.del(&b, &conf);
    // A second DEL is not an error.
    node.del(&b, &conf);
}

/// The bridge table as weft-cni laid it before its rules had a version
/// (ef2c0a1): the same sets, but no `rules_v2` (now `rules_v3`), the MAC
/// check keyed by name, and the address check only
/// behind the jump.
const IPGUARD_V1: &str = "add table bridge weft-cni
add set bridge weft-cni spoofchk { type ifname; }
add set bridge weft-cni macs { type ifname . ether_addr; }
add chain bridge weft-cni prerouting { type filter hook prerouting priority -300; policy accept; }
add rule bridge weft-cni prerouting iifname @spoofchk iifname . ether saddr != @macs drop
add set bridge weft-cni ipguard { type iface_index; }
add set bridge weft-cni ipsrc4 { type iface_index . ipv4_addr; }
add set bridge weft-cni ipsrc6 { type iface_index . ipv6_addr; }
add set bridge weft-cni ndtarget6 { typeof iif . @th,64,128; }
add counter bridge weft-cni spoofed
add chain bridge weft-cni ipguard
add rule bridge weft-cni prerouting iif @ipguard jump ipguard
add rule bridge weft-cni ipguard ether type ip iif . ip saddr @ipsrc4 return
add rule bridge weft-cni ipguard ether type arp iif . arp saddr ip @ipsrc4 return
add rule bridge weft-cni ipguard ether type arp arp saddr ip 0.0.0.0 return
add rule bridge weft-cni ipguard ether type ip6 iif . ip6 saddr @ipsrc6 return
add rule bridge weft-cni ipguard ether type ip6 ip6 saddr { ::, fe80::/10 } return
add rule bridge weft-cni ipguard counter name spoofed drop
";

/// A node whose MAC check is keyed by port name (before `rules_v3`) gets
/// the ifindex-keyed sets on the next ADD, and the pairs of ports that
/// still exist come along: no pod leaves the check.
#[test]
fn macspoofchk_upgrade_carries_live_ports_over() {
    let node = Node::new();
    node.ns.ok(&format!("nft -f - <<'EOF'\n{IPGUARD_V1}EOF"));
    node.ns
        .ok("nft add set bridge weft-cni rules_v2 '{ type iface_index; }'");
    node.ns.ok("ip link add wold0 type veth peer name wold1");
    node.ns.ok(
        "nft add element bridge weft-cni spoofchk '{ \"wold0\", \"wgone0\" }'; \
         nft add element bridge weft-cni macs '{ \"wold0\" . 02:00:00:00:00:0a, \"wgone0\" . 02:00:00:00:00:0b }'",
    );
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["macspoofchk"] = json!(true);
    let a = Pod::new();
    let ra = node.add(&a, &conf);
    let pre = node.ns.ok("nft list chain bridge weft-cni prerouting");
    assert!(
        pre.contains("iif @spoofchk iif . ether saddr != @macs drop"),
        "{pre}"
    );
    assert!(!pre.contains("iifname"), "{pre}");
    let macs = node.ns.ok("nft list set bridge weft-cni macs");
    assert!(macs.contains("type iface_index . ether_addr"), "{macs}");
    assert!(macs.contains("\"wold0\" . 02:00:00:00:00:0a"), "{macs}");
    assert!(!macs.contains("02:00:00:00:00:0b"), "{macs}");
    let mac = ra["interfaces"][2]["mac"].as_str().unwrap();
    assert!(macs.contains(mac), "{macs}");
    assert!(!node
        .ns
        .sh("nft list set bridge weft-cni rules_v2")
        .status
        .success());
    node.del(&a, &conf);
    node.ns.ok("ip link del wold0");
}

/// Issue 17: a node that has the table from an older weft-cni gets this
/// version's rules on the next ADD (its element batch names the rules'
/// version set, which the old table lacks), once, and the check holds
/// across the change.
#[test]
fn ipspoofchk_upgrades_an_older_table_on_the_next_add() {
    let node = Node::new();
    node.ns.ok(&format!("nft -f - <<'EOF'\n{IPGUARD_V1}EOF"));
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["ipspoofchk"] = json!(true);
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&a, &conf);
    let chain = |c: &str| {
        node.ns
            .ok(&format!("nft -a list chain bridge weft-cni {c}"))
    };
    let pre = chain("prerouting");
    assert_eq!(pre.matches("@ipsrc4 accept").count(), 1, "{pre}");
    assert_eq!(pre.matches("jump ipguard").count(), 1, "{pre}");
    assert!(chain("ipguard").contains("nd-router-advert"));
    node.ns.ok("nft list set bridge weft-cni rules_v3");
    assert!(!node
        .ns
        .sh("nft list set bridge weft-cni rules_v2")
        .status
        .success());
    let elems = node.ns.ok("nft list set bridge weft-cni ipsrc4");
    assert!(elems.contains(result_ips(&ra)[0].as_str()), "{elems}");
    // The next ADD finds the version and writes elements only: the rules
    // keep their handles.
    let rb = node.add(&b, &conf);
    assert_eq!(
        chain("prerouting"),
        pre,
        "an up-to-date table was laid again"
    );
    let (ipa, ipb) = (&result_ips(&ra)[0], &result_ips(&rb)[0]);
    a.ping(ipb);
    a.ns.ok("ip addr add 10.1.0.201/32 dev eth0");
    let o = a.ns.sh(&format!("ping -c1 -W1 -I 10.1.0.201 {ipb}"));
    assert!(!o.status.success(), "a forged source address got through");
    a.ns.ok(&format!("ping -c1 -W2 -I {ipa} {ipb}"));
    node.del(&a, &conf);
    node.del(&b, &conf);
}

#[test]
fn mtu_applies_to_the_pod() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["mtu"] = json!(1400);
    let pod = Pod::new();
    let r = node.add(&pod, &conf);
    assert_eq!(r["interfaces"][2]["mtu"], 1400);
    let link = pod.ns.ok("ip -o link show eth0");
    assert!(link.contains("mtu 1400"), "{link}");
    node.del(&pod, &conf);
}

/// VLAN needs bridge VLAN filtering in the kernel. Where it exists the
/// port gets the PVID; where it does not (this machine kind's kernel), ADD
/// fails with error 7 naming `vlan`, and leaves nothing behind.
#[test]
fn vlan_sets_the_port_pvid_or_fails_cleanly() {
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["vlan"] = json!(100);
    let pod = Pod::new();
    let run = node.run("ADD", &pod, &conf);
    if run.success {
        let r = run.json();
        let veth = r["interfaces"][1]["name"].as_str().unwrap();
        let vlans = node.ns.ok(&format!("bridge vlan show dev {veth}"));
        assert!(vlans.contains("100 PVID"), "{vlans}");
        node.del(&pod, &conf);
    } else {
        assert_eq!(run.code(), 7, "{}", run.stdout);
        assert!(
            run.json()["msg"].as_str().unwrap().starts_with("vlan:"),
            "{}",
            run.stdout
        );
        assert!(
            node.veths().is_empty() && node.reservations().is_empty() && node.records().is_empty()
        );
    }
}

/// ipMasq with real packets: a host outside the pod network sees the node's
/// address; a pod on the same network sees the pod's own. A second pod's
/// ADD needs no nftables work (the bridge's alias records the subnet).
#[test]
fn ip_masq_rewrites_only_traffic_leaving_the_network() {
    use weft_testkit::Netns;
    let node = Node::new();
    let mut conf = node.conf("1.1.0", &["10.1.0.0/24"]);
    conf["ipMasq"] = json!(true);
    conf["isDefaultGateway"] = json!(true);
    let outside = Netns::new("outside");
    node.ns.ok(&format!(
        "ip link add up0 type veth peer name eth0 netns {}; ip addr add 10.77.0.1/24 dev up0; ip link set up0 up",
        outside.name
    ));
    outside.ok("ip addr add 10.77.0.2/24 dev eth0; ip link set eth0 up");
    let (a, b) = (Pod::new(), Pod::new());
    let ra = node.add(&a, &conf);
    node.add(&b, &conf);
    let alias = node.ns.ok(&format!("ip -d link show {}", node.bridge));
    assert!(alias.contains("alias weft-cni masq 10.1.0.0/24"), "{alias}");

    let peer = |server: &Netns, server_ip: &str, client: &Netns| {
        let mut srv = server
            .cmd("socat")
            .args([
                "-T3",
                "TCP-LISTEN:7100,reuseaddr",
                "SYSTEM:echo $SOCAT_PEERADDR",
            ])
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap();
        let mut seen = String::new();
        for _ in 0..50 {
            let o = client.sh(&format!("socat -T2 - TCP:{server_ip}:7100 </dev/null"));
            seen = String::from_utf8_lossy(&o.stdout).trim().to_string();
            if !seen.is_empty() {
                break;
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        let _ = srv.kill();
        let _ = srv.wait();
        seen
    };
    assert_eq!(
        peer(&outside, "10.77.0.2", &a.ns),
        "10.77.0.1",
        "masqueraded to the node"
    );
    let ipa = &result_ips(&ra)[0];
    let ipb = b.addrs()[0].split('/').next().unwrap().to_string();
    assert_eq!(
        peer(&b.ns, &ipb, &a.ns),
        *ipa,
        "pod to pod must keep the pod's address"
    );
    node.del(&a, &conf);
    node.del(&b, &conf);
}
