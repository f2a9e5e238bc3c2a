//! `/instances` and `/instances/{id}`: list, create, get, patch, put, delete.
//!
//! The route handlers dispatch on the method as the reference does (id checks before the
//! method check on `/instances/{id}`); each operation is its own function so utoipa can
//! document it.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State;
use axum::http::{Method, StatusCode, Uri};
use axum::response::{IntoResponse, Response};

use super::requests::{self, PatchRequest};
use super::{json, json_bytes, method_not_allowed, ApiError};
use crate::model::*;
use crate::state::{Master, StateError};

/// `{base}/instances`.
pub async fn collection(State(m): State<Arc<Master>>, method: Method, body: Bytes) -> Response {
    match method {
        Method::GET => list_instances(m).await,
        Method::POST => create_instance(m, body)
            .await
            .unwrap_or_else(IntoResponse::into_response),
        _ => method_not_allowed("GET, POST"),
    }
}

/// `{base}/instances/` and `{base}/instances/{id}`.
pub async fn item(State(m): State<Arc<Master>>, method: Method, uri: Uri, body: Bytes) -> Response {
    let prefix = format!("{}/instances/", m.settings.url.api_base());
    let id = uri
        .path()
        .strip_prefix(prefix.as_str())
        .unwrap_or_default()
        .to_string();
    if id.is_empty() || id == "/" {
        return ApiError::bad("Instance ID is required").into_response();
    }
    if let Err(e) = m.get(Target::parse(&id)) {
        return ApiError::from(e).into_response();
    }
    let answer = match method {
        Method::GET => get_instance(m, id).await,
        Method::PATCH => patch_instance(m, id, body).await,
        Method::PUT => put_instance(m, id, body).await,
        Method::DELETE => delete_instance(m, id).await,
        _ => return method_not_allowed("GET, PATCH, PUT, DELETE"),
    };
    answer.unwrap_or_else(IntoResponse::into_response)
}

/// List every instance, the API key record `********` included.
#[utoipa::path(get, path = "/instances", tag = "instances",
    responses(
        (status = 200, description = "All instances", body = [Instance]),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 405, description = "Method not allowed", body = ErrorBody),
    ))]
pub async fn list_instances(m: Arc<Master>) -> Response {
    let t = std::time::Instant::now();
    let body = m.list_json();
    tracing::debug!("GET /instances: {} bytes in {:?}", body.len(), t.elapsed());
    json_bytes(StatusCode::OK, body)
}

/// Create an instance; it starts at once with `restart: true`.
#[utoipa::path(post, path = "/instances", tag = "instances",
    request_body = CreateInstanceRequest,
    responses(
        (status = 201, description = "Created (status `stopped` until the worker is ready)", body = Instance),
        (status = 400, description = "Invalid request body (with the field's name for a value of the wrong JSON type), Invalid URL format, Invalid URL scheme", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 500, description = "The state could not be saved", body = ErrorBody),
    ))]
pub async fn create_instance(m: Arc<Master>, body: Bytes) -> Result<Response, ApiError> {
    let (alias, url) = requests::create(&body, &m.settings.inherited)?;
    let inst = m.create(alias, url).await?;
    Ok(json(StatusCode::CREATED, &inst))
}

/// Get one instance.
#[utoipa::path(get, path = "/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id (8 hex characters) or `********`")),
    responses(
        (status = 200, description = "The instance", body = Instance),
        (status = 400, description = "Instance ID is required", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Instance not found", body = ErrorBody),
    ))]
pub async fn get_instance(m: Arc<Master>, id: String) -> Result<Response, ApiError> {
    Ok(json(StatusCode::OK, &m.get(Target::parse(&id))?))
}

/// Change alias, run state (`action`), restart policy or metadata. On `********`, the
/// action `restart` regenerates the API key and closes every event stream.
#[utoipa::path(patch, path = "/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id or `********`")),
    request_body = PatchInstanceRequest,
    responses(
        (status = 200, description = "The instance after the change (an undecodable body changes nothing)", body = Instance),
        (status = 400, description = "A field of the wrong JSON type (the text names it), Invalid action, a value too long, a peer.sid that is not a UUID v4, a peer.type not 0/1/2, a repeated tag key", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 404, description = "Instance not found", body = ErrorBody),
        (status = 500, description = "The state could not be saved", body = ErrorBody),
        (status = 503, description = "Instance busy: earlier actions are still being carried out (nothing changed; retry)", body = ErrorBody),
    ))]
pub async fn patch_instance(m: Arc<Master>, id: String, body: Bytes) -> Result<Response, ApiError> {
    let target = Target::parse(&id);
    let inst = match (requests::patch_body(&body)?, target) {
        // An undecodable body changes nothing and answers the instance (as the reference).
        (PatchRequest::Nothing, _) => m.get(target)?,
        // On the key record only `restart` acts; nothing else is even checked.
        (PatchRequest::Body(req), Target::ApiKey) => {
            if Action::parse(&req.action) == Some(Action::Restart) {
                m.regenerate_key().await?
            } else {
                m.get(target)?
            }
        }
        (PatchRequest::Body(req), Target::Instance(id)) => {
            m.patch(id, requests::validate_patch(req)?).await?
        }
    };
    Ok(json(StatusCode::OK, &inst))
}

/// Replace the URL and restart the instance (alias, meta, restart policy and traffic totals
/// are kept).
#[utoipa::path(put, path = "/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    request_body = PutInstanceRequest,
    responses(
        (status = 200, description = "The instance with its new URL", body = Instance),
        (status = 400, description = "Invalid request body (with the field's name for a value of the wrong JSON type), Invalid URL format, Invalid URL scheme", body = ErrorBody),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Forbidden: API Key", body = ErrorBody),
        (status = 404, description = "Instance not found", body = ErrorBody),
        (status = 409, description = "Instance URL conflict (the URL is the current one)", body = ErrorBody),
        (status = 500, description = "The state could not be saved", body = ErrorBody),
        (status = 503, description = "Instance busy: earlier actions are still being carried out (nothing changed; retry)", body = ErrorBody),
    ))]
pub async fn put_instance(m: Arc<Master>, id: String, body: Bytes) -> Result<Response, ApiError> {
    let Target::Instance(id) = Target::parse(&id) else {
        return Err(StateError::KeyRecordFixed.into());
    };
    let url = requests::put(&body, &m.settings.inherited)?;
    Ok(json(StatusCode::OK, &m.put(id, url).await?))
}

/// Stop and remove an instance.
#[utoipa::path(delete, path = "/instances/{id}", tag = "instances",
    params(("id" = String, Path, description = "Instance id")),
    responses(
        (status = 204, description = "Deleted"),
        (status = 401, description = "Missing or invalid API key", body = ErrorBody),
        (status = 403, description = "Forbidden: API Key", body = ErrorBody),
        (status = 404, description = "Instance not found", body = ErrorBody),
        (status = 500, description = "The state could not be saved", body = ErrorBody),
        (status = 503, description = "Instance busy: earlier actions are still being carried out (nothing changed; retry)", body = ErrorBody),
    ))]
pub async fn delete_instance(m: Arc<Master>, id: String) -> Result<Response, ApiError> {
    let Target::Instance(id) = Target::parse(&id) else {
        return Err(StateError::KeyRecordFixed.into());
    };
    m.delete(id).await?;
    let mut resp = Response::new(Body::empty());
    *resp.status_mut() = StatusCode::NO_CONTENT;
    Ok(resp)
}
