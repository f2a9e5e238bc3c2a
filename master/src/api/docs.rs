//! `GET {base}/openapi.json` (OpenAPI 3.1, derived by utoipa from the handlers and the
//! types they use) and `GET {base}/docs` (Swagger UI served from the binary: the vendored
//! swagger-ui-dist assets of utoipa-swagger-ui, nothing loaded from a CDN). Both are public
//! and read-only: other methods are 405, as on every path (the reference answers any
//! method here).
//!
//! What the derive cannot say is set in `refine`: the shape of an SSE event, the `""`
//! run state and kind of the API key record, and value limits the handlers enforce; the
//! document is checked against the running server with schemathesis (README, Security).

use std::sync::Arc;

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use utoipa::openapi::security::{ApiKey, ApiKeyValue, SecurityScheme};
use utoipa::openapi::server::Server;
use utoipa::{Modify, OpenApi};
use utoipa_swagger_ui::Config;

use super::ApiError;
use crate::model::*;

struct ApiKeyAuth;

impl Modify for ApiKeyAuth {
    fn modify(&self, openapi: &mut utoipa::openapi::OpenApi) {
        let components = openapi.components.get_or_insert_with(Default::default);
        components.add_security_scheme(
            "ApiKeyAuth",
            SecurityScheme::ApiKey(ApiKey::Header(ApiKeyValue::with_description(
                "X-API-Key",
                "The API key: printed in the master's log at start; the `url` of the `********` instance",
            ))),
        );
    }
}

#[derive(OpenApi)]
#[openapi(
    info(
        title = "NodePass API",
        description = "API for managing NodePass server and client instances",
        version = "v1"
    ),
    paths(
        super::instances::list_instances,
        super::instances::create_instance,
        super::instances::get_instance,
        super::instances::patch_instance,
        super::instances::put_instance,
        super::instances::delete_instance,
        super::events::events,
        super::info::get_info,
        super::info::set_master_alias,
        super::tcping::probe_target,
        super::metrics::metrics,
        openapi_doc,
        docs_page,
    ),
    components(schemas(
        Instance, Meta, Peer, PeerKind, PeerRequest, InstanceStatus, InstanceKind, EventKind, InstanceEvent, ErrorBody, CreateInstanceRequest,
        PutInstanceRequest, PatchInstanceRequest, MetaPatch, MasterAliasRequest, MasterInfo,
        TcpingResult
    )),
    modifiers(&ApiKeyAuth),
    security(("ApiKeyAuth" = [])),
    tags(
        (name = "instances", description = "Tunnel instances, each run as its own worker process"),
        (name = "events", description = "Server-Sent Events"),
        (name = "master", description = "The master itself"),
        (name = "docs", description = "This document and its viewer (no API key needed)"),
    )
)]
pub struct ApiDoc;

/// This OpenAPI document (no API key needed).
#[utoipa::path(get, path = "/openapi.json", tag = "docs", security(()),
    responses((status = 200, description = "OpenAPI 3.1 document", content_type = "application/json")))]
#[allow(dead_code)]
fn openapi_doc() {}

/// Swagger UI for this document (no API key needed; served from the binary).
#[utoipa::path(get, path = "/docs", tag = "docs", security(()),
    responses((status = 200, description = "HTML page", content_type = "text/html")))]
#[allow(dead_code)]
fn docs_page() {}

/// The document with its server URL set to `base`.
pub fn openapi_doc_for(base: &str) -> utoipa::openapi::OpenApi {
    let mut doc = ApiDoc::openapi();
    // Our own name and version, known only at build time (the derive takes literals).
    doc.info.description = Some(format!(
        "API for managing NodePass server and client instances (nodepass {}, compatible with NodePass {})",
        env!("CARGO_PKG_VERSION"),
        nodepass_proto::REFERENCE_VERSION
    ));
    doc.servers = Some(vec![Server::new(base)]);
    doc
}

/// The rendered document.
pub fn openapi_json(base: &str) -> Vec<u8> {
    let mut doc = serde_json::to_value(openapi_doc_for(base)).unwrap_or_default();
    refine(&mut doc);
    serde_json::to_vec_pretty(&doc).unwrap_or_else(|_| b"{}".to_vec())
}

