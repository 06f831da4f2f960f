//! `weft dns` against a spoofing pod (issue 17), the real server in a
//! namespace of its own: answers many times their query are rate-limited
//! per client prefix over UDP (some slipped as TC, the rest dropped) while
//! TCP and small answers are not, and a source outside `--allow-clients`
//! gets nothing at all.
//!
//! The namespace's loopback carries three addresses: the server on
//! 10.53.0.1, a client on 10.53.0.2 (private, answered by default) and one
//! on 192.0.2.7 (TEST-NET-1, outside the default allow list). The client need not spoof: the limiter
//! counts per source prefix, whoever sends.

mod common;

use common::WEFT;
use socket2::{Domain, Protocol, Socket, Type};
use std::io::{ErrorKind, Read, Write};
use std::net::{SocketAddr, TcpStream, UdpSocket};
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};
use weft_kernel::netns::NetNs;
use weft_testkit::Netns;

const SERVER: &str = "10.53.0.1:53";
const CLIENT: &str = "10.53.0.2";
const OUTSIDER: &str = "192.0.2.7";
const METRICS: &str = "127.0.0.1:8053";
const BIG: &str = "many.default.svc.cluster.local";
const SMALL: &str = "web.default.svc.cluster.local";
const ENDPOINTS: usize = 150;
const A: u16 = 1;

/// A headless Service with 150 endpoints (the reflection found) and a
/// ClusterIP Service whose answer is small.
fn manifests() -> String {
    let mut y = String::from(
        "apiVersion: v1
kind: Service
metadata: {name: web, namespace: default}
spec: {clusterIP: 10.96.0.20, ports: [{port: 80}]}
---
apiVersion: v1
kind: Service
metadata: {name: many, namespace: default}
spec: {clusterIP: None, ports: [{port: 80}]}
---
apiVersion: discovery.k8s.io/v1
kind: EndpointSlice
metadata: {name: many-1, namespace: default, labels: {kubernetes.io/service-name: many}}
addressType: IPv4
ports: [{port: 80}]
endpoints:
",
    );
    for i in 0..ENDPOINTS {
        y.push_str(&format!(
            "- {{addresses: [10.250.{}.{}]}}\n",
            i / 200,
            i % 200 + 1
        ));
    }
    y
}

/// A query in wire form; `edns`: the payload size advertised.
fn query(id: u16, name: &str, qtype: u16, edns: Option<u16>) -> Vec<u8> {
    let mut q = Vec::new();
    q.extend(id.to_be_bytes());
    q.extend([0x01, 0x00]); // RD
    q.extend([0, 1, 0, 0, 0, 0, 0, u8::from(edns.is_some())]);
    for l in name.split('.').filter(|l| !l.is_empty()) {
        q.push(l.len() as u8);
        q.extend(l.as_bytes());
    }
    q.push(0);
    q.extend(qtype.to_be_bytes());
    q.extend([0, 1]); // IN
    if let Some(size) = edns {
        q.extend([0, 0, 41]); // root, OPT
        q.extend(size.to_be_bytes());
        q.extend([0, 0, 0, 0, 0, 0]); // extended rcode and flags, no data
    }
    q
}

/// What a test needs of a reply: from the header alone.
#[derive(Debug, Clone, Copy)]
struct Reply {
    id: u16,
    tc: bool,
    rcode: u8,
    answers: u16,
}

fn reply(b: &[u8]) -> Reply {
    assert!(b.len() >= 12, "short reply: {b:?}");
    assert!(b[2] & 0x80 != 0, "not a response: {b:?}");
    Reply {
        id: u16::from_be_bytes([b[0], b[1]]),
        tc: b[2] & 0x02 != 0,
        rcode: b[3] & 0x0f,
        answers: u16::from_be_bytes([b[6], b[7]]),
    }
}

/// Runs `f` on a thread inside `ns`: every socket it makes lives there.
fn in_ns<T: Send>(ns: &Netns, f: impl FnOnce() -> T + Send) -> T {
    NetNs::open(&ns.path())
        .expect("open netns")
        .run(|| Ok(f()))
        .expect("namespace worker failed (see its panic above)")
}

