//! The cluster zone's answers, as a table: question in, rcode, flags and
//! sections out. No sockets: `Answers::answer` is bytes to bytes.

use hickory_proto::op::{Edns, Message, OpCode, Query, ResponseCode};
use hickory_proto::rr::{DNSClass, Name, RData, RecordType};
use weft_dns::answer::{Answers, Outcome, Transport};
use weft_model::dns::{compile, ZoneConfig};
use weft_model::ClusterState;

const CLUSTER: &str = "
apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec:
  clusterIPs: [10.96.0.20]
  ports: [{name: http, port: 80}]
---
apiVersion: v1
kind: Service
metadata: {name: db, namespace: default}
spec:
  clusterIP: None
  selector: {app: db}
  ports: [{name: pg, port: 5432}]
---
apiVersion: v1
kind: Pod
metadata: {name: db-0, labels: {app: db}}
spec: {hostname: db-0, subdomain: db, containers: [{name: c}]}
status: {phase: Running, podIP: 10.244.1.5}
---
apiVersion: v1
kind: Service
metadata: {name: ext}
spec: {type: ExternalName, externalName: www.example.test}
---
apiVersion: v1
kind: Service
metadata: {name: alias}
spec: {type: ExternalName, externalName: web.default.svc.cluster.local}
";

fn answers(yaml: &str, forward: bool) -> Answers {
    let mut s = ClusterState::default();
    for o in weft_model::manifest::parse(std::path::Path::new("t.yaml"), yaml).unwrap() {
        s.apply(o);
    }
    let zone = compile(
        &s,
        &ZoneConfig {
            zone: "cluster.local".into(),
            ttl: 7,
        },
    );
    Answers::new(zone, 42, forward)
}

fn query(name: &str, t: RecordType, edns: bool) -> Message {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.queries
        .push(Query::query(Name::from_ascii(name).unwrap(), t));
    if edns {
        m.edns = Some(Edns::new());
    }
    m
}

fn ask(a: &Answers, m: &Message, t: Transport) -> Message {
    match a.answer(&m.to_vec().unwrap(), t) {
        Outcome::Reply(b, rcode) => {
            let r = Message::from_vec(&b).unwrap();
            // Compared as numbers: 16 decodes as BADSIG, its other name.
            assert_eq!(u16::from(r.metadata.response_code), u16::from(rcode));
            assert_eq!(r.metadata.id, m.metadata.id);
            r
        }
        other => panic!("{other:?}"),
    }
}

fn udp(a: &Answers, name: &str, t: RecordType) -> Message {
    ask(a, &query(name, t, true), Transport::Udp)
}

fn rdata(r: &Message) -> Vec<String> {
    r.answers.iter().map(|r| r.data.to_string()).collect()
}

#[test]
fn positive_answers_are_authoritative() {
    let a = answers(CLUSTER, true);
    let cases: &[(&str, RecordType, &[&str])] = &[
        (
            "web.default.svc.cluster.local.",
            RecordType::A,
            &["10.96.0.20"],
        ),
        (
            "db.default.svc.cluster.local.",
            RecordType::A,
            &["10.244.1.5"],
        ),
        (
            "db-0.db.default.svc.cluster.local.",
            RecordType::A,
            &["10.244.1.5"],
        ),
        (
            "_http._tcp.web.default.svc.cluster.local.",
            RecordType::SRV,
            &["0 100 80 web.default.svc.cluster.local."],
        ),
        (
            "20.0.96.10.in-addr.arpa.",
            RecordType::PTR,
            &["web.default.svc.cluster.local."],
        ),
        (
            "5.1.244.10.in-addr.arpa.",
            RecordType::PTR,
            &["db-0.db.default.svc.cluster.local."],
        ),
        ("dns-version.cluster.local.", RecordType::TXT, &["1.1.0"]),
        (
            "10-244-7-7.default.pod.cluster.local.",
            RecordType::A,
            &["10.244.7.7"],
        ),
        ("cluster.local.", RecordType::NS, &["ns.dns.cluster.local."]),
        (
            "ext.default.svc.cluster.local.",
            RecordType::CNAME,
            &["www.example.test."],
        ),
        // An in-zone CNAME target is followed.
        (
            "alias.default.svc.cluster.local.",
            RecordType::A,
            &["web.default.svc.cluster.local.", "10.96.0.20"],
        ),
    ];
    for (name, t, want) in cases {
        let r = udp(&a, name, *t);
        assert_eq!(r.metadata.response_code, ResponseCode::NoError, "{name}");
        assert!(r.metadata.authoritative, "{name}: aa");
        assert!(r.metadata.recursion_available, "{name}: ra");
        assert_eq!(rdata(&r), *want, "{name} {t}");
        assert!(r.answers.iter().all(|x| x.ttl == 7), "{name}: ttl");
    }
}

