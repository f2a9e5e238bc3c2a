//! `GET {base}/tcping?target=host:port`: one TCP connect with a timeout of
//! NP_REPORT_INTERVAL. At most 10 probes run at once; a probe waits up to 1 s for a slot,
//! else answers `too many requests` (as the reference).

use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::extract::rejection::QueryRejection;
use axum::extract::{Query, State};
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use tokio::net::TcpStream;

use super::{json, method_not_allowed, ApiError};
use crate::model::{ErrorBody, TcpingResult};
use crate::state::Master;

pub async fn tcping(
    State(m): State<Arc<Master>>,
    method: Method,
    query: Result<Query<Vec<(String, String)>>, QueryRejection>,
) -> Response {
    if method != Method::GET {
        return method_not_allowed("GET");
    }
    let target = query
        .ok()
        .and_then(|Query(q)| q.into_iter().find(|(k, _)| k == "target").map(|(_, v)| v))
        .unwrap_or_default();
    if target.is_empty() {
        return ApiError::bad("Target address required").into_response();
    }
    probe_target(m, target).await
}

/// Probe a TCP address.
#[utoipa::path(get, path = "/tcping", tag = "master",
    params(("target" = String, Query, description = "host:port to connect to")),
    responses(
        (status = 200, description = "The probe's result (also when it failed)", body = TcpingResult),
        (status = 400, description = "Target address required", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
    ))]
pub async fn probe_target(m: Arc<Master>, target: String) -> Response {
    let result = probe(&m, target).await;
    json(StatusCode::OK, &result)
}

async fn probe(m: &Master, target: String) -> TcpingResult {
    let mut result = TcpingResult {
        target,
        connected: false,
        latency: 0,
        error: None,
    };
    let permit = match tokio::time::timeout(Duration::from_secs(1), m.tcping_slots.acquire()).await
    {
        Ok(Ok(p)) => p,
        _ => {
            result.error = Some("too many requests".to_string());
            return result;
        }
    };
    let timeout = m.settings.tunables.report_interval;
    let start = Instant::now();
    match tokio::time::timeout(timeout, TcpStream::connect(result.target.as_str())).await {
        Ok(Ok(_stream)) => {
            result.connected = true;
            result.latency = start.elapsed().as_millis() as i64;
        }
        Ok(Err(e)) => result.error = Some(go_dial_error(&result.target, &e)),
        Err(_) => result.error = Some(format!("dial tcp {}: i/o timeout", result.target)),
    }
    drop(permit);
    result
}

/// Words an error the way Go's dialer does (`dial tcp 127.0.0.1:1: connect: connection
/// refused`), which dashboards show to people.
fn go_dial_error(target: &str, e: &std::io::Error) -> String {
    match e.raw_os_error() {
        Some(code) => {
            let desc = nix::errno::Errno::from_raw(code).desc();
            let mut chars = desc.chars();
            let lower = match chars.next() {
                Some(c) => c.to_lowercase().collect::<String>() + chars.as_str(),
                None => String::new(),
            };
            format!("dial tcp {target}: connect: {lower}")
        }
        None => {
            let host = target.rsplit_once(':').map_or(target, |(h, _)| h);
            format!("dial tcp: lookup {host}: {e}")
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dial_errors_read_like_go() {
        let e = std::io::Error::from_raw_os_error(libc::ECONNREFUSED);
        assert_eq!(
            go_dial_error("127.0.0.1:1", &e),
            "dial tcp 127.0.0.1:1: connect: connection refused"
        );
    }
}