fn udp_from(ip: &str) -> UdpSocket {
    let s = Socket::new(Domain::IPV4, Type::DGRAM, Some(Protocol::UDP)).unwrap();
    // Room for every large answer of the flood, so none is lost here.
    let _ = s.set_recv_buffer_size(8 << 20);
    s.bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into())
        .unwrap();
    let u: UdpSocket = s.into();
    u.set_read_timeout(Some(Duration::from_millis(1500)))
        .unwrap();
    u
}

fn tcp_from(ip: &str) -> std::io::Result<TcpStream> {
    let s = Socket::new(Domain::IPV4, Type::STREAM, Some(Protocol::TCP))?;
    s.bind(&format!("{ip}:0").parse::<SocketAddr>().unwrap().into())?;
    s.connect(&SERVER.parse::<SocketAddr>().unwrap().into())?;
    let t: TcpStream = s.into();
    t.set_read_timeout(Some(Duration::from_secs(5)))?;
    Ok(t)
}

/// One query over TCP; None when the server closes without answering.
fn ask_tcp(t: &mut TcpStream, q: &[u8]) -> Option<Reply> {
    let mut framed = (q.len() as u16).to_be_bytes().to_vec();
    framed.extend_from_slice(q);
    t.write_all(&framed).ok()?;
    let mut len = [0u8; 2];
    t.read_exact(&mut len).ok()?;
    let mut b = vec![0u8; u16::from_be_bytes(len) as usize];
    t.read_exact(&mut b).ok()?;
    Some(reply(&b))
}

/// One query over UDP, and its reply if one comes.
fn ask_udp(s: &UdpSocket, q: &[u8]) -> Option<Reply> {
    s.send_to(q, SERVER).unwrap();
    let mut buf = vec![0u8; 65536];
    match s.recv(&mut buf) {
        Ok(n) => Some(reply(&buf[..n])),
        Err(e) if matches!(e.kind(), ErrorKind::WouldBlock | ErrorKind::TimedOut) => None,
        Err(e) => panic!("recv: {e}"),
    }
}

/// A GET on the server's `--http` port; empty while it does not listen.
fn http_get(path: &str) -> String {
    let Ok(mut t) = TcpStream::connect(METRICS) else {
        return String::new();
    };
    t.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    write!(t, "GET {path} HTTP/1.0\r\nHost: localhost\r\n\r\n").unwrap();
    let mut s = String::new();
    let _ = t.read_to_string(&mut s);
    s
}

fn metric(text: &str, series: &str) -> u64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or_else(|| panic!("no {series} in /metrics:\n{text}"))
}

