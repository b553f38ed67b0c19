//! The ops endpoint of the scheduler and executor roles: `/health` (alive), `/ready` (every
//! dependency reachable, else 503) and `/metrics` (Prometheus), on a port of their own.
//!
//! Three fixed paths do not need a routing framework, and the scheduler and executor must not
//! depend on the api's web stack, so this is bare hyper. The api serves the same three paths
//! from its own router, on its own port.

use std::convert::Infallible;
use std::net::SocketAddr;

use http::{Method, Request, Response, StatusCode, header};
use http_body_util::Full;
use hyper::body::{Bytes, Incoming};
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use crate::config::{self, ConfigError};
use crate::metrics::{Telemetry, negotiate};

/// Reads an ops listener address (for example `NETCRON_SCHEDULER_OPS_ADDR`); `off` disables it.
///
/// # Errors
/// When the variable is set to something that is neither an address nor `off`.
pub fn addr_from_env(
    name: &'static str,
    default: SocketAddr,
) -> Result<Option<SocketAddr>, ConfigError> {
    let text = config::parsed_or(name, default.to_string())?;
    if text.eq_ignore_ascii_case("off") {
        return Ok(None);
    }
    text.parse().map(Some).map_err(|e| ConfigError {
        name,
        reason: format!("`{text}` is not an address like 0.0.0.0:9091 (or `off`): {e}"),
    })
}

/// The `/ready` body: `{"status":"ready"|"not_ready","checks":{"postgres":"ok",...}}`.
pub async fn readiness_body(telemetry: &Telemetry) -> (bool, String) {
    let (ready, checks) = telemetry.readiness().await;
    let body = serde_json::json!({
        "status": if ready { "ready" } else { "not_ready" },
        "checks": checks,
    });
    (ready, body.to_string())
}

/// A bound ops listener.
pub struct OpsServer {
    listener: TcpListener,
    telemetry: Telemetry,
}

impl OpsServer {
    /// Binds `addr` (port 0 picks a free port).
    ///
    /// # Errors
    /// When the address cannot be bound.
    pub async fn bind(addr: SocketAddr, telemetry: Telemetry) -> std::io::Result<Self> {
        Ok(Self {
            listener: TcpListener::bind(addr).await?,
            telemetry,
        })
    }

    pub fn local_addr(&self) -> std::io::Result<SocketAddr> {
        self.listener.local_addr()
    }

    /// Serves until `shutdown`. Accept errors (file descriptors exhausted) pause briefly
    /// instead of spinning.
    pub async fn run(self, shutdown: CancellationToken) {
        if let Ok(addr) = self.listener.local_addr() {
            tracing::info!(%addr, "ops endpoint listening (/health, /ready, /metrics)");
        }
        loop {
            let accepted = tokio::select! {
                () = shutdown.cancelled() => return,
                accepted = self.listener.accept() => accepted,
            };
            let stream = match accepted {
                Ok((stream, _)) => stream,
                Err(e) => {
                    tracing::warn!(error = %e, "ops endpoint cannot accept");
                    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                    continue;
                }
            };
            let telemetry = self.telemetry.clone();
            tokio::spawn(async move {
                let service = service_fn(move |req| {
                    let telemetry = telemetry.clone();
                    async move { Ok::<_, Infallible>(respond(&telemetry, &req).await) }
                });
                let _ = http1::Builder::new()
                    .serve_connection(TokioIo::new(stream), service)
                    .await;
            });
        }
    }
}

async fn respond(telemetry: &Telemetry, req: &Request<Incoming>) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "only GET\n".into(),
        );
    }
    match req.uri().path() {
        "/health" => reply(
            StatusCode::OK,
            "application/json",
            r#"{"status":"ok"}"#.into(),
        ),
        "/ready" => {
            let (ready, body) = readiness_body(telemetry).await;
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", body)
        }
        "/metrics" => {
            let accept = req
                .headers()
                .get(hyper::header::ACCEPT)
                .and_then(|v| v.to_str().ok());
            let (content_type, body) = negotiate(telemetry, accept);
            reply(StatusCode::OK, content_type, body)
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: this port serves /health, /ready and /metrics\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = header::HeaderValue::from_str(content_type) {
        response.headers_mut().insert(header::CONTENT_TYPE, value);
    }
    response
}
