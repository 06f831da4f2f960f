//! /healthz and /metrics over HTTP/1 (hyper).

use crate::metrics::Metrics;
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::atomic::Ordering::Relaxed;
use std::sync::Arc;

fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// The agent's health as /healthz reports it: the reconcile loop is
/// turning over (it wakes at least every resync period) and a sync has
/// succeeded. The Service health checks report it too
/// (`serviceProxyHealthy`), as kube-proxy's do.
pub fn health(m: &Metrics) -> Result<(), &'static str> {
    if now().saturating_sub(m.heartbeat.load(Relaxed)) >= 90 {
        Err("reconcile loop stalled")
    } else if m.last_sync_ok.load(Relaxed) == 1 {
        Ok(())
    } else {
        Err("not synced yet")
    }
}

fn respond(m: &Metrics, path: &str) -> (StatusCode, String) {
    match path {
        "/metrics" => (StatusCode::OK, m.render() + &m.render_drops()),
        "/healthz" => match health(m) {
            Ok(()) => (StatusCode::OK, "ok\n".into()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    }
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    tracing::info!(%addr, "serving /healthz and /metrics");
    serve_fn(addr, Arc::new(move |path: &str| respond(&metrics, path))).await
}

/// What a small status server answers for a path: a status and a body.
pub type Route = Arc<dyn Fn(&str) -> (StatusCode, String) + Send + Sync>;

/// Serves GET requests by path until the process ends; shared by the
/// agent and `weft dns`, whose paths differ.
pub async fn serve_fn(addr: SocketAddr, route: Route) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let route = route.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let (status, body) = route(req.uri().path());
                let mut r = Response::new(Full::new(Bytes::from(body)));
                *r.status_mut() = status;
                async move { Ok::<_, std::convert::Infallible>(r) }
            });
            // Answer clients that shut down their sending side after the
            // request (`socat` does); without this, hyper may close first.
            let _ = hyper::server::conn::http1::Builder::new()
                .half_close(true)
                .serve_connection(TokioIo::new(stream), svc)
                .await;
        });
    }
}