/// The server process, killed on drop (before its namespace goes).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn spoofed_floods_are_limited_and_outsiders_get_nothing() {
    let ns = Netns::new("dnsrrl");
    ns.ok(&format!(
        "ip addr add 10.53.0.1/32 dev lo && ip addr add {CLIENT}/32 dev lo && \
         ip addr add {OUTSIDER}/32 dev lo"
    ));
    let dir = std::env::temp_dir().join(format!("{}-zone", ns.name));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("cluster.yaml"), manifests()).unwrap();
    let log = dir.join("dns.log");
    let _server = Server(
        ns.cmd(WEFT)
            .args(["dns", "--manifests"])
            .arg(&dir)
            .args(["--listen", SERVER, "--http", METRICS, "--no-forward"])
            // One worker, so one limiter sees the whole flood; a low rate
            // so that the flood is far above it however slow this machine.
            .args(["--threads", "1", "--rrl-rate", "5"])
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("spawn weft dns"),
    );

    // Ready: the first full sync of the manifests is served.
    let t = Instant::now();
    while !in_ns(&ns, || http_get("/ready")).starts_with("HTTP/1.0 200") {
        assert!(
            t.elapsed() < Duration::from_secs(20),
            "weft dns not ready:\n{}",
            std::fs::read_to_string(&log).unwrap_or_default()
        );
        std::thread::sleep(Duration::from_millis(50));
    }

    let (flood, small, tcp, outsider, insider, outsider_tcp, metrics) = in_ns(&ns, || {
        // 200 queries for the large name, as fast as they go, with the
        // EDNS size that lets the whole answer (3.4 KB) out over UDP.
        let s = udp_from(CLIENT);
        let n = 200u16;
        for id in 0..n {
            s.send_to(&query(id, BIG, A, Some(4096)), SERVER).unwrap();
        }
        let mut flood = Vec::new();
        let mut buf = vec![0u8; 65536];
        while let Ok(len) = s.recv(&mut buf) {
            flood.push(reply(&buf[..len]));
        }

        // Small answers from the same, now exhausted, prefix: not counted.
        let small: Vec<Option<Reply>> = (0..50)
            .map(|id| ask_udp(&s, &query(1000 + id, SMALL, A, Some(4096))))
            .collect();

        // TCP proves the source: the whole answer, at once.
        let mut t = tcp_from(CLIENT).expect("connect over TCP");
        let tcp = ask_tcp(&mut t, &query(7, BIG, A, None));

        // An outsider's query gets nothing, over UDP; the same query from
        // the allowed client, sent after it to the same server socket (one
        // worker takes them in order), is answered.
        let out = udp_from(OUTSIDER);
        out.send_to(&query(9, SMALL, A, None), SERVER).unwrap();
        let insider = ask_udp(&udp_from(CLIENT), &query(10, SMALL, A, None));
        out.set_read_timeout(Some(Duration::from_millis(500)))
            .unwrap();
        let outsider = out.recv(&mut buf).ok().map(|len| reply(&buf[..len]));
        // Over TCP its connection is closed without an answer.
        let outsider_tcp = tcp_from(OUTSIDER)
            .ok()
            .and_then(|mut t| ask_tcp(&mut t, &query(11, SMALL, A, None)));

        (
            flood,
            small,
            tcp,
            outsider,
            insider,
            outsider_tcp,
            http_get("/metrics"),
        )
    });

    let full = flood
        .iter()
        .filter(|r| !r.tc && r.answers as usize == ENDPOINTS)
        .count();
    let slipped = flood.iter().filter(|r| r.tc && r.answers == 0).count();
    eprintln!(
        "flood of 200: {full} full answers, {slipped} truncated, {} dropped",
        200 - flood.len()
    );
    assert_eq!(full + slipped, flood.len(), "other replies: {flood:?}");
    assert!(flood.iter().all(|r| r.rcode == 0), "{flood:?}");
    assert!(full >= 1, "the burst is answered in full");
    assert!(full <= 100, "{full} full answers of 200: not limited");
    assert!(slipped >= 1, "no truncated (slipped) answer");
    assert!(flood.len() < 200, "nothing dropped");

    for (i, r) in small.iter().enumerate() {
        let r = r.unwrap_or_else(|| panic!("small answer {i} not answered"));
        assert!(!r.tc && r.answers == 1, "small answer {i}: {r:?}");
    }

    let tcp = tcp.expect("no answer over TCP");
    assert_eq!(
        (tcp.id, tcp.tc, tcp.answers as usize),
        (7, false, ENDPOINTS),
        "{tcp:?}"
    );

    assert!(outsider.is_none(), "an outsider got {outsider:?}");
    assert!(
        outsider_tcp.is_none(),
        "an outsider got {outsider_tcp:?} over TCP"
    );
    let insider = insider.expect("the allowed client got no answer");
    assert_eq!((insider.id, insider.answers), (10, 1));

    assert!(
        metric(&metrics, "weft_dns_rrl_limited_total{action=\"dropped\"}") >= 1,
        "{metrics}"
    );
    assert!(
        metric(&metrics, "weft_dns_rrl_limited_total{action=\"slipped\"}") >= slipped as u64,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "weft_dns_refused_clients_total{proto=\"udp\"}"),
        1,
        "{metrics}"
    );
    assert_eq!(
        metric(&metrics, "weft_dns_refused_clients_total{proto=\"tcp\"}"),
        1,
        "{metrics}"
    );
    let _ = std::fs::remove_dir_all(&dir);
}
