//! The api role's Prometheus series: HTTP requests (result ingest has its own, in `netcron-ingest`).

use std::time::Instant;

use axum::extract::{MatchedPath, Request, State};
use axum::http::Method;
use axum::middleware::Next;
use axum::response::Response;
use netcron_common::metrics::{Telemetry, duration_histogram};
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::Histogram;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    /// A standard method or `other`: the method is read before authentication, so a client
    /// sending made-up methods must not be able to create series.
    method: &'static str,
    /// The route template (`/devices/{device_id}`), never the raw path, so ids do not
    /// explode the number of series; `unmatched` for paths no route serves.
    route: String,
    status: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RouteLabels {
    method: &'static str,
    route: String,
}

/// The method's label: the standard methods a REST API sees by name, every other method
/// (extension methods, `TRACE`, `CONNECT`) as `other`.
fn method_label(method: &Method) -> &'static str {
    match method.as_str() {
        "GET" => "GET",
        "HEAD" => "HEAD",
        "POST" => "POST",
        "PUT" => "PUT",
        "PATCH" => "PATCH",
        "DELETE" => "DELETE",
        "OPTIONS" => "OPTIONS",
        _ => "other",
    }
}

/// Requests by route, status and latency.
#[derive(Clone, Debug)]
pub struct HttpMetrics {
    requests: Family<RequestLabels, Counter>,
    duration: Family<RouteLabels, Histogram>,
}

impl HttpMetrics {
    pub fn new(telemetry: &Telemetry) -> Self {
        let this = Self {
            requests: Family::default(),
            duration: Family::new_with_constructor(duration_histogram),
        };
        telemetry.register(
            "netcron_http_requests",
            "HTTP requests answered, by method, route and status",
            this.requests.clone(),
        );
        telemetry.register(
            "netcron_http_request_duration_seconds",
            "Time to answer an HTTP request, by method and route",
            this.duration.clone(),
        );
        this
    }
}

/// Middleware recording every request. Applied with `Router::layer`, so the route has been
/// matched when it runs.
pub async fn track(State(metrics): State<HttpMetrics>, request: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(request.method());
    let route = request
        .extensions()
        .get::<MatchedPath>()
        .map_or_else(|| "unmatched".to_owned(), |p| p.as_str().to_owned());
    let response = next.run(request).await;
    metrics
        .duration
        .get_or_create(&RouteLabels {
            method,
            route: route.clone(),
        })
        .observe(started.elapsed().as_secs_f64());
    metrics
        .requests
        .get_or_create(&RequestLabels {
            method,
            route,
            status: response.status().as_u16(),
        })
        .inc();
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn methods_fold_into_a_closed_set() {
        assert_eq!(method_label(&Method::GET), "GET");
        assert_eq!(method_label(&Method::OPTIONS), "OPTIONS");
        assert_eq!(method_label(&Method::TRACE), "other");
        assert_eq!(method_label(&Method::CONNECT), "other");
        let made_up = Method::from_bytes(b"X-EXPLODE-1234").expect("a valid token");
        assert_eq!(method_label(&made_up), "other");
    }
}