/// Facts about the wire that utoipa's derive cannot express, set on the rendered document.
fn refine(doc: &mut serde_json::Value) {
    use serde_json::json;
    // OpenAPI 3.1 without `itemSchema`: the schema of an event stream describes one event
    // (its `event` and `data` fields); `data` is JSON text holding an InstanceEvent.
    if let Some(sse) =
        doc.pointer_mut("/paths/~1events/get/responses/200/content/text~1event-stream")
    {
        sse["schema"] = json!({
            "type": "object",
            "required": ["event", "data"],
            "properties": {
                "event": { "type": "string", "const": "instance" },
                "data": {
                    "type": "string",
                    "contentMediaType": "application/json",
                    "contentSchema": { "$ref": "#/components/schemas/InstanceEvent" }
                }
            }
        });
    }
    // The API key record's `type` and `status` are "" (serde renames; the derive does not
    // follow an empty rename).
    for name in ["InstanceStatus", "InstanceKind"] {
        if let Some(values) = doc
            .pointer_mut(&format!("/components/schemas/{name}/enum"))
            .and_then(|v| v.as_array_mut())
        {
            for v in values.iter_mut() {
                if v == "notapplicable" {
                    *v = json!("");
                }
            }
        }
    }
    // `target` must not be empty (400 "Target address required").
    if let Some(params) = doc
        .pointer_mut("/paths/~1tcping/get/parameters")
        .and_then(|v| v.as_array_mut())
    {
        for p in params.iter_mut().filter(|p| p["name"] == "target") {
            p["schema"]["minLength"] = json!(1);
        }
    }
    // The id a create answers with names the instance for the single-instance operations.
    if let Some(created) = doc.pointer_mut("/paths/~1instances/post/responses/201") {
        let by_id =
            |op: &str| json!({ "operationId": op, "parameters": { "id": "$response.body#/id" } });
        created["links"] = json!({
            "GetInstance": by_id("get_instance"),
            "PatchInstance": by_id("patch_instance"),
            "PutInstance": by_id("put_instance"),
            "DeleteInstance": by_id("delete_instance"),
        });
    }
    // Instance URLs of the accepted form, for readers and for generated requests: the
    // pattern is proto's (every URL it describes parses; proto/tests/url_props.rs), the
    // length the API's limit.
    let pattern = nodepass_proto::url::url_pattern();
    for name in ["CreateInstanceRequest", "PutInstanceRequest"] {
        if let Some(url) = doc.pointer_mut(&format!("/components/schemas/{name}/properties/url")) {
            url["pattern"] = json!(pattern);
            url["maxLength"] = json!(crate::model::MAX_URL_LEN);
            url["examples"] = json!([
                "server://127.0.0.1:10101/127.0.0.1:8080",
                "client://127.0.0.1:10101/127.0.0.1:8081?mode=2",
            ]);
        }
    }
    // These strings may be null in a request, read as "" (as Go's decoder leaves the string
    // empty); model.rs reads them with `null_is_empty`.
    for (name, field) in [
        ("MasterAliasRequest", "alias"),
        ("CreateInstanceRequest", "alias"),
        ("PatchInstanceRequest", "alias"),
        ("PatchInstanceRequest", "action"),
        ("PeerRequest", "sid"),
        ("PeerRequest", "type"),
        ("PeerRequest", "alias"),
    ] {
        if let Some(prop) =
            doc.pointer_mut(&format!("/components/schemas/{name}/properties/{field}"))
        {
            prop["type"] = json!(["string", "null"]);
            if let Some(values) = prop.get_mut("enum").and_then(|v| v.as_array_mut()) {
                values.push(serde_json::Value::Null);
            }
        }
    }
    // utoipa reads `#[serde(rename = "")]` as no rename: the empty kind is "", as sent.
    if let Some(kinds) = doc.pointer_mut("/components/schemas/PeerKind/enum") {
        *kinds = json!(["", "0", "1", "2"]);
    }
    // A peer's type in a request is one of the kinds (or empty, or null).
    if let Some(kind) = doc.pointer_mut("/components/schemas/PeerRequest/properties/type") {
        kind["enum"] = json!(["", "0", "1", "2", null]);
    }
    // PATCH, like the reference, answers the unchanged instance for a missing body or one
    // that is not a JSON object; only a field of the wrong type is a 400.
    if let Some(body) = doc.pointer_mut("/paths/~1instances~1{id}/patch/requestBody") {
        body["required"] = json!(false);
        if let Some(schema) = body.pointer_mut("/content/application~1json/schema") {
            let object = schema.take();
            *schema = json!({ "anyOf": [
                object,
                { "not": { "type": "object" }, "description": "Changes nothing" }
            ]});
        }
    }
}

pub fn swagger_config(base: &str) -> Config<'static> {
    Config::new([format!("{base}/openapi.json")])
}

pub async fn serve_openapi(doc: Arc<Vec<u8>>) -> Response {
    let mut resp = Response::new(Body::from(doc.as_ref().clone()));
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    resp
}

fn file_response(config: Arc<Config<'static>>, tail: &str, base_href: Option<&str>) -> Response {
    match utoipa_swagger_ui::serve(tail, config) {
        Ok(Some(file)) => {
            let bytes = match base_href {
                // Served at `{base}/docs` (no trailing slash): make the page's relative asset
                // links resolve under `{base}/docs/`.
                Some(href) => String::from_utf8_lossy(&file.bytes)
                    .replacen("<head>", &format!("<head>\n    <base href=\"{href}\">"), 1)
                    .into_bytes(),
                None => file.bytes.into_owned(),
            };
            let mut resp = Response::new(Body::from(bytes));
            if let Ok(v) = HeaderValue::from_str(&file.content_type) {
                resp.headers_mut().insert(header::CONTENT_TYPE, v);
            }
            resp
        }
        Ok(None) => ApiError::new(
            StatusCode::NOT_FOUND,
            "No such file of the API documentation",
        )
        .into_response(),
        Err(e) => ApiError::new(
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("Cannot render the API documentation: {e}"),
        )
        .into_response(),
    }
}

/// `{base}/docs`: the Swagger UI page; `href` is `{base}/docs/`.
pub async fn serve_index(config: Arc<Config<'static>>, href: Arc<String>) -> Response {
    file_response(config, "index.html", Some(&href))
}

/// `{base}/docs/<file>`: the page's assets.
pub async fn serve_file(config: Arc<Config<'static>>, req: Request) -> Response {
    let path = req.uri().path();
    let tail = path
        .rsplit_once("/docs/")
        .map(|(_, t)| t.to_string())
        .unwrap_or_default();
    file_response(config, &tail, None)
}
