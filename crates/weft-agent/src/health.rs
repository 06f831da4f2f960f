//! The health-check node ports of LoadBalancer Services with
//! `externalTrafficPolicy: Local`, served as kube-proxy serves them: any
//! path answers 200 while this node has a ready local endpoint and the
//! agent is healthy, 503 otherwise, with a small JSON body
//! (`{"service":{...},"localEndpoints":N,"serviceProxyHealthy":B}`).
//!
//! What to serve comes from `weft_model::health::health_ports`; this module
//! only keeps listeners in step with it. Counts change in place (a watch
//! channel the handlers read), so a listener lives as long as its port is
//! wanted and a load balancer's probes never see it close. A port that
//! cannot be bound is logged and tried again on the next update.

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::header::{HeaderValue, CONTENT_TYPE};
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::watch;
use tokio::task::{JoinHandle, JoinSet};
use weft_model::health::HealthEntry;

type Table = BTreeMap<u16, HealthEntry>;

/// Owns one listener per health-check port, on the agent's runtime.
pub struct HealthServer {
    rt: tokio::runtime::Handle,
    metrics: Arc<Metrics>,
    bind: IpAddr,
    table: watch::Sender<Arc<Table>>,
    /// The accept task of every bound port. Aborting one drops its
    /// listener and, with its `JoinSet`, every connection it accepted.
    listeners: BTreeMap<u16, JoinHandle<()>>,
}

impl HealthServer {
    /// `bind` is the address every port listens on: `0.0.0.0` (all node
    /// addresses, as kube-proxy does by default), loopback in tests.
    pub fn new(rt: tokio::runtime::Handle, metrics: Arc<Metrics>, bind: IpAddr) -> HealthServer {
        HealthServer {
            rt,
            metrics,
            bind,
            table: watch::channel(Arc::new(Table::new())).0,
            listeners: BTreeMap::new(),
        }
    }

    /// The ports listening now.
    pub fn bound(&self) -> BTreeSet<u16> {
        self.listeners.keys().copied().collect()
    }

    /// Makes `desired` what is served: counts change in place, listeners
    /// for ports no longer wanted close, new ports (and ports that failed
    /// to bind before) are bound. Cheap when nothing changed.
    pub fn update(&mut self, desired: Table) {
        let all_bound = desired.keys().all(|p| self.listeners.contains_key(p));
        if **self.table.borrow() == desired && all_bound {
            return;
        }
        self.table.send_replace(Arc::new(desired.clone()));
        self.listeners.retain(|port, task| {
            let keep = desired.contains_key(port);
            if !keep {
                task.abort();
                tracing::info!(port, "closed health check port");
            }
            keep
        });
        for (port, e) in &desired {
            if self.listeners.contains_key(port) {
                continue;
            }
            let addr = SocketAddr::new(self.bind, *port);
            match self.listen(addr) {
                Ok(l) => {
                    tracing::info!(%addr, service = %format!("{}/{}", e.namespace, e.name), "serving health check");
                    let task = self.rt.spawn(accept(
                        l,
                        *port,
                        self.table.subscribe(),
                        self.metrics.clone(),
                    ));
                    self.listeners.insert(*port, task);
                }
                Err(err) => tracing::warn!(
                    %addr,
                    service = %format!("{}/{}", e.namespace, e.name),
                    error = %err,
                    "cannot bind health check port; will retry"
                ),
            }
        }
    }

    /// Binds synchronously, so that a failure is known (and logged) here.
    /// std sets SO_REUSEADDR, so a port closed a moment ago binds again.
    fn listen(&self, addr: SocketAddr) -> std::io::Result<tokio::net::TcpListener> {
        let l = std::net::TcpListener::bind(addr)?;
        l.set_nonblocking(true)?;
        let _rt = self.rt.enter();
        tokio::net::TcpListener::from_std(l)
    }
}

impl Drop for HealthServer {
    fn drop(&mut self) {
        for task in self.listeners.values() {
            task.abort();
        }
    }
}

async fn accept(
    listener: tokio::net::TcpListener,
    port: u16,
    table: watch::Receiver<Arc<Table>>,
    metrics: Arc<Metrics>,
) {
    let mut conns = JoinSet::new();
    loop {
        tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => {
                    let (table, metrics) = (table.clone(), metrics.clone());
                    conns.spawn(async move {
                        let svc = hyper::service::service_fn(move |_req: Request<hyper::body::Incoming>| {
                            let healthy = crate::http::health(&metrics).is_ok();
                            let r = respond(table.borrow().get(&port), healthy);
                            async move { Ok::<_, std::convert::Infallible>(r) }
                        });
                        // A prober may shut down its sending side once
                        // the request is out; answer it all the same.
                        let _ = hyper::server::conn::http1::Builder::new()
                            .half_close(true)
                            .serve_connection(TokioIo::new(stream), svc)
                            .await;
                    });
                }
                Err(e) => {
                    // Out of file descriptors, most likely: back off
                    // rather than spin.
                    tracing::warn!(port, error = %e, "health check accept failed");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            },
            Some(_) = conns.join_next(), if !conns.is_empty() => {}
        }
    }
}

