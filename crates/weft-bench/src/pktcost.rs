//! The CPU time a packet costs on a path, measured so that the scheduler
//! and the machine's other load drop out of the figure.
//!
//! Throughput on a shared 2-CPU machine moves with whatever else runs, so
//! it cannot resolve a cost of a few per cent. Here one thread sends small
//! UDP datagrams, or a TCP stream, from one namespace's socket and reads
//! them from another namespace's socket, in batches, and divides its own
//! CPU time (`CLOCK_THREAD_CPUTIME_ID`) by what it got back. With receive
//! packet steering off on the path, the kernel handles each packet in the
//! sender's own context: `dev_queue_xmit` runs the pending receive
//! softirq when it re-enables bottom halves, so the veths, bridges, VXLAN,
//! netfilter and the receiving socket's queue all run on the sending
//! thread and, as this kernel has no `CONFIG_IRQ_TIME_ACCOUNTING`, are
//! charged to it. Time the thread spends preempted, or stolen by the
//! hypervisor, is not charged at all. What is left of the machine's load
//! is its effect on the caches, which [`interleaved`] spreads evenly over
//! the flows it compares.
//!
//! A datagram that did not come back in the drain after its own batch was
//! handled somewhere else (another CPU, or `ksoftirqd`), and its cost was
//! not charged to the thread: [`Sample::max_in_flight`] shows whether any
//! was, so a run can tell whether its figure is whole.

use std::io::ErrorKind;
use std::io::{Read, Write};
use std::net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket};
use std::path::Path;
use std::time::{Duration, Instant};
use weft_kernel::error::KernelError;
use weft_kernel::netns::NetNs;

/// What a flow carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// [`PAYLOAD`]-byte UDP datagrams, one `send` each: the small-packet
    /// case, where a per-packet check weighs the most against the rest of
    /// the path. One unit is a datagram.
    Udp,
    /// One TCP stream written [`SEGMENT`] bytes at a time: bulk transfer,
    /// which the kernel carries in GSO packets of up to 64 KiB, so a
    /// per-packet check is paid once per such packet. One unit is
    /// [`SEGMENT`] bytes.
    Tcp,
}

/// The UDP payload.
pub const PAYLOAD: usize = 64;
/// The size of one TCP write, and of TCP's unit.
pub const SEGMENT: usize = 65536;

#[derive(Debug)]
enum Socks {
    Udp { tx: UdpSocket, rx: UdpSocket },
    Tcp { tx: TcpStream, rx: TcpStream },
}

/// A sending and a receiving socket, each opened in its own namespace.
#[derive(Debug)]
pub struct Flow {
    socks: Socks,
}

/// One measurement, in units of the flow's [`Kind`] (datagrams, or
/// bytes for TCP).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sample {
    pub sent: u64,
    pub received: u64,
    /// The most still on their way after a drain: 0 when everything was
    /// handled on this thread before the next batch went out.
    pub max_in_flight: u64,
    /// The measuring thread's CPU time, nanoseconds.
    pub cpu_ns: u64,
}

impl Sample {
    /// CPU nanoseconds per unit of `kind` received; NaN for none.
    pub fn ns_per_unit(&self, kind: Kind) -> f64 {
        if self.received == 0 {
            return f64::NAN;
        }
        let per = match kind {
            Kind::Udp => 1.0,
            Kind::Tcp => SEGMENT as f64,
        };
        self.cpu_ns as f64 * per / self.received as f64
    }
}

fn io(op: &'static str) -> impl Fn(std::io::Error) -> KernelError {
    move |e| KernelError::io(op, e)
}

impl Flow {
    /// A socket bound in `dst_ns` on `dst` (any port) and one in `src_ns`
    /// connected to it, both non-blocking. `dst` must be the receiving
    /// namespace's address on the path under test.
    pub fn open(
        kind: Kind,
        src_ns: &Path,
        dst_ns: &Path,
        dst: IpAddr,
    ) -> Result<Flow, KernelError> {
        let (src, dst_ns) = (NetNs::open(src_ns)?, NetNs::open(dst_ns)?);
        let socks = match kind {
            Kind::Udp => {
                let rx = dst_ns.run(|| {
                    UdpSocket::bind(SocketAddr::new(dst, 0)).map_err(io("bind receiver"))
                })?;
                let to = rx.local_addr().map_err(io("local_addr"))?;
                let tx = src.run(|| {
                    let s = UdpSocket::bind(SocketAddr::new(unspecified(dst), 0))
                        .map_err(io("bind sender"))?;
                    s.connect(to).map_err(io("connect"))?;
                    Ok(s)
                })?;
                rx.set_nonblocking(true).map_err(io("nonblocking"))?;
                Socks::Udp { tx, rx }
            }
            Kind::Tcp => {
                let l = dst_ns
                    .run(|| TcpListener::bind(SocketAddr::new(dst, 0)).map_err(io("listen")))?;
                let to = l.local_addr().map_err(io("local_addr"))?;
                // The handshake completes in the kernel; accept only takes
                // the connection off the listener's queue.
                let tx = src.run(|| TcpStream::connect(to).map_err(io("connect")))?;
                let (rx, _) = l.accept().map_err(io("accept"))?;
                for s in [&tx, &rx] {
                    s.set_nonblocking(true).map_err(io("nonblocking"))?;
                }
                Socks::Tcp { tx, rx }
            }
        };
        Ok(Flow { socks })
    }

