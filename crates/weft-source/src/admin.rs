//! A small HTTP/1 server (hyper) for the admin endpoints each daemon
//! answers: `/healthz`, `/metrics`. Plain GET by path; the daemon says
//! what each path answers.

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use std::net::SocketAddr;
use std::sync::Arc;

/// What a small status server answers for a path: a status and a body.
pub type Route = Arc<dyn Fn(&str) -> (StatusCode, String) + Send + Sync>;

/// Serves GET requests by path until the process ends.
pub async fn serve_fn(addr: SocketAddr, route: Route) -> std::io::Result<()> {
    serve_on(tokio::net::TcpListener::bind(addr).await?, route).await
}

/// `serve_fn` on a listener bound already: a daemon binds before it
/// starts anything, so that an address in use fails the start.
pub async fn serve_on(listener: tokio::net::TcpListener, route: Route) -> std::io::Result<()> {
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