#[test]
fn srv_answers_carry_target_addresses() {
    let a = answers(CLUSTER, true);
    let r = udp(
        &a,
        "_pg._tcp.db.default.svc.cluster.local.",
        RecordType::SRV,
    );
    assert_eq!(rdata(&r), ["0 100 5432 db-0.db.default.svc.cluster.local."]);
    let extra: Vec<String> = r.additionals.iter().map(|r| r.data.to_string()).collect();
    assert_eq!(extra, ["10.244.1.5"]);
}

#[test]
fn owner_names_keep_the_query_case() {
    let a = answers(CLUSTER, true);
    let r = udp(&a, "WEB.Default.svc.Cluster.Local.", RecordType::A);
    assert_eq!(rdata(&r), ["10.96.0.20"]);
    assert_eq!(
        r.answers[0].name.to_ascii(),
        "WEB.Default.svc.Cluster.Local."
    );
}

#[test]
fn negative_answers_carry_the_soa() {
    let a = answers(CLUSTER, true);
    for (name, t, rcode) in [
        (
            "nope.default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            "web.nosuchns.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        (
            "10-244-7-7.nosuchns.pod.cluster.local.",
            RecordType::A,
            ResponseCode::NXDomain,
        ),
        // NODATA: the name exists, the type does not.
        (
            "web.default.svc.cluster.local.",
            RecordType::AAAA,
            ResponseCode::NoError,
        ),
        (
            "web.default.svc.cluster.local.",
            RecordType::MX,
            ResponseCode::NoError,
        ),
        (
            "web.default.svc.cluster.local.",
            RecordType::Unknown(65280),
            ResponseCode::NoError,
        ),
        (
            "default.svc.cluster.local.",
            RecordType::A,
            ResponseCode::NoError,
        ),
        ("svc.cluster.local.", RecordType::A, ResponseCode::NoError),
        (
            "10-244-7-7.default.pod.cluster.local.",
            RecordType::AAAA,
            ResponseCode::NoError,
        ),
    ] {
        let r = udp(&a, name, t);
        assert_eq!(r.metadata.response_code, rcode, "{name} {t}");
        assert!(r.metadata.authoritative, "{name}");
        assert!(r.answers.is_empty(), "{name}");
        assert_eq!(r.authorities.len(), 1, "{name}");
        let soa = &r.authorities[0];
        assert_eq!(soa.name.to_ascii(), "cluster.local.");
        assert_eq!(soa.ttl, 7, "the SOA carries the configured TTL");
        match &soa.data {
            RData::SOA(s) => {
                assert_eq!(s.minimum, 7);
                assert_eq!(s.serial, 42);
                assert_eq!(s.mname.to_ascii(), "ns.dns.cluster.local.");
            }
            other => panic!("{other:?}"),
        }
    }
}

#[test]
fn outside_names_are_forwarded_or_refused() {
    let on = answers(CLUSTER, true);
    let m = query("www.example.test.", RecordType::A, false);
    assert!(matches!(
        on.answer(&m.to_vec().unwrap(), Transport::Udp),
        Outcome::Forward(_)
    ));
    // A reverse name weft has no PTR for goes upstream too.
    let m = query("9.9.9.9.in-addr.arpa.", RecordType::PTR, false);
    assert!(matches!(
        on.answer(&m.to_vec().unwrap(), Transport::Udp),
        Outcome::Forward(_)
    ));
    // An ExternalName pointing outside asks upstream for the target.
    let m = query("ext.default.svc.cluster.local.", RecordType::A, false);
    match on.answer(&m.to_vec().unwrap(), Transport::Udp) {
        Outcome::Forward(f) => {
            let (cname, q) = f.cname.expect("cname");
            assert_eq!(q.name().to_ascii(), "www.example.test.");
            assert_eq!(cname.data.to_string(), "www.example.test.");
        }
        other => panic!("{other:?}"),
    }
    let off = answers(CLUSTER, false);
    let r = udp(&off, "www.example.test.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::Refused);
    assert!(!r.metadata.recursion_available);
    let r = udp(&off, "ext.default.svc.cluster.local.", RecordType::A);
    assert_eq!(rdata(&r), ["www.example.test."]);
}

#[test]
fn bad_requests_get_their_rcode() {
    let a = answers(CLUSTER, true);
    let mut two = query("web.default.svc.cluster.local.", RecordType::A, false);
    two.queries.push(two.queries[0].clone());
    assert_eq!(
        ask(&a, &two, Transport::Udp).metadata.response_code,
        ResponseCode::FormErr
    );

    let mut notify = query("web.default.svc.cluster.local.", RecordType::A, false);
    notify.metadata.op_code = OpCode::Notify;
    assert_eq!(
        ask(&a, &notify, Transport::Udp).metadata.response_code,
        ResponseCode::NotImp
    );

    let mut v1 = query("web.default.svc.cluster.local.", RecordType::A, true);
    v1.edns.as_mut().unwrap().set_version(1);
    assert_eq!(
        u16::from(ask(&a, &v1, Transport::Udp).metadata.response_code),
        u16::from(ResponseCode::BADVERS)
    );

    let mut chaos = query("version.bind.", RecordType::TXT, false);
    chaos.queries[0].set_query_class(DNSClass::CH);
    assert_eq!(
        ask(&a, &chaos, Transport::Udp).metadata.response_code,
        ResponseCode::Refused
    );

    let axfr = query("cluster.local.", RecordType::AXFR, false);
    assert_eq!(
        ask(&a, &axfr, Transport::Tcp).metadata.response_code,
        ResponseCode::Refused
    );

    // A header that promises a question the body does not hold.
    let mut junk = query("web.default.svc.cluster.local.", RecordType::A, false)
        .to_vec()
        .unwrap();
    junk.truncate(15);
    match a.answer(&junk, Transport::Udp) {
        Outcome::Reply(b, ResponseCode::FormErr) => {
            assert_eq!(
                Message::from_vec(&b).unwrap().metadata.id,
                u16::from_be_bytes([junk[0], junk[1]])
            );
        }
        other => panic!("{other:?}"),
    }
    // Too short for a header, or a response: no reply at all.
    assert!(matches!(
        a.answer(&junk[..11], Transport::Udp),
        Outcome::Drop
    ));
    let mut resp = query("web.default.svc.cluster.local.", RecordType::A, false);
    resp.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert!(matches!(
        a.answer(&resp.to_vec().unwrap(), Transport::Udp),
        Outcome::Drop
    ));
}

#[test]
fn large_udp_answers_are_truncated_and_whole_over_tcp() {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big}\nspec: {clusterIP: None, selector: {app: big}}\n",
    );
    for i in 0..100 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: big}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.244.2.{i}}}\n"
        ));
    }
    let a = answers(&yaml, true);
    let plain = query("big.default.svc.cluster.local.", RecordType::A, false);
    let r = ask(&a, &plain, Transport::Udp);
    assert!(r.metadata.truncation && r.answers.is_empty());
    // EDNS 4096 fits 100 A records (about 1.6 kB).
    let mut big = query("big.default.svc.cluster.local.", RecordType::A, true);
    big.edns.as_mut().unwrap().set_max_payload(4096);
    let r = ask(&a, &big, Transport::Udp);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
    let r = ask(&a, &plain, Transport::Tcp);
    assert!(!r.metadata.truncation);
    assert_eq!(r.answers.len(), 100);
}

