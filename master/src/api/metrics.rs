//! `GET {base}/metrics`: the master's Prometheus metrics (see [`crate::metrics`]), behind
//! the API key like the rest of the API (a Prometheus scrape config sends it as the
//! `X-API-Key` header). Prometheus text 0.0.4 by default; OpenMetrics 1.0.0 when the
//! scraper's `Accept` asks for `application/openmetrics-text`, as Prometheus does.
//!
//! Also the middleware that counts every API answer by route template, method and status,
//! and times it into the latency histogram.

use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{MatchedPath, Request, State};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};

use super::{method_not_allowed, ApiError};
use crate::metrics::{method_label, Format};
use crate::state::Master;

/// Whether an `Accept` header asks for OpenMetrics (any entry of that media type whose
/// quality is not 0).
pub fn wants_openmetrics(accept: Option<&HeaderValue>) -> bool {
    let Some(accept) = accept.and_then(|v| v.to_str().ok()) else {
        return false;
    };
    accept.split(',').any(|entry| {
        let mut parts = entry.split(';').map(str::trim);
        let media = parts.next().unwrap_or("");
        let refused = parts.any(|p| {
            p.strip_prefix("q=")
                .and_then(|q| q.parse::<f32>().ok())
                .is_some_and(|q| q <= 0.0)
        });
        media.eq_ignore_ascii_case("application/openmetrics-text") && !refused
    })
}

/// Prometheus metrics of the master and its instances.
#[utoipa::path(get, path = "/metrics", tag = "master",
    responses(
        (status = 200, description = "Prometheus text format 0.0.4 (`text/plain; version=0.0.4`), or OpenMetrics 1.0.0 (`application/openmetrics-text; version=1.0.0`) when the `Accept` header asks for it. Per instance (labels id, alias, type): traffic counters, connection/session/pool/ping gauges, status, worker restarts, last exit code and uptime; for the master: instances by status, SSE subscribers and dropped events, API requests and latency by route, spawn failures, store write errors, process CPU/memory/fds",
         content_type = "text/plain"),
        (status = 401, description = "Missing or invalid API key", body = crate::model::ErrorBody),
        (status = 405, description = "Method not allowed", body = crate::model::ErrorBody),
    ))]
pub async fn metrics(State(m): State<Arc<Master>>, method: Method, headers: HeaderMap) -> Response {
    if method != Method::GET && method != Method::HEAD {
        return method_not_allowed("GET");
    }
    let format = if wants_openmetrics(headers.get(header::ACCEPT)) {
        Format::OpenMetrics
    } else {
        Format::PrometheusText
    };
    match m.metrics.encode(format) {
        Ok(text) => {
            let mut resp = Response::new(Body::from(text));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static(format.content_type()),
            );
            resp
        }
        Err(_) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            "Failed to encode the metrics; see the master's log",
        )
        .into_response(),
    }
}

/// Counts and times every answer of the API by its route template (`unmatched` for paths
/// no route knows, so scanning bots cannot create series).
pub async fn track(State(m): State<Arc<Master>>, req: Request, next: Next) -> Response {
    let started = Instant::now();
    let method = method_label(req.method());
    let route = req.extensions().get::<MatchedPath>().cloned();
    let resp = next.run(req).await;
    let route = route.map_or_else(|| "unmatched".to_string(), |r| route_label(r.as_str()));
    m.metrics
        .observe_request(&route, method, resp.status().as_u16(), started.elapsed());
    resp
}

/// A route template as a label: axum's `{id}` / `{*id}` captures written `:id`, the form
/// most dashboards show (and braces inside label values trip some text-format parsers).
pub fn route_label(template: &str) -> String {
    let mut out = String::with_capacity(template.len());
    let mut rest = template;
    while let Some(open) = rest.find('{') {
        let Some(close) = rest[open..].find('}') else {
            break;
        };
        out.push_str(&rest[..open]);
        out.push(':');
        out.push_str(rest[open + 1..open + close].trim_start_matches('*'));
        rest = &rest[open + close + 1..];
    }
    out.push_str(rest);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn openmetrics_is_chosen_only_when_asked_for() {
        let prom = "application/openmetrics-text;version=1.0.0,application/openmetrics-text;version=0.0.1;q=0.75,text/plain;version=0.0.4;q=0.5,*/*;q=0.1";
        assert!(wants_openmetrics(Some(&HeaderValue::from_static(prom))));
        assert!(!wants_openmetrics(Some(&HeaderValue::from_static(
            "text/plain;version=0.0.4"
        ))));
        assert!(!wants_openmetrics(Some(&HeaderValue::from_static(
            "application/openmetrics-text;q=0, text/plain"
        ))));
        assert!(!wants_openmetrics(None));
    }

    #[test]
    fn route_templates_become_colon_names() {
        assert_eq!(
            route_label("/api/v1/instances/{*id}"),
            "/api/v1/instances/:id"
        );
        assert_eq!(route_label("/api/v1/docs/{*file}"), "/api/v1/docs/:file");
        assert_eq!(route_label("/api/v1/instances"), "/api/v1/instances");
    }
}