    /// Sends `n` units in batches of `batch`, draining the receiver after
    /// each batch: (received, the most still in flight after a drain).
    fn chunk(&self, n: u64, batch: u64, rbuf: &mut [u8]) -> Result<(u64, u64), KernelError> {
        let (mut sent, mut received, mut in_flight) = (0u64, 0u64, 0u64);
        match &self.socks {
            Socks::Udp { tx, .. } => {
                let buf = [0x5au8; PAYLOAD];
                while sent < n {
                    let k = batch.max(1).min(n - sent);
                    for _ in 0..k {
                        tx.send(&buf).map_err(io("send"))?;
                    }
                    sent += k;
                    received += self.drain(rbuf)?;
                    in_flight = in_flight.max(sent - received);
                }
            }
            Socks::Tcp { tx, .. } => {
                // `&TcpStream` reads and writes: no `&mut self` needed.
                let mut tx: &TcpStream = tx;
                // `n` units of SEGMENT bytes; the batch is one write.
                let buf = [0x5au8; SEGMENT];
                let total = n * SEGMENT as u64;
                while sent < total {
                    let want = (total - sent).min(SEGMENT as u64) as usize;
                    match tx.write(&buf[..want]) {
                        Ok(k) => sent += k as u64,
                        Err(e) if e.kind() == ErrorKind::WouldBlock => {}
                        Err(e) => return Err(KernelError::io("write", e)),
                    }
                    received += self.drain(rbuf)?;
                    in_flight = in_flight.max(sent - received);
                }
            }
        }
        Ok((received, in_flight))
    }

    /// Reads whatever has arrived: datagrams, or bytes for TCP.
    fn drain(&self, buf: &mut [u8]) -> Result<u64, KernelError> {
        let mut n = 0;
        loop {
            let r = match &self.socks {
                Socks::Udp { rx, .. } => rx.recv(buf).map(|_| 1),
                Socks::Tcp { rx, .. } => (&*rx).read(buf).map(|k| k as u64),
            };
            match r {
                Ok(0) => return Err(KernelError::Other("TCP peer closed".into())),
                Ok(k) => n += k,
                Err(e) if e.kind() == ErrorKind::WouldBlock => return Ok(n),
                Err(e) => return Err(KernelError::io("receive", e)),
            }
        }
    }
}

impl Flow {
    /// Bytes per unit sent (1 for UDP: datagrams are counted).
    fn unit(&self) -> u64 {
        match self.socks {
            Socks::Udp { .. } => 1,
            Socks::Tcp { .. } => SEGMENT as u64,
        }
    }
}

fn unspecified(like: IpAddr) -> IpAddr {
    if like.is_ipv4() {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u16; 8])
    }
}

/// Sends `packets` units through each of `flows`, taking turns `chunk`
/// units at a time (the order reversed every round, so none always
/// follows the same other), and charges each flow the CPU time of its own
/// turns. Flows measured together see the same load on the machine within
/// a few milliseconds, so a difference between them is not drift.
pub fn interleaved(
    flows: &[&Flow],
    packets: u64,
    chunk: u64,
    batch: u64,
) -> Result<Vec<Sample>, KernelError> {
    let chunk = chunk.max(1);
    let mut rbuf = vec![0u8; SEGMENT];
    let mut out: Vec<Sample> = flows
        .iter()
        .map(|_| Sample {
            sent: 0,
            received: 0,
            max_in_flight: 0,
            cpu_ns: 0,
        })
        .collect();
    let mut round = 0u64;
    while flows
        .iter()
        .zip(&out)
        .any(|(f, s)| s.sent < packets * f.unit())
    {
        let order: Vec<usize> = if round.is_multiple_of(2) {
            (0..flows.len()).collect()
        } else {
            (0..flows.len()).rev().collect()
        };
        for i in order {
            let n = chunk.min(packets - out[i].sent / flows[i].unit());
            if n == 0 {
                continue;
            }
            let t0 = thread_cpu_time()?;
            let (got, in_flight) = flows[i].chunk(n, batch, &mut rbuf)?;
            let dt = thread_cpu_time()? - t0;
            let s = &mut out[i];
            s.cpu_ns += dt.as_nanos() as u64;
            s.sent += n * flows[i].unit();
            s.received += got;
            s.max_in_flight = s.max_in_flight.max(in_flight);
        }
        round += 1;
    }
    // Whatever was handled elsewhere: wait for it briefly, uncharged (its
    // cost ran on another thread; `max_in_flight` reports it).
    let deadline = Instant::now() + Duration::from_millis(200);
    while out.iter().any(|s| s.received < s.sent) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(2));
        for (f, s) in flows.iter().zip(out.iter_mut()) {
            s.received += f.drain(&mut rbuf)?;
        }
    }
    Ok(out)
}

fn thread_cpu_time() -> Result<Duration, KernelError> {
    weft_kernel::clock::thread_cpu_time()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ns_per_unit_divides_by_what_was_received() {
        let s = Sample {
            sent: 10,
            received: 8,
            max_in_flight: 0,
            cpu_ns: 800,
        };
        assert_eq!(s.ns_per_unit(Kind::Udp), 100.0);
        assert!(Sample { received: 0, ..s }.ns_per_unit(Kind::Udp).is_nan());
        let t = Sample {
            sent: 2 * SEGMENT as u64,
            received: 2 * SEGMENT as u64,
            max_in_flight: 0,
            cpu_ns: 5000,
        };
        assert_eq!(t.ns_per_unit(Kind::Tcp), 2500.0);
    }
}
