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

fn respond(m: &Metrics, path: &str) -> Response<Full<Bytes>> {
    let (status, body) = match path {
        "/metrics" => (StatusCode::OK, m.render()),
        "/healthz" => match health(m) {
            Ok(()) => (StatusCode::OK, "ok\n".into()),
            Err(why) => (StatusCode::SERVICE_UNAVAILABLE, format!("{why}\n")),
        },
        _ => (StatusCode::NOT_FOUND, "not found\n".into()),
    };
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r
}

pub async fn serve(addr: SocketAddr, metrics: Arc<Metrics>) -> std::io::Result<()> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "serving /healthz and /metrics");
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(error = %e, "accept failed");
                continue;
            }
        };
        let m = metrics.clone();
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req: Request<hyper::body::Incoming>| {
                let r = respond(&m, req.uri().path());
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