#[test]
fn before_the_first_sync_the_zone_is_servfail_and_the_rest_forwarded() {
    let empty = compile(
        &ClusterState::default(),
        &ZoneConfig {
            zone: "cluster.local".into(),
            ttl: 5,
        },
    );
    let a = Answers::unsynced(empty, true);
    let r = udp(&a, "web.default.svc.cluster.local.", RecordType::A);
    assert_eq!(r.metadata.response_code, ResponseCode::ServFail);
    let m = query("www.example.test.", RecordType::A, false);
    assert!(matches!(
        a.answer(&m.to_vec().unwrap(), Transport::Udp),
        Outcome::Forward(_)
    ));
}

#[test]
fn the_do_bit_is_echoed() {
    let a = answers(CLUSTER, true);
    let mut m = query("web.default.svc.cluster.local.", RecordType::A, true);
    m.edns.as_mut().unwrap().set_dnssec_ok(true);
    let r = ask(&a, &m, Transport::Udp);
    assert!(r.edns.expect("edns").flags().dnssec_ok);
}

#[test]
fn config_refuses_forwarding_to_itself_and_bad_limits() {
    let cfg = |listen: &str, up: &str| weft_dns::DnsConfig {
        source: weft_dns::Source::Dir("/nonexistent".into()),
        zone: "cluster.local".into(),
        ttl: 5,
        listen: vec![listen.parse().unwrap()],
        http: None,
        upstreams: vec![up.parse().unwrap()],
        resolv_conf: "/nonexistent".into(),
        forward: true,
        threads: 1,
        cache_size: 10,
        cache_max_ttl: 3600,
        cache_max_neg_ttl: 1800,
        max_concurrent: 10,
        upstream_timeout: std::time::Duration::from_secs(1),
        allow_clients: weft_dns::clients::default_allow(),
        rrl: Some(weft_dns::rrl::RrlConfig::default()),
    };
    assert!(cfg("127.0.0.1:53", "127.0.0.1:53").validate().is_err());
    assert!(cfg("0.0.0.0:53", "127.0.0.1:53").validate().is_err());
    // An IPv6-only wildcard does not answer on 127.0.0.1.
    assert!(cfg("[::]:53", "127.0.0.1:53").validate().is_ok());
    assert!(cfg("127.0.0.1:5300", "127.0.0.1:53").validate().is_ok());
    let mut c = cfg("127.0.0.1:5300", "127.0.0.1:53");
    c.max_concurrent = 0;
    assert!(c.validate().is_err());
    let mut c = cfg("127.0.0.1:5300", "127.0.0.1:53");
    c.listen.clear();
    assert!(c.validate().is_err(), "no default listen address");
    let mut c = cfg("127.0.0.1:5300", "127.0.0.1:53");
    c.allow_clients.clear();
    assert!(c.validate().is_err(), "an empty allow list answers nobody");
    type Bad = fn(&mut weft_dns::rrl::RrlConfig);
    let bad: [Bad; 7] = [
        |r| r.rate = 0,
        |r| r.burst = 0,
        |r| r.slip = 11,
        |r| r.factor = 0.5,
        |r| r.factor = f64::NAN,
        |r| r.prefix_v4 = 33,
        |r| r.prefix_v6 = 129,
    ];
    for (i, f) in bad.iter().enumerate() {
        let mut c = cfg("127.0.0.1:5300", "127.0.0.1:53");
        f(c.rrl.as_mut().unwrap());
        assert!(c.validate().is_err(), "bad RRL setting {i} accepted");
    }
    let mut c = cfg("127.0.0.1:5300", "127.0.0.1:53");
    c.rrl = None;
    assert!(c.validate().is_ok(), "RRL off");
}