/// kube-proxy's answer, whatever the method and path: 200 when the
/// Service has a local endpoint and the agent is healthy, else 503.
fn respond(entry: Option<&HealthEntry>, proxy_healthy: bool) -> Response<Full<Bytes>> {
    let (status, body) = match entry {
        Some(e) => {
            let ok = e.local_endpoints > 0 && proxy_healthy;
            let body = serde_json::json!({
                "service": {"namespace": e.namespace, "name": e.name},
                "localEndpoints": e.local_endpoints,
                "serviceProxyHealthy": proxy_healthy,
            });
            (
                if ok {
                    StatusCode::OK
                } else {
                    StatusCode::SERVICE_UNAVAILABLE
                },
                body.to_string(),
            )
        }
        // Only between an update that drops the port and the listener's
        // closing.
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            r#"{"localEndpoints":0,"serviceProxyHealthy":false}"#.into(),
        ),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    let h = r.headers_mut();
    h.insert(CONTENT_TYPE, HeaderValue::from_static("application/json"));
    h.insert(
        "x-content-type-options",
        HeaderValue::from_static("nosniff"),
    );
    r
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::{Read, Write};
    use std::net::{Ipv4Addr, TcpListener, TcpStream};
    use std::sync::atomic::Ordering::Relaxed;

    fn entry(name: &str, n: usize) -> HealthEntry {
        HealthEntry {
            namespace: "default".into(),
            name: name.into(),
            local_endpoints: n,
        }
    }

    #[test]
    fn answers_like_kube_proxy() {
        let r = respond(Some(&entry("web", 1)), true);
        assert_eq!(r.status(), StatusCode::OK);
        assert_eq!(r.headers()[CONTENT_TYPE], "application/json");
        assert_eq!(r.headers()["x-content-type-options"], "nosniff");
        assert_eq!(
            respond(Some(&entry("web", 0)), true).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
        assert_eq!(
            respond(Some(&entry("web", 3)), false).status(),
            StatusCode::SERVICE_UNAVAILABLE,
            "an unhealthy proxy fails every check"
        );
        assert_eq!(
            respond(None, true).status(),
            StatusCode::SERVICE_UNAVAILABLE
        );
    }

    const LOOPBACK: IpAddr = IpAddr::V4(Ipv4Addr::LOCALHOST);

    /// One HTTP/1.0 GET: (status line, body).
    fn get(port: u16, path: &str) -> std::io::Result<(String, String)> {
        let mut s = TcpStream::connect((LOOPBACK, port))?;
        s.set_read_timeout(Some(Duration::from_secs(5)))?;
        write!(s, "GET {path} HTTP/1.0\r\n\r\n")?;
        // As `socat` does at the end of its input.
        s.shutdown(std::net::Shutdown::Write)?;
        let mut out = String::new();
        s.read_to_string(&mut out)?;
        let status = out.lines().next().unwrap_or_default().to_string();
        let body = out.split("\r\n\r\n").nth(1).unwrap_or_default().to_string();
        Ok((status, body))
    }

    fn free_port() -> u16 {
        TcpListener::bind((LOOPBACK, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    }

    #[test]
    fn binds_updates_in_place_closes_and_retries() {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let metrics = Arc::new(Metrics::default());
        metrics.heartbeat.store(crate::now_secs(), Relaxed);
        metrics.last_sync_ok.store(1, Relaxed);
        let mut hs = HealthServer::new(rt.handle().clone(), metrics, LOOPBACK);

        // A port someone else holds is skipped, then bound once it is free.
        let taken = TcpListener::bind((LOOPBACK, 0)).unwrap();
        let (busy, port) = (taken.local_addr().unwrap().port(), free_port());
        let want = Table::from([(busy, entry("held", 1)), (port, entry("web", 1))]);
        hs.update(want.clone());
        assert_eq!(hs.bound(), BTreeSet::from([port]));
        drop(taken);
        hs.update(want);
        assert_eq!(hs.bound(), BTreeSet::from([busy, port]));

        let (status, body) = get(port, "/any/path").unwrap();
        assert!(status.contains("200"), "{status}");
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(
            v,
            serde_json::json!({"service": {"namespace": "default", "name": "web"},
                "localEndpoints": 1, "serviceProxyHealthy": true})
        );

        // A count changes on the same listener; a port that goes away closes.
        hs.update(Table::from([(port, entry("web", 0))]));
        assert_eq!(hs.bound(), BTreeSet::from([port]));
        let (status, body) = get(port, "/").unwrap();
        assert!(status.contains("503"), "{status}");
        assert!(body.contains(r#""localEndpoints":0"#), "{body}");
        let closed = (0..100).any(|_| {
            std::thread::sleep(Duration::from_millis(20));
            get(busy, "/").is_err()
        });
        assert!(closed, "port {busy} still answers after its removal");

        hs.update(Table::new());
        assert!(hs.bound().is_empty());
    }
}
