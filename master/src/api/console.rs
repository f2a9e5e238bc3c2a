//! The web console: `GET {prefix}/console/` and its assets, all embedded in the binary at
//! compile time (hand-written HTML, CSS and JavaScript under `master/console/`; nothing
//! from a CDN, no build step). `{prefix}/` and `{prefix}/console` redirect to it.
//!
//! The page is public (it holds no data); it asks for the API key and sends it as
//! `X-API-Key` to the same `{prefix}/v1` API anyone else uses, so it rides on the API's own
//! TLS and authentication. Every answer carries a strict Content-Security-Policy: scripts,
//! styles and connections from this origin only, no inline script or style, no framing.
//!
//! `params.json` is the URL parameter table of `nodepass_proto::url::params` (names, roles,
//! defaults, accepted values), produced at run time from the same `PARAMS` the URL parser
//! walks, so the console's create form cannot drift from the grammar.

use axum::body::Body;
use axum::extract::Request;
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::Response;
use nodepass_proto::url::PARAMS;
use serde::Serialize;

const INDEX: &str = include_str!("../../console/index.html");
const APP_JS: &str = include_str!("../../console/app.js");
const APP_CSS: &str = include_str!("../../console/app.css");

/// The policy on every console answer.
pub const CSP: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; form-action 'none'; base-uri 'none'; \
     frame-ancestors 'none'";

/// One row of `params.json`.
#[derive(Serialize)]
struct ParamRow {
    name: &'static str,
    server: bool,
    client: bool,
    /// The canonical default text, or null when the parameter has none.
    default: Option<String>,
    /// What a valid value looks like (the end of the parser's error for any other).
    expected: &'static str,
    /// The values of a closed list (for a select), from the parser's table.
    choices: &'static [&'static str],
}

fn params_json() -> Vec<u8> {
    let rows: Vec<ParamRow> = PARAMS
        .iter()
        .filter(|p| p.roles.server || p.roles.client)
        .map(|p| ParamRow {
            name: p.name,
            server: p.roles.server,
            client: p.roles.client,
            default: p.default_text(),
            expected: p.expected,
            choices: p.choices,
        })
        .collect();
    serde_json::to_vec(&rows).unwrap_or_else(|_| b"[]".to_vec())
}

fn with_headers(status: StatusCode, content_type: &'static str, body: Body) -> Response {
    let mut resp = Response::new(body);
    *resp.status_mut() = status;
    let h = resp.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static(content_type));
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(CSP),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    resp
}

/// A 308 to `location` (the console's own page).
pub fn redirect(location: &str) -> Response {
    let mut resp = with_headers(
        StatusCode::PERMANENT_REDIRECT,
        "text/plain; charset=utf-8",
        Body::from("the web console is at ".to_string() + location + "\n"),
    );
    if let Ok(v) = HeaderValue::from_str(location) {
        resp.headers_mut().insert(header::LOCATION, v);
    }
    resp
}

/// `{prefix}/console/` and `{prefix}/console/<file>`.
pub async fn serve(req: Request) -> Response {
    let path = req.uri().path();
    let file = path.rsplit_once("/console/").map_or("", |(_, t)| t);
    match file {
        "" | "index.html" => with_headers(
            StatusCode::OK,
            "text/html; charset=utf-8",
            Body::from(INDEX),
        ),
        "app.js" => with_headers(
            StatusCode::OK,
            "text/javascript; charset=utf-8",
            Body::from(APP_JS),
        ),
        "app.css" => with_headers(
            StatusCode::OK,
            "text/css; charset=utf-8",
            Body::from(APP_CSS),
        ),
        "params.json" => with_headers(
            StatusCode::OK,
            "application/json",
            Body::from(params_json()),
        ),
        _ => with_headers(
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            Body::from("404 page not found\n"),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn params_json_is_the_parser_table() {
        let rows: serde_json::Value =
            serde_json::from_slice(&params_json()).expect("params.json is JSON");
        let rows = rows.as_array().expect("an array");
        let names: Vec<&str> = rows.iter().filter_map(|r| r["name"].as_str()).collect();
        let want: Vec<&str> = nodepass_proto::url::TUNNEL_PARAMS.to_vec();
        assert_eq!(names, want);
        let find = |n: &str| rows.iter().find(|r| r["name"] == n).expect(n).clone();
        assert_eq!(find("tls")["choices"], serde_json::json!(["0", "1", "2"]));
        assert_eq!(
            find("log")["choices"],
            serde_json::json!(["none", "debug", "info", "warn", "error", "event"])
        );
        assert_eq!(
            find("type")["choices"],
            serde_json::json!(["0", "1", "2", "3"])
        );
        assert_eq!(find("min")["choices"], serde_json::json!([]));
        assert_eq!(find("block")["choices"], serde_json::json!([]));
        assert_eq!(find("read")["choices"], serde_json::json!([]));
        assert_eq!(find("min")["default"], "64");
        assert_eq!(find("min")["client"], true);
        assert_eq!(find("min")["server"], false);
        assert_eq!(find("crt")["default"], serde_json::Value::Null);
    }
}
