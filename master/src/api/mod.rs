//! The HTTP surface under `{prefix}/v1`, shaped like the reference master's Go ServeMux:
//! exact paths for the collections, the `instances/` subtree for single instances, CORS
//! headers on every handled answer, OPTIONS answered 200 before authentication, the API key
//! checked (in constant time) before method and id checks, and Go's plain-text
//! `404 page not found` (without CORS headers) for anything else.
//!
//! Handlers are thin: they parse the request into typed values ([`requests`]), call
//! [`crate::state::Master`], and render bare JSON plus `\n` exactly as Go's `json.Encoder`
//! does; errors are [`ApiError`]s, returned with `?`.

pub mod console;
pub mod docs;
pub mod error;
pub mod events;
pub mod info;
pub mod instances;
pub mod metrics;
pub mod requests;
pub mod tcping;

use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{header, HeaderName, HeaderValue, Method, StatusCode};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::any;
use axum::Router;

pub use self::error::ApiError;
use crate::state::Master;

/// Builds the router for `master`.
pub fn router(master: Arc<Master>) -> Router {
    let base = master.settings.url.api_base();
    let openapi = Arc::new(docs::openapi_json(&base));
    let swagger = Arc::new(docs::swagger_config(&base));
    let protected = Router::new()
        .route(&format!("{base}/instances"), any(instances::collection))
        .route(&format!("{base}/instances/"), any(instances::item))
        .route(&format!("{base}/instances/{{*id}}"), any(instances::item))
        .route(&format!("{base}/events"), any(events::events))
        .route(&format!("{base}/info"), any(info::info))
        .route(&format!("{base}/tcping"), any(tcping::tcping))
        .route(&format!("{base}/metrics"), any(metrics::metrics))
        .route_layer(middleware::from_fn_with_state(master.clone(), guard));
    let public = Router::new()
        .route(
            &format!("{base}/openapi.json"),
            any(move || docs::serve_openapi(openapi.clone())),
        )
        .route(&format!("{base}/docs"), {
            let s = swagger.clone();
            let href = Arc::new(format!("{base}/docs/"));
            any(move || docs::serve_index(s.clone(), href.clone()))
        })
        .route(&format!("{base}/docs/{{*file}}"), {
            let s = swagger.clone();
            any(move |req: Request| docs::serve_file(s.clone(), req))
        })
        .route_layer(middleware::from_fn(cors_only));
    let prefix = master.settings.url.prefix.clone();
    let console_page = Arc::new(format!("{prefix}/console/"));
    let console = Router::new()
        .route(&format!("{prefix}/"), {
            let to = console_page.clone();
            any(move || async move { console::redirect(&to) })
        })
        .route(&format!("{prefix}/console"), {
            let to = console_page.clone();
            any(move || async move { console::redirect(&to) })
        })
        .route(&format!("{prefix}/console/"), any(console::serve))
        .route(&format!("{prefix}/console/{{*file}}"), any(console::serve))
        .route_layer(middleware::from_fn(get_only));
    protected
        .merge(public)
        .merge(console)
        .fallback(not_found)
        // Outermost, so refused (401) and unknown (404) requests are counted too.
        .layer(middleware::from_fn_with_state(
            master.clone(),
            metrics::track,
        ))
        .with_state(master)
}

fn add_cors(resp: &mut Response) {
    let h = resp.headers_mut();
    h.insert(
        header::ACCESS_CONTROL_ALLOW_ORIGIN,
        HeaderValue::from_static("*"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_METHODS,
        HeaderValue::from_static("GET, PATCH, POST, PUT, DELETE, OPTIONS"),
    );
    h.insert(
        header::ACCESS_CONTROL_ALLOW_HEADERS,
        HeaderValue::from_static("Content-Type, Authorization, X-API-Key, Cache-Control"),
    );
}

fn preflight() -> Response {
    let mut resp = Response::new(Body::empty());
    add_cors(&mut resp);
    resp
}

static X_API_KEY: HeaderName = HeaderName::from_static("x-api-key");

/// CORS, OPTIONS, then the API key, for the protected routes.
async fn guard(State(master): State<Arc<Master>>, req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        return preflight();
    }
    let given = req.headers().get(&X_API_KEY).map(HeaderValue::as_bytes);
    let mut resp = match given.filter(|g| !g.is_empty()) {
        None => ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized: API key required")
            .into_response(),
        Some(key) if !master.key_matches(key) => {
            ApiError::new(StatusCode::UNAUTHORIZED, "Unauthorized: Invalid API key").into_response()
        }
        Some(_) => next.run(req).await,
    };
    add_cors(&mut resp);
    resp
}

/// CORS and OPTIONS for the public routes, which are read-only: any other method is 405,
/// as on every other path.
async fn cors_only(req: Request, next: Next) -> Response {
    if req.method() == Method::OPTIONS {
        return preflight();
    }
    let mut resp = if req.method() == Method::GET {
        next.run(req).await
    } else {
        method_not_allowed("GET")
    };
    add_cors(&mut resp);
    resp
}

/// The console's pages: GET only, no CORS (a page of this origin needs none).
async fn get_only(req: Request, next: Next) -> Response {
    if req.method() == Method::GET || req.method() == Method::HEAD {
        next.run(req).await
    } else {
        method_not_allowed("GET")
    }
}

/// Go's `http.NotFound`.
async fn not_found() -> Response {
    let mut resp = Response::new(Body::from("404 page not found\n"));
    *resp.status_mut() = StatusCode::NOT_FOUND;
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    resp
}

/// A JSON answer from already encoded bytes (a `\n` is appended, as Go's encoder does).
pub fn json_bytes(status: StatusCode, mut body: Vec<u8>) -> Response {
    body.push(b'\n');
    let mut resp = Response::new(Body::from(body));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

/// A JSON answer.
pub fn json<T: serde::Serialize>(status: StatusCode, value: &T) -> Response {
    json_bytes(status, crate::gojson::to_vec(value))
}

/// 405 with the reference's message, plus the `Allow` header RFC 9110 asks for.
pub fn method_not_allowed(allow: &'static str) -> Response {
    let mut resp =
        ApiError::new(StatusCode::METHOD_NOT_ALLOWED, "Method not allowed").into_response();
    resp.headers_mut()
        .insert(header::ALLOW, HeaderValue::from_static(allow));
    resp
}
