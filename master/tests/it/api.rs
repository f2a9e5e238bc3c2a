//! The master's HTTP API over real HTTP against an in-process master with a temporary sled
//! directory: authentication on every protected route, CORS and OPTIONS, method and id
//! checks, meta validation, key regeneration, /info, /tcping, the OpenAPI document, the
//! Swagger UI served offline, SSE read as a client, and state surviving a restart.
//! (Instances here point at a worker binary that does not exist: these tests are about the
//! API; running tunnels are covered by the end-to-end tests in the workspace's tests/.)

use std::time::Duration;

use crate::common::TestMaster;
use nodepass_testkit::api::{request, Sse};
use serde_json::Value;

const CLIENT_URL: &str = "client://127.0.0.1:29131/127.0.0.1:41001?log=info";

fn create(tm: &TestMaster, url: &str) -> Value {
    let r = tm.api.call(
        "POST",
        "/instances",
        Some(&format!(r#"{{"alias":"t","url":"{url}"}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    r.json()
}

fn assert_cors(r: &nodepass_testkit::api::Resp, what: &str) {
    assert_eq!(r.header("access-control-allow-origin"), Some("*"), "{what}");
    assert_eq!(
        r.header("access-control-allow-methods"),
        Some("GET, PATCH, POST, PUT, DELETE, OPTIONS"),
        "{what}"
    );
    assert_eq!(
        r.header("access-control-allow-headers"),
        Some("Content-Type, Authorization, X-API-Key, Cache-Control"),
        "{what}"
    );
}

#[test]
fn every_protected_route_needs_the_key_and_options_do_not() {
    let tm = TestMaster::start();
    let id = create(&tm, CLIENT_URL)["id"].as_str().unwrap().to_string();
    let base = tm.api.base.clone();
    let routes = [
        ("GET", format!("{base}/instances")),
        ("POST", format!("{base}/instances")),
        ("GET", format!("{base}/instances/{id}")),
        ("PATCH", format!("{base}/instances/{id}")),
        ("PUT", format!("{base}/instances/{id}")),
        ("DELETE", format!("{base}/instances/{id}")),
        ("GET", format!("{base}/instances/")),
        ("GET", format!("{base}/events")),
        ("GET", format!("{base}/info")),
        ("POST", format!("{base}/info")),
        ("GET", format!("{base}/tcping?target=127.0.0.1:1")),
        ("GET", format!("{base}/metrics")),
    ];
    for (method, path) in &routes {
        let what = format!("{method} {path}");
        let r = request(tm.api.addr, method, path, &[], None);
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(
            r.text(),
            "{\"error\":\"Unauthorized: API key required\"}\n",
            "{what}"
        );
        assert_cors(&r, &what);
        let r = request(tm.api.addr, method, path, &[("X-API-Key", "nope")], None);
        assert_eq!(r.status, 401, "{what}");
        assert_eq!(
            r.text(),
            "{\"error\":\"Unauthorized: Invalid API key\"}\n",
            "{what}"
        );
        // The preflight a browser sends: no key, 200, empty, CORS headers.
        let r = request(
            tm.api.addr,
            "OPTIONS",
            path,
            &[
                ("Origin", "http://dashboard.example"),
                ("Access-Control-Request-Method", method),
                (
                    "Access-Control-Request-Headers",
                    "content-type,x-api-key,cache-control",
                ),
            ],
            None,
        );
        assert_eq!(r.status, 200, "OPTIONS {path}");
        assert_eq!(r.header("content-length"), Some("0"));
        assert!(r.body.is_empty());
        assert_cors(&r, &format!("OPTIONS {path}"));
    }
    // Public routes need no key; they are read-only (other methods: 405, tests/api_edge.rs).
    for path in [format!("{base}/openapi.json"), format!("{base}/docs")] {
        for (method, status) in [("GET", 200), ("POST", 405)] {
            let r = request(tm.api.addr, method, &path, &[], None);
            assert_eq!(r.status, status, "{method} {path}");
            assert_cors(&r, &path);
        }
    }
    // Anything else: Go's plain 404 without CORS headers.
    for path in [
        "/",
        "/api/v1",
        "/api/v1/info/",
        "/api/v2/info",
        "/api/v1/instancesx",
    ] {
        let r = request(
            tm.api.addr,
            "GET",
            path,
            &[("X-API-Key", &tm.api.key)],
            None,
        );
        assert_eq!(r.status, 404, "{path}");
        assert_eq!(r.text(), "404 page not found\n");
        assert_eq!(r.header("content-type"), Some("text/plain; charset=utf-8"));
        assert_eq!(r.header("access-control-allow-origin"), None);
    }
}

#[test]
fn methods_ids_and_bodies() {
    let tm = TestMaster::start();
    let api = &tm.api;
    for (m, p) in [
        ("DELETE", "/instances"),
        ("PUT", "/instances"),
        ("POST", "/events"),
        ("DELETE", "/info"),
        ("POST", "/tcping?target=x:1"),
    ] {
        let r = api.call(m, p, None);
        assert_eq!(r.status, 405, "{m} {p}");
        assert_eq!(r.text(), "{\"error\":\"Method not allowed\"}\n");
        assert!(
            r.header("allow").is_some_and(|a| a.contains("GET")),
            "{m} {p}"
        );
    }
    let r = api.get("/instances/");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "Instance ID is required");
    // The id is checked before the method.
    let r = api.call("POST", "/instances/deadbeef", None);
    assert_eq!(r.status, 404);
    assert_eq!(r.json()["error"], "Instance not found");
    let id = create(&tm, CLIENT_URL)["id"].as_str().unwrap().to_string();
    let r = api.call("POST", &format!("/instances/{id}"), None);
    assert_eq!(r.status, 405);
    // A URL our grammar refuses gets a clear reason.
    let r = api.call(
        "POST",
        "/instances",
        Some(r#"{"url":"client://127.0.0.1:1/127.0.0.1:2?min=lots"}"#),
    );
    assert_eq!(r.status, 400);
    let msg = r.json()["error"].as_str().unwrap().to_string();
    assert!(
        msg.starts_with("Invalid URL format: ") && msg.contains("min"),
        "{msg}"
    );
    let r = api.call(
        "POST",
        "/instances",
        Some(r#"{"url":"master://127.0.0.1:9/api"}"#),
    );
    assert_eq!(r.json()["error"], "Invalid URL scheme");
    // Instance ids are 8 lowercase hex characters; new instances restart by default.
    let v = create(&tm, "server://:10101/127.0.0.1:8080");
    let id2 = v["id"].as_str().unwrap();
    assert!(
        id2.len() == 8
            && id2
                .chars()
                .all(|c| c.is_ascii_hexdigit() && !c.is_ascii_uppercase())
    );
    assert_eq!(v["restart"], true);
    assert_eq!(v["type"], "server");
    assert_eq!(v["url"], "server://:10101/127.0.0.1:8080?log=warn");
    assert_eq!(
        v["config"],
        "server://:10101/127.0.0.1:8080?block=0&dial=auto&dns=5m0s&log=warn&max=1024&mode=0&notcp=0&noudp=0&proxy=0&rate=0&read=0s&slot=65536&type=0"
    );
    // DELETE: 204, no body, no content type; then 404.
    let r = api.call("DELETE", &format!("/instances/{id}"), None);
    assert_eq!(r.status, 204);
    assert!(r.body.is_empty());
    assert_eq!(r.header("content-type"), None);
    assert_cors(&r, "DELETE");
    assert_eq!(
        api.call("DELETE", &format!("/instances/{id}"), None).status,
        404
    );
}

#[test]
fn patch_meta_rules() {
    let tm = TestMaster::start();
    let api = &tm.api;
    let id = create(&tm, CLIENT_URL)["id"].as_str().unwrap().to_string();
    let p = format!("/instances/{id}");
    let patch = |body: &str| api.call("PATCH", &p, Some(body));

    let sid = "550e8400-e29b-41d4-a716-446655440000";
    let r = patch(&format!(
        r#"{{"meta":{{"peer":{{"sid":"{sid}","type":"2","alias":"remote"}}}}}}"#
    ));
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["meta"]["peer"]["sid"], sid);
    // Tags in a separate call keep the peer (as NodePassDash does it).
    let r = patch(r#"{"meta":{"tags":{"env":"prod","owner":"ops"}}}"#);
    assert_eq!(r.json()["meta"]["peer"]["alias"], "remote");
    assert_eq!(r.json()["meta"]["tags"]["env"], "prod");
    // An empty peer object keeps the current peer; tags {} clear the tags.
    let r = patch(r#"{"meta":{"peer":{},"tags":{}}}"#);
    let v = r.json();
    assert_eq!(v["meta"]["peer"]["sid"], sid);
    assert_eq!(v["meta"]["tags"], serde_json::json!({}));
    // Refusals change nothing.
    let long = "x".repeat(257);
    for (body, msg) in [
        (
            r#"{"meta":{"peer":{"sid":"not-a-uuid"}}}"#.to_string(),
            "Meta peer.sid must be a UUID v4",
        ),
        (
            r#"{"meta":{"peer":{"sid":"6ba7b810-9dad-11d1-80b4-00c04fd430c8"}}}"#.to_string(),
            "Meta peer.sid must be a UUID v4",
        ),
        (
            r#"{"meta":{"peer":{"type":"3"}}}"#.to_string(),
            "Meta peer.type must be",
        ),
        (
            format!(r#"{{"meta":{{"peer":{{"alias":"{long}"}}}}}}"#),
            "Meta peer.alias exceeds maximum length 256",
        ),
        (
            format!(r#"{{"meta":{{"tags":{{"k":"{long}"}}}}}}"#),
            "Meta tag value exceeds maximum length 256",
        ),
        (
            format!(r#"{{"meta":{{"tags":{{"{long}":"v"}}}}}}"#),
            "Meta tag key exceeds maximum length 256",
        ),
        (
            r#"{"meta":{"tags":{"env":"a","env":"b"}}}"#.to_string(),
            "Duplicate meta tag key: env",
        ),
        (
            format!(r#"{{"alias":"{long}"}}"#),
            "Instance alias exceeds maximum length 256",
        ),
        // Validation comes before any change: the alias here is not applied either.
        (
            r#"{"alias":"new","action":"fly"}"#.to_string(),
            "Invalid action: fly",
        ),
    ] {
        let r = patch(&body);
        assert_eq!(r.status, 400, "{body}");
        let got = r.json()["error"].as_str().unwrap().to_string();
        assert!(got.starts_with(msg), "{body}: {got}");
    }
    let v = api.instance(&id);
    assert_eq!(v["alias"], "t");
    assert_eq!(v["meta"]["peer"]["sid"], sid);
    // An empty alias leaves it; undecodable JSON changes nothing and answers 200.
    assert_eq!(patch(r#"{"alias":""}"#).json()["alias"], "t");
    let r = patch(r#"{"alias":"#);
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["alias"], "t");
    // So does JSON `null` and any body that is JSON but not an object (the Go master
    // answers 200 to each; schemathesis found `null` answered 400 here before).
    for body in ["null", "[]", "\"x\"", "7", "true"] {
        let r = patch(body);
        assert_eq!(r.status, 200, "{body}");
        assert_eq!(r.json()["alias"], "t", "{body}");
    }
    // restart policy and reset.
    assert_eq!(patch(r#"{"restart":false}"#).json()["restart"], false);
    let v = patch(r#"{"action":"reset"}"#).json();
    assert_eq!(v["tcprx"], 0);
    // On the key record only `restart` acts; alias is ignored.
    let r = api.call("PATCH", "/instances/********", Some(r#"{"alias":"x"}"#));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["alias"], "");
    assert_eq!(r.json()["url"], api.key.as_str());
}

#[test]
fn key_regeneration_closes_event_streams() {
    let tm = TestMaster::start();
    let mut sse = Sse::open(tm.api.addr, &format!("{}/events", tm.api.base), &tm.api.key);
    assert_eq!(sse.status, 200);
    let first = sse
        .next_event(Duration::from_secs(10))
        .expect("initial event");
    assert_eq!(first.kind(), "initial");
    assert_eq!(first.id(), "********");
    let r = tm.api.call(
        "PATCH",
        "/instances/********",
        Some(r#"{"action":"restart"}"#),
    );
    assert_eq!(r.status, 200);
    let new_key = r.json()["url"].as_str().unwrap().to_string();
    assert_ne!(new_key, tm.api.key);
    // The stream opened with the old key ends without seeing the new key
    // (tests/api_edge.rs checks that in detail).
    let down = sse.wait_for(Duration::from_secs(5), |e| e.kind() == "shutdown");
    assert_eq!(down.data["instance"], Value::Null);
    assert_eq!(down.data["logs"], "");
    assert!(sse.ends(Duration::from_secs(5)));
    // The old key is refused, the new one works.
    assert_eq!(tm.api.get("/info").status, 401);
    let mut api2 = tm.api.clone();
    api2.key = new_key;
    assert_eq!(api2.get("/info").status, 200);
    // Key record: PUT and DELETE are forbidden.
    for m in ["PUT", "DELETE"] {
        let r = api2.call(
            m,
            "/instances/********",
            Some(r#"{"url":"client://127.0.0.1:1/127.0.0.1:2"}"#),
        );
        assert_eq!(r.status, 403);
        assert_eq!(r.text(), "{\"error\":\"Forbidden: API Key\"}\n");
    }
}

#[test]
fn sse_stream_as_a_dashboard_reads_it() {
    let tm = TestMaster::start();
    let mut sse = Sse::open(tm.api.addr, &format!("{}/events", tm.api.base), &tm.api.key);
    assert_eq!(sse.status, 200);
    assert_eq!(sse.header("content-type"), Some("text/event-stream"));
    assert_eq!(sse.header("cache-control"), Some("no-cache"));
    assert_eq!(sse.header("access-control-allow-origin"), Some("*"));
    let initial = sse.next_event(Duration::from_secs(10)).unwrap();
    assert!(sse
        .raw
        .starts_with(b"retry: 3000\n\nevent: instance\ndata: {"));
    assert_eq!(initial.name, "instance");
    assert_eq!(initial.kind(), "initial");
    // Time is RFC 3339 with a zone.
    let time = initial.data["time"].as_str().unwrap();
    assert!(
        time.len() >= 20 && (time.ends_with('Z') || time[19..].contains(['+', '-'])),
        "{time}"
    );
    let id = create(&tm, CLIENT_URL)["id"].as_str().unwrap().to_string();
    let ev = sse.wait_for(Duration::from_secs(3), |e| e.kind() == "create");
    assert_eq!(ev.id(), id);
    assert_eq!(ev.data["logs"], "");
    tm.api.call(
        "PATCH",
        &format!("/instances/{id}"),
        Some(r#"{"alias":"renamed"}"#),
    );
    let ev = sse.wait_for(Duration::from_secs(3), |e| {
        e.kind() == "update" && e.data["instance"]["alias"] == "renamed"
    });
    assert_eq!(ev.id(), id);
    // The worker cannot start here: the reason arrives as a log event of the instance.
    let log = sse.wait_for(Duration::from_secs(5), |e| {
        e.kind() == "log" && e.id() == id
    });
    let text = log.data["logs"].as_str().unwrap();
    assert!(
        text.contains("WARN") && text.contains("cannot start worker"),
        "{text}"
    );
    tm.api.call("DELETE", &format!("/instances/{id}"), None);
    let ev = sse.wait_for(Duration::from_secs(3), |e| e.kind() == "delete");
    assert_eq!(ev.id(), id);
    // A second subscriber gets the current state as initial events.
    let mut sse2 = Sse::open(tm.api.addr, &format!("{}/events", tm.api.base), &tm.api.key);
    let e = sse2.next_event(Duration::from_secs(5)).unwrap();
    assert_eq!(e.kind(), "initial");
    // Master shutdown: both streams get `shutdown` and end.
    drop(tm);
    for s in [&mut sse, &mut sse2] {
        let down = s.wait_for(Duration::from_secs(10), |e| e.kind() == "shutdown");
        assert_eq!(down.data["instance"], Value::Null);
        assert!(s.ends(Duration::from_secs(5)));
    }
}

#[test]
fn info_and_master_alias() {
    let tm = TestMaster::start();
    let v = tm.api.get("/info").json();
    for k in [
        "os", "arch", "ver", "name", "log", "tls", "crt", "key", "alias", "mid", "build",
    ] {
        assert!(v[k].is_string(), "{k} must be a string: {v}");
    }
    for k in [
        "cpu",
        "mem_total",
        "mem_used",
        "swap_total",
        "swap_used",
        "diskr",
        "diskw",
        "netrx",
        "nettx",
        "sysup",
        "uptime",
    ] {
        assert!(v[k].is_number(), "{k} must be a number: {v}");
    }
    assert_eq!(v["ver"], "v1.14.0");
    assert_eq!(v["tls"], "0");
    assert_eq!(v["log"], "warn");
    assert_eq!(v["name"], "127.0.0.1");
    let key_record = tm.api.instance("********");
    assert_eq!(v["mid"], key_record["config"]);
    assert_eq!(v["mid"].as_str().unwrap().len(), 16);
    if cfg!(target_os = "linux") {
        assert!(v["mem_total"].as_u64().unwrap() > 0);
        let cpu = v["cpu"].as_i64().unwrap();
        assert!((0..=100).contains(&cpu), "{cpu}");
    }
    let r = tm.api.call("POST", "/info", Some(r#"{"alias":"edge-1"}"#));
    assert_eq!(r.status, 200);
    assert_eq!(r.json()["alias"], "edge-1");
    assert_eq!(tm.api.instance("********")["alias"], "edge-1");
    let r = tm.api.call(
        "POST",
        "/info",
        Some(&format!(r#"{{"alias":"{}"}}"#, "a".repeat(257))),
    );
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "Master alias exceeds maximum length 256");
    let r = tm.api.call("POST", "/info", Some("nope"));
    assert_eq!(r.json()["error"], "Invalid request body");
    assert_eq!(
        tm.api.call("POST", "/info", Some(r#"{"alias":""}"#)).json()["alias"],
        ""
    );
}

#[test]
fn tcping_probes() {
    let tm = TestMaster::start();
    let listener = nodepass_testkit::net::listen();
    let target = listener.local_addr().unwrap().to_string();
    let v = tm.api.get(&format!("/tcping?target={target}")).json();
    assert_eq!(v["target"], target.as_str());
    assert_eq!(v["connected"], true);
    assert!(v["latency"].is_i64());
    assert_eq!(v["error"], Value::Null);
    drop(listener);
    let v = tm.api.get(&format!("/tcping?target={target}")).json();
    assert_eq!(v["connected"], false);
    assert_eq!(
        v["error"],
        format!("dial tcp {target}: connect: connection refused").as_str()
    );
    let r = tm.api.get("/tcping?target=");
    assert_eq!(r.status, 400);
    assert_eq!(r.json()["error"], "Target address required");
}

#[test]
fn openapi_document_describes_what_we_serve() {
    let tm = TestMaster::start();
    let r = request(
        tm.api.addr,
        "GET",
        &format!("{}/openapi.json", tm.api.base),
        &[],
        None,
    );
    assert_eq!(r.header("content-type"), Some("application/json"));
    let doc = r.json();
    let version = doc["openapi"].as_str().unwrap();
    assert!(version.starts_with("3.1."), "{version}");
    assert_eq!(doc["info"]["version"], "v1");
    assert_eq!(doc["servers"][0]["url"], "/api/v1");
    assert_eq!(
        doc["components"]["securitySchemes"]["ApiKeyAuth"]["name"],
        "X-API-Key"
    );
    let paths = doc["paths"].as_object().unwrap();
    for (path, methods) in [
        ("/instances", &["get", "post"][..]),
        ("/instances/{id}", &["get", "patch", "put", "delete"][..]),
        ("/events", &["get"][..]),
        ("/info", &["get", "post"][..]),
        ("/tcping", &["get"][..]),
        ("/metrics", &["get"][..]),
        ("/openapi.json", &["get"][..]),
        ("/docs", &["get"][..]),
    ] {
        for m in methods {
            let op = &paths[path][m];
            assert!(op.is_object(), "{m} {path} missing");
            assert!(op["responses"].as_object().is_some_and(|r| !r.is_empty()));
        }
    }
    assert_eq!(paths.len(), 8, "only routes we serve: {:?}", paths.keys());
    // Every $ref resolves.
    let text = r.text();
    let schemas = doc["components"]["schemas"].as_object().unwrap();
    for part in text.split("\"$ref\":").skip(1) {
        let target = part.trim_start().trim_start_matches('"');
        let target = &target[..target.find('"').unwrap()];
        let name = target.trim_start_matches("#/components/schemas/");
        assert!(schemas.contains_key(name), "dangling $ref {target}");
    }
    // The instance schema lists every field the API writes.
    let inst = &schemas["Instance"];
    let props: Vec<&String> = inst["properties"].as_object().unwrap().keys().collect();
    for f in [
        "id", "alias", "type", "status", "url", "config", "restart", "meta", "mode", "ping",
        "pool", "tcps", "udps", "tcprx", "tcptx", "udprx", "udptx",
    ] {
        assert!(
            props.iter().any(|p| p.as_str() == f),
            "Instance.{f} undocumented"
        );
    }
    let live = tm.api.instance("********");
    for k in live.as_object().unwrap().keys() {
        assert!(
            props.iter().any(|p| p == &k),
            "served field {k} undocumented"
        );
    }
}

#[test]
fn swagger_ui_is_served_from_the_binary() {
    let tm = TestMaster::start();
    let base = &tm.api.base;
    let r = request(tm.api.addr, "GET", &format!("{base}/docs"), &[], None);
    assert_eq!(r.status, 200);
    assert!(r.header("content-type").unwrap().starts_with("text/html"));
    let html = r.text();
    assert!(html.contains("swagger-ui"), "{html}");
    assert!(html.contains(&format!("<base href=\"{base}/docs/\">")));
    // Nothing from the network: no absolute http(s) URLs in what the page loads.
    assert!(
        !html.contains("src=\"http") && !html.contains("href=\"http"),
        "{html}"
    );
    for asset in [
        "swagger-ui.css",
        "swagger-ui-bundle.js",
        "swagger-initializer.js",
    ] {
        let r = request(
            tm.api.addr,
            "GET",
            &format!("{base}/docs/{asset}"),
            &[],
            None,
        );
        assert_eq!(r.status, 200, "{asset}");
        assert!(r.body.len() > 100, "{asset}");
    }
    let init = request(
        tm.api.addr,
        "GET",
        &format!("{base}/docs/swagger-initializer.js"),
        &[],
        None,
    )
    .text();
    assert!(init.contains(&format!("{base}/openapi.json")), "{init}");
}

#[test]
fn the_console_is_served_from_the_binary_with_a_strict_policy() {
    let tm = TestMaster::start();
    let prefix = tm.api.base.trim_end_matches("/v1").to_string();
    // {prefix}/ and {prefix}/console lead to the page; no key needed for the page itself.
    for from in [format!("{prefix}/"), format!("{prefix}/console")] {
        let r = request(tm.api.addr, "GET", &from, &[], None);
        assert_eq!(r.status, 308, "{from}");
        assert_eq!(
            r.header("location"),
            Some(format!("{prefix}/console/").as_str())
        );
    }
    let page = request(tm.api.addr, "GET", &format!("{prefix}/console/"), &[], None);
    assert_eq!(page.status, 200);
    let csp = page
        .header("content-security-policy")
        .expect("a CSP")
        .to_string();
    for rule in [
        "default-src 'none'",
        "script-src 'self'",
        "style-src 'self'",
        "connect-src 'self'",
        "frame-ancestors 'none'",
    ] {
        assert!(csp.contains(rule), "{csp}");
    }
    assert!(!csp.contains("unsafe"), "{csp}");
    assert_eq!(page.header("x-content-type-options"), Some("nosniff"));
    let html = page.text();
    // No inline script or style, nothing from another host.
    assert!(
        html.contains("<script src=\"app.js\" defer></script>"),
        "{html}"
    );
    for inline in [
        "<style",
        " style=",
        " onclick=",
        " onload=",
        " onerror=",
        "javascript:",
    ] {
        assert!(!html.contains(inline), "{inline} in {html}");
    }
    assert!(
        !html.contains("http:") && !html.contains("https:"),
        "{html}"
    );
    for (file, kind) in [("app.js", "text/javascript"), ("app.css", "text/css")] {
        let r = request(
            tm.api.addr,
            "GET",
            &format!("{prefix}/console/{file}"),
            &[],
            None,
        );
        assert_eq!(r.status, 200, "{file}");
        assert!(
            r.header("content-type")
                .unwrap_or_default()
                .starts_with(kind),
            "{file}"
        );
        assert!(r.header("content-security-policy").is_some(), "{file}");
        let text = r.text();
        assert!(
            !text.contains("innerHTML") && !text.contains("eval("),
            "{file}"
        );
    }
    // The create form's table is the parser's.
    let params = request(
        tm.api.addr,
        "GET",
        &format!("{prefix}/console/params.json"),
        &[],
        None,
    );
    assert_eq!(params.status, 200);
    let rows: Value = serde_json::from_slice(&params.body).expect("json");
    let names: Vec<&str> = rows
        .as_array()
        .expect("array")
        .iter()
        .filter_map(|r| r["name"].as_str())
        .collect();
    assert_eq!(names, nodepass_proto::url::TUNNEL_PARAMS.to_vec());
    // Unknown files are 404; the pages are read-only.
    let r = request(
        tm.api.addr,
        "GET",
        &format!("{prefix}/console/../v1/info"),
        &[],
        None,
    );
    assert_ne!(r.status, 200);
    let r = request(
        tm.api.addr,
        "GET",
        &format!("{prefix}/console/secret.txt"),
        &[],
        None,
    );
    assert_eq!(r.status, 404);
    let r = request(
        tm.api.addr,
        "POST",
        &format!("{prefix}/console/"),
        &[],
        Some(b"x"),
    );
    assert_eq!(r.status, 405);
}

#[test]
fn state_survives_a_restart() {
    let tm = TestMaster::start();
    let key = tm.key();
    let id = create(&tm, CLIENT_URL)["id"].as_str().unwrap().to_string();
    let p = format!("/instances/{id}");
    tm.api.call(
        "PATCH",
        &p,
        Some(r#"{"alias":"keep","restart":false,"meta":{"peer":{"sid":"550e8400-e29b-41d4-a716-446655440000","type":"1","alias":"x"},"tags":{"a":"b"}}}"#),
    );
    tm.api.call("POST", "/info", Some(r#"{"alias":"m1"}"#));
    let mid = tm.api.instance("********")["config"].clone();
    let dir = tm.stop();
    assert!(dir.path().join("state").join("backup.json").exists());
    let tm2 = TestMaster::start_in(
        "master://127.0.0.1:0/api?log=warn",
        dir,
        "/nonexistent/nodepass-worker".into(),
    );
    assert_eq!(tm2.key(), key, "the API key persists");
    let v = tm2.api.instance(&id);
    assert_eq!(v["alias"], "keep");
    assert_eq!(v["restart"], false);
    assert_eq!(v["status"], "stopped");
    assert_eq!(v["meta"]["tags"]["a"], "b");
    assert_eq!(v["meta"]["peer"]["type"], "1");
    let k = tm2.api.instance("********");
    assert_eq!(k["alias"], "m1");
    assert_eq!(k["config"], mid);
}

#[test]
fn a_slow_subscriber_is_dropped_and_never_blocks_the_others() {
    let tm = TestMaster::start();
    let id = create(&tm, CLIENT_URL)["id"].as_str().unwrap().to_string();
    let path = format!("{}/events", tm.api.base);
    // This one never reads until the end.
    let mut slow = Sse::open(tm.api.addr, &path, &tm.api.key);
    let fast = Sse::open(tm.api.addr, &path, &tm.api.key);
    // Big events (about 14 KB each) so kernel buffers cannot hide the backlog.
    let tags: String = (0..50)
        .map(|i| format!(r#""t{i}":"{}""#, "v".repeat(250)))
        .collect::<Vec<_>>()
        .join(",");
    // Two update events per round: well past the 1024-frame ring plus what sockets buffer.
    let rounds = 800;
    // Four writers at once (their flushes overlap), each checking the fast reader keeps up.
    let fast = std::sync::Mutex::new(fast);
    std::thread::scope(|scope| {
        for w in 0..4 {
            let (tm, id, tags, fast) = (&tm, &id, &tags, &fast);
            scope.spawn(move || {
                for n in (w..rounds).step_by(4) {
                    let body = format!(r#"{{"alias":"a{n}","meta":{{"tags":{{{tags}}}}}}}"#);
                    let r = tm
                        .api
                        .call("PATCH", &format!("/instances/{id}"), Some(&body));
                    assert_eq!(r.status, 200);
                    if n % 100 == 99 {
                        let want = format!("a{n}");
                        fast.lock().unwrap().wait_for(Duration::from_secs(10), |e| {
                            e.kind() == "update" && e.data["instance"]["alias"] == want.as_str()
                        });
                    }
                }
            });
        }
    });
    // The slow one was cut off: it ends without having received every update.
    let mut updates = 0;
    while let Some(e) = slow.next_event(Duration::from_secs(10)) {
        if e.kind() == "update" {
            updates += 1;
        }
    }
    assert!(
        updates < 2 * rounds,
        "slow subscriber got all {updates} updates"
    );
    // The master is fine and new subscribers work.
    let mut again = Sse::open(tm.api.addr, &path, &tm.api.key);
    assert_eq!(
        again.next_event(Duration::from_secs(5)).unwrap().kind(),
        "initial"
    );
}

/// Issue 8: every field of every request body is type-checked. A value of the wrong JSON
/// type is a 400 that names the field (after the reference's `Invalid request body`), and
/// nothing is applied; `null` still means an absent field, as for Go's decoder.
#[test]
fn request_fields_of_the_wrong_type_are_named() {
    let tm = TestMaster::start();
    let api = &tm.api;
    let id = create(&tm, CLIENT_URL)["id"].as_str().unwrap().to_string();
    let item = format!("/instances/{id}");
    for (method, path, body, field, expected) in [
        ("POST", "/instances", r#"{"url":5}"#, "url", "a string"),
        (
            "POST",
            "/instances",
            &format!(r#"{{"alias":["a"],"url":"{CLIENT_URL}"}}"#) as &str,
            "alias",
            "a string",
        ),
        ("PUT", &item, r#"{"url":{"u":1}}"#, "url", "a string"),
        (
            "PATCH",
            &item,
            r#"{"restart":"yes"}"#,
            "restart",
            "a boolean",
        ),
        (
            "PATCH",
            &item,
            r#"{"alias":1,"restart":false}"#,
            "alias",
            "a string",
        ),
        ("PATCH", &item, r#"{"action":true}"#, "action", "a string"),
        ("PATCH", &item, r#"{"meta":[]}"#, "meta", "an object"),
        (
            "PATCH",
            &item,
            r#"{"meta":{"peer":[1]}}"#,
            "meta.peer",
            "an object",
        ),
        (
            "PATCH",
            &item,
            r#"{"meta":{"peer":{"sid":7}}}"#,
            "meta.peer.sid",
            "a string",
        ),
        (
            "PATCH",
            &item,
            r#"{"meta":{"tags":["a"]}}"#,
            "meta.tags",
            "an object",
        ),
        (
            "PATCH",
            &item,
            r#"{"meta":{"tags":{"k":false}}}"#,
            "meta.tags.k",
            "a string",
        ),
        (
            "PATCH",
            "/instances/********",
            r#"{"action":1}"#,
            "action",
            "a string",
        ),
        ("POST", "/info", r#"{"alias":true}"#, "alias", "a string"),
    ] {
        let r = api.call(method, path, Some(body));
        assert_eq!(r.status, 400, "{method} {path} {body}: {}", r.text());
        let error = r.json()["error"].as_str().unwrap().to_string();
        assert!(
            error.starts_with(&format!(
                "Invalid request body: field {field} must be {expected}, got "
            )),
            "{method} {path} {body}: {error}"
        );
    }
    // Nothing of a refused body was applied, and no second instance was created.
    let v = api.instance(&id);
    assert_eq!(v["alias"], "t");
    assert_eq!(v["restart"], true);
    assert_eq!(v["url"], CLIENT_URL);
    assert_eq!(api.get("/instances").json().as_array().unwrap().len(), 2);
    // null is an absent field.
    let r = api.call(
        "PATCH",
        &item,
        Some(r#"{"alias":null,"restart":null,"meta":{"peer":null,"tags":null}}"#),
    );
    assert_eq!(r.status, 200, "{}", r.text());
    assert_eq!(r.json()["alias"], "t");
    let r = api.call(
        "POST",
        "/instances",
        Some(&format!(r#"{{"alias":null,"url":"{CLIENT_URL}"}}"#)),
    );
    assert_eq!(r.status, 201, "{}", r.text());
    assert_eq!(r.json()["alias"], "");
}
