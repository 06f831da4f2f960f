//! Every CNI version from 0.3.0 on gets a result in its own shape.

use crate::common::*;

#[test]
fn add_answers_in_the_requested_version() {
    let node = Node::new();
    for v in ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"] {
        let conf = node.conf(v, &["10.1.0.0/24", "fd00:1::/64"]);
        let pod = Pod::new();
        let r = node.add(&pod, &conf);
        assert_eq!(r["cniVersion"], v, "{r}");
        let ips = r["ips"].as_array().expect("ips");
        assert_eq!(ips.len(), 2, "{r}");
        let old = v.starts_with("0.");
        for ip in ips {
            let fam = if ip["address"].as_str().unwrap().contains(':') {
                "6"
            } else {
                "4"
            };
            if old {
                assert_eq!(ip["version"], fam, "{v}: {ip}");
            } else {
                assert!(ip.get("version").is_none(), "{v}: {ip}");
            }
            assert_eq!(ip["interface"], 2, "{v}: {ip}");
        }
        let ifaces = r["interfaces"].as_array().expect("interfaces");
        assert_eq!(ifaces.len(), 3);
        assert_eq!(ifaces[2]["name"], "eth0");
        assert_eq!(ifaces[2]["sandbox"], pod.netns().as_str());
        // interfaces[].mtu is a 1.1.0 field.
        assert_eq!(ifaces[2].get("mtu").is_some(), v == "1.1.0", "{v}: {r}");
        assert_eq!(pod.addrs(), result_cidrs(&r));

        if v >= "0.4.0" {
            let mut c = conf.clone();
            c["prevResult"] = r.clone();
            let chk = node.run("CHECK", &pod, &c);
            assert!(chk.success, "CHECK {v}: {}", chk.stdout);
        }
        node.del(&pod, &conf);
    }
    assert!(node.reservations().is_empty());
    assert!(node.veths().is_empty());
}
