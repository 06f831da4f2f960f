//! /healthz and /metrics over HTTP/1 (hyper).

use crate::metrics::Metrics;
use hyper::StatusCode;
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

pub async fn serve(
    listener: tokio::net::TcpListener,
    metrics: Arc<Metrics>,
) -> std::io::Result<()> {
    if let Ok(addr) = listener.local_addr() {
        tracing::info!(%addr, "serving /healthz and /metrics");
    }
    weft_source::admin::serve_on(
        listener,
        Arc::new(move |path: &str| respond(&metrics, path)),
    )
    .await
}