#[test]
fn additional_records_that_do_not_fit_are_left_out_without_tc() {
    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: big}\nspec: {clusterIP: None, selector: {app: big}, ports: [{name: http, port: 80}]}\n",
    );
    for i in 0..12 {
        yaml.push_str(&format!(
            "---\napiVersion: v1\nkind: Pod\nmetadata: {{name: p{i}, labels: {{app: big}}}}\nspec: {{containers: [{{name: c}}]}}\nstatus: {{phase: Running, podIP: 10.244.2.{i}}}\n"
        ));
    }
    let a = answers(&yaml, true);
    let mut whole_without_extra = false;
    for size in (512..1600).step_by(8) {
        let mut m = query(
            "_http._tcp.big.default.svc.cluster.local.",
            RecordType::SRV,
            true,
        );
        m.edns.as_mut().unwrap().set_max_payload(size);
        let r = ask(&a, &m, Transport::Udp);
        if r.metadata.truncation {
            assert!(r.answers.is_empty(), "{size}");
        } else {
            assert_eq!(r.answers.len(), 12, "{size}: answers are whole or TC");
            whole_without_extra |= r.additionals.is_empty();
        }
    }
    assert!(
        whole_without_extra,
        "some size fits the answers but not the additional addresses"
    );
}

/// The rate limiter counts only answers at least `rrl::DEFAULT_FACTOR`
/// times their query: no ordinary answer reaches it, with or without EDNS,
/// while a large headless Service (the reflection found in issue 17: 150
/// endpoints) is far past it.
#[test]
fn ordinary_answers_stay_under_the_rrl_factor() {
    let a = answers(CLUSTER, true);
    let cases: &[(&str, RecordType)] = &[
        ("web.default.svc.cluster.local.", RecordType::A),
        ("web.default.svc.cluster.local.", RecordType::AAAA),
        ("web.default.svc.cluster.local.", RecordType::ANY),
        ("db.default.svc.cluster.local.", RecordType::A),
        ("db-0.db.default.svc.cluster.local.", RecordType::A),
        ("_http._tcp.web.default.svc.cluster.local.", RecordType::SRV),
        ("_pg._tcp.db.default.svc.cluster.local.", RecordType::SRV),
        ("20.0.96.10.in-addr.arpa.", RecordType::PTR),
        ("5.1.244.10.in-addr.arpa.", RecordType::PTR),
        ("nope.default.svc.cluster.local.", RecordType::A),
        (
            "web.default.svc.cluster.local.default.svc.cluster.local.",
            RecordType::A,
        ),
        ("x.cluster.local.", RecordType::A),
        ("cluster.local.", RecordType::SOA),
        ("cluster.local.", RecordType::NS),
        ("dns-version.cluster.local.", RecordType::TXT),
        ("10-244-1-5.default.pod.cluster.local.", RecordType::A),
        ("alias.default.svc.cluster.local.", RecordType::A),
    ];
    let mut worst = (0.0f64, "");
    for (name, t) in cases {
        for edns in [false, true] {
            let q = query(name, *t, edns).to_vec().unwrap();
            let Outcome::Reply(r, _) = a.answer(&q, Transport::Udp) else {
                panic!("{name} {t}: no reply")
            };
            let ratio = r.len() as f64 / q.len() as f64;
            eprintln!(
                "{name} {t} edns={edns}: {} / {} = {ratio:.2}",
                r.len(),
                q.len()
            );
            if ratio > worst.0 {
                worst = (ratio, name);
            }
        }
    }
    assert!(
        worst.0 < weft_dns::rrl::DEFAULT_FACTOR,
        "{} answers {:.2} times its query",
        worst.1,
        worst.0
    );

    let mut yaml = String::from(
        "apiVersion: v1\nkind: Service\nmetadata: {name: many}\nspec: {clusterIP: None, ports: [{port: 80}]}\n---\napiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: many-1, labels: {kubernetes.io/service-name: many}}\naddressType: IPv4\nports: [{port: 80}]\nendpoints:\n",
    );
    for i in 0..150 {
        yaml.push_str(&format!(
            "- {{addresses: [10.250.{}.{}]}}\n",
            i / 200,
            i % 200 + 1
        ));
    }
    let big = answers(&yaml, true);
    let mut m = query("many.default.svc.cluster.local.", RecordType::A, true);
    m.edns.as_mut().unwrap().set_max_payload(4096);
    let q = m.to_vec().unwrap();
    let Outcome::Reply(r, _) = big.answer(&q, Transport::Udp) else {
        panic!("no reply")
    };
    let ratio = r.len() as f64 / q.len() as f64;
    eprintln!("150 endpoints: {} / {} = {ratio:.2}", r.len(), q.len());
    assert!(ratio > 10.0 * weft_dns::rrl::DEFAULT_FACTOR, "{ratio}");
}
