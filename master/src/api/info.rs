//! `GET {base}/info` (master and host figures) and `POST {base}/info` (set the master alias).

use std::sync::Arc;

use axum::body::Bytes;
use axum::extract::State;
use axum::http::{Method, StatusCode};
use axum::response::{IntoResponse, Response};
use nodepass_proto::url::TlsMode;

use super::{json, method_not_allowed, requests, ApiError};
use crate::model::{ErrorBody, MasterAliasRequest, MasterInfo};
use crate::state::Master;

/// The API version we implement, in the reference's form. Dashboards compare it with
/// 1.10.0 and refuse older masters (spec/CLIENTS.md).
pub const API_VERSION: &str = "v1.14.0";

pub async fn info(State(m): State<Arc<Master>>, method: Method, body: Bytes) -> Response {
    match method {
        Method::GET => get_info(m).await,
        Method::POST => set_master_alias(m, body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        _ => method_not_allowed("GET, POST"),
    }
}

/// Master and host information.
#[utoipa::path(get, path = "/info", tag = "master",
    responses(
        (status = 200, description = "Master and host figures", body = MasterInfo),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
    ))]
pub async fn get_info(m: Arc<Master>) -> Response {
    json(StatusCode::OK, &collect(&m).await)
}

/// Set the master alias (at most 256 bytes; may be empty).
#[utoipa::path(post, path = "/info", tag = "master",
    request_body = MasterAliasRequest,
    responses(
        (status = 200, description = "Master information with the new alias", body = MasterInfo),
        (status = 400, description = "Invalid request body, Master alias exceeds maximum length 256", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "The state could not be saved", body = ErrorBody),
    ))]
pub async fn set_master_alias(m: Arc<Master>, body: Bytes) -> Result<Response, ApiError> {
    let alias = requests::master_alias(&body)?;
    m.set_alias(alias).await?;
    Ok(json(StatusCode::OK, &collect(&m).await))
}

async fn collect(m: &Master) -> MasterInfo {
    let host = crate::sysinfo::collect().await;
    let rec = m.master_record();
    let url = &m.settings.url;
    let tls = match url.effective_tls() {
        TlsMode::Off => "0",
        TlsMode::SelfSigned => "1",
        TlsMode::Files => "2",
    };
    MasterInfo {
        alias: rec.alias,
        arch: crate::sysinfo::go_arch().to_string(),
        build: format!("nodepass {}", env!("CARGO_PKG_VERSION")),
        cpu: host.cpu,
        crt: url.crt.clone().unwrap_or_default(),
        diskr: host.diskr,
        diskw: host.diskw,
        key: url.key.clone().unwrap_or_default(),
        log: url.effective_log().as_str().to_string(),
        mem_total: host.mem_total,
        mem_used: host.mem_used,
        mid: rec.mid,
        name: url.listen.host.clone(),
        netrx: host.netrx,
        nettx: host.nettx,
        os: crate::sysinfo::go_os().to_string(),
        swap_total: host.swap_total,
        swap_used: host.swap_used,
        sysup: host.sysup,
        tls: tls.to_string(),
        uptime: m.started.elapsed().as_secs(),
        ver: API_VERSION.to_string(),
    }
}
