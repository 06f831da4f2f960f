//! The in-process element writer against the kernel, in a fresh namespace:
//! what it adds is what `nft` lists, in the sets `nft` made.

use weft_kernel::netns::NetNs;
use weft_kernel::nft_elements::{self, Family, Key, Op, SetElements};
use weft_testkit::Netns;

#[test]
fn elements_go_in_and_out_as_nft_sees_them() {
    let ns = Netns::new("nftel");
    ns.ok("nft add table bridge t; nft add set bridge t ports '{ type iface_index; }'; nft add set bridge t src4 '{ type iface_index . ipv4_addr; }'; nft add set bridge t src6 '{ type iface_index . ipv6_addr; }'");
    let nn = NetNs::open(&ns.path()).unwrap();
    let sets = vec![
        SetElements {
            set: "ports".into(),
            keys: vec![Key::new().ifindex(4242).build()],
        },
        SetElements {
            set: "src4".into(),
            keys: vec![
                Key::new()
                    .ifindex(4242)
                    .ip("10.244.1.5".parse().unwrap())
                    .build(),
                Key::new()
                    .ifindex(4242)
                    .ip("10.244.1.6".parse().unwrap())
                    .build(),
            ],
        },
        SetElements {
            set: "src6".into(),
            keys: vec![Key::new()
                .ifindex(4242)
                .ip("fd00::5".parse().unwrap())
                .build()],
        },
    ];
    let s = sets.clone();
    nn.run(move || nft_elements::apply(Family::Bridge, "t", Op::Add, &s))
        .unwrap();
    let listed = ns.ok("nft list table bridge t");
    for want in [
        "4242 . 10.244.1.5",
        "4242 . 10.244.1.6",
        "4242 . fd00::5",
        "elements = { 4242 }",
    ] {
        assert!(listed.contains(want), "{want} not in\n{listed}");
    }
    // Adding again is not an error (as `nft add element`).
    let s = sets.clone();
    nn.run(move || nft_elements::apply(Family::Bridge, "t", Op::Add, &s))
        .unwrap();
    // Removing twice is not either.
    for _ in 0..2 {
        let s = sets.clone();
        nn.run(move || nft_elements::apply(Family::Bridge, "t", Op::Remove, &s))
            .unwrap();
    }
    let listed = ns.ok("nft list table bridge t");
    assert!(!listed.contains("4242"), "{listed}");
    // A missing set is ENOENT, and nothing of the batch is applied.
    let mut bad = sets.clone();
    bad.push(SetElements {
        set: "nope".into(),
        keys: vec![vec![1, 2, 3, 4]],
    });
    let e = nn
        .run(move || nft_elements::apply(Family::Bridge, "t", Op::Add, &bad))
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc_enoent()), "{e}");
    let listed = ns.ok("nft list table bridge t");
    assert!(!listed.contains("4242"), "half a batch applied:\n{listed}");
}

fn libc_enoent() -> i32 {
    2
}

/// A required set (weft-cni's rules version) is looked up but gets no
/// elements: present, the batch goes through; missing, the whole batch
/// fails with ENOENT, so the caller lays its tables again.
#[test]
fn a_required_set_that_is_missing_fails_the_batch() {
    let ns = Netns::new("nftreq");
    ns.ok("nft add table bridge t; nft add set bridge t ports '{ type iface_index; }'; nft add set bridge t v2 '{ type iface_index; }'");
    let nn = NetNs::open(&ns.path()).unwrap();
    let sets = vec![SetElements {
        set: "ports".into(),
        keys: vec![Key::new().ifindex(4243).build()],
    }];
    let s = sets.clone();
    let e = nn
        .run(move || nft_elements::apply_requiring(Family::Bridge, "t", Op::Add, &s, &["v3"]))
        .unwrap_err();
    assert_eq!(e.errno(), Some(libc_enoent()), "{e}");
    let listed = ns.ok("nft list table bridge t");
    assert!(!listed.contains("4243"), "half a batch applied:\n{listed}");
    let s = sets.clone();
    nn.run(move || nft_elements::apply_requiring(Family::Bridge, "t", Op::Add, &s, &["v2"]))
        .unwrap();
    let listed = ns.ok("nft list set bridge t ports");
    assert!(listed.contains("4243"), "{listed}");
    let v2 = ns.ok("nft list set bridge t v2");
    assert!(
        !v2.contains("elements"),
        "the required set got elements:\n{v2}"
    );
}
