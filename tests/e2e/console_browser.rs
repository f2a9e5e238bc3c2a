//! The web console end to end, in a real headless Chromium driven over WebDriver
//! (chromedriver): the built `nodepass` master serves the page, the page talks to the real
//! API and event stream, the instances are real worker processes carrying real bytes.
//!
//! Skips, saying why, where Chromium or chromedriver is absent (`.ci/run` installs Debian's
//! `chromium` and `chromium-driver` when it can). Set NODEPASS_CONSOLE_SCREENSHOT=<file.png>
//! to save a screenshot of the console (the README's picture comes from it).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use fantoccini::{Client, Locator};
use serde_json::{json, Value};

use nodepass_testkit::api::try_call;
use nodepass_testkit::browser::{browser, browser_present, js, wait_true};
use nodepass_testkit::free_port;
use nodepass_testkit::master::MasterProc;
use nodepass_testkit::Echo;

/// A master on a free port with a fresh state dir; returns it with its API key.
fn master(state: &Path) -> (MasterProc, String) {
    let mut m = MasterProc::launch_fast(&state.join("state"), free_port(), &[]);
    let key = m.wait_ready();
    (m, key)
}

fn console_url(m: &MasterProc) -> String {
    format!("http://{}/api/", m.addr)
}

async fn fill(c: &Client, css: &str, text: &str) {
    let e = c.find(Locator::Css(css)).await.expect(css);
    e.clear().await.expect("clear");
    e.send_keys(text).await.expect("type");
}

async fn click(c: &Client, css: &str) {
    c.find(Locator::Css(css))
        .await
        .expect(css)
        .click()
        .await
        .expect("click");
}

async fn text_of(c: &Client, css: &str) -> String {
    js(
        c,
        &format!("(document.querySelector({css:?}) || {{textContent: ''}}).textContent"),
    )
    .await
    .as_str()
    .unwrap_or_default()
    .to_string()
}

/// The row of the instance with alias `alias`, as a JS expression.
fn row(alias: &str) -> String {
    format!(
        "[...document.querySelectorAll('#rows tr')].find(r => r.querySelector('.alias .name').textContent === {alias:?})"
    )
}

async fn sign_in(c: &Client, m: &MasterProc, key: &str) {
    c.goto(&console_url(m)).await.expect("open the console");
    wait_true(
        c,
        "the sign-in form",
        10,
        "!document.getElementById('signin').hidden",
    )
    .await;
    fill(c, "#key", key).await;
    click(c, "#signin-form button[type=submit]").await;
    wait_true(
        c,
        "the signed-in view",
        10,
        "!document.getElementById('nav').hidden",
    )
    .await;
}

/// Fills the create form and submits it.
async fn create(
    c: &Client,
    role: &str,
    alias: &str,
    key: &str,
    tunnel: &str,
    target: &str,
    params: &[(&str, &str)],
) {
    click(c, "#nav [data-view=create]").await;
    wait_true(
        c,
        "the parameter fields",
        10,
        "document.querySelectorAll('#c-params [data-param]').length > 5",
    )
    .await;
    let select = c.find(Locator::Css("#c-role")).await.expect("role");
    select.select_by_value(role).await.expect("choose the role");
    wait_true(
        c,
        "the role's parameters",
        10,
        &format!(
            "!!document.getElementById('p-{}')",
            if role == "server" { "max" } else { "min" }
        ),
    )
    .await;
    fill(c, "#c-alias", alias).await;
    fill(c, "#c-key", key).await;
    fill(c, "#c-tunnel", tunnel).await;
    fill(c, "#c-target", target).await;
    for (name, value) in params {
        let e = c
            .find(Locator::Css(&format!("#p-{name}")))
            .await
            .expect(name);
        if e.tag_name().await.expect("tag") == "select" {
            e.select_by_value(value).await.expect("choose");
        } else {
            e.clear().await.expect("clear");
            e.send_keys(value).await.expect("type");
        }
    }
    click(c, "#create-form button[type=submit]").await;
}

fn api(m: &MasterProc, key: &str, method: &str, path: &str, body: Option<&str>) -> (u16, String) {
    try_call(m.addr, key, method, path, body).expect("the master answers")
}

fn save_screenshot(png: &[u8]) {
    if let Ok(path) = std::env::var("NODEPASS_CONSOLE_SCREENSHOT") {
        std::fs::write(PathBuf::from(&path), png).expect("write the screenshot");
        eprintln!("console screenshot saved to {path}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_person_runs_a_tunnel_from_the_console() {
    if !browser_present() {
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    let (m, key) = master(state.path());
    let echo = Echo::start();
    let tunnel_port = free_port();
    let user_port = free_port();
    let (_driver, c) = browser(1400, 1000).await;

    // The prefix redirects to the console; a wrong key is refused with a clear message.
    c.goto(&console_url(&m)).await.expect("open");
    let url = c.current_url().await.expect("url");
    assert_eq!(
        url.path(),
        "/api/console/",
        "{{prefix}}/ redirects to the console"
    );
    wait_true(
        &c,
        "the sign-in form",
        10,
        "!document.getElementById('signin').hidden",
    )
    .await;
    fill(&c, "#key", "0123456789abcdef0123456789abcdef").await;
    click(&c, "#signin-form button[type=submit]").await;
    wait_true(
        &c,
        "the refusal",
        10,
        "document.getElementById('signin-error').textContent.includes('refused')",
    )
    .await;
    assert_eq!(
        js(&c, "sessionStorage.length").await,
        json!(0),
        "a refused key is not kept"
    );
    sign_in(&c, &m, &key).await;
    assert!(
        !c.current_url().await.expect("url").as_str().contains(&key),
        "the key never appears in a URL"
    );

    // A bad parameter: the server's error text appears next to that field.
    create(
        &c,
        "server",
        "bad",
        "s3cret",
        &format!("127.0.0.1:{tunnel_port}"),
        &format!("127.0.0.1:{user_port}"),
        &[("rate", "fast")],
    )
    .await;
    wait_true(
        &c,
        "the error next to rate",
        10,
        "document.getElementById('err-rate').classList.contains('error')",
    )
    .await;
    let err = text_of(&c, "#err-rate").await;
    assert!(err.contains("rate") && err.contains("fast"), "{err}");
    let (_, list) = api(&m, &key, "GET", "/instances", None);
    assert!(!list.contains("\"bad\""), "nothing was created: {list}");

    // The server of a reverse pair: users at user_port, the client dials the echo.
    fill(&c, "#p-rate", "").await;
    create(
        &c,
        "server",
        "edge-server",
        "s3cret",
        &format!("127.0.0.1:{tunnel_port}"),
        &format!("127.0.0.1:{user_port}"),
        &[("mode", "1")],
    )
    .await;
    let want = format!("server://s3cret@127.0.0.1:{tunnel_port}/127.0.0.1:{user_port}?mode=1");
    wait_true(
        &c,
        "the server row",
        15,
        &format!("!!{}", row("edge-server")),
    )
    .await;
    // The URL the form showed is the one the master stored (plus the inherited log level).
    assert_eq!(
        text_of(&c, "#c-url").await,
        want,
        "the form shows the URL it sends"
    );
    let (_, list) = api(&m, &key, "GET", "/instances", None);
    let list: Value = serde_json::from_str(&list).expect("json");
    let stored = list
        .as_array()
        .and_then(|l| l.iter().find(|i| i["alias"] == "edge-server"))
        .map(|i| i["url"].clone());
    // The master stores it with its own log level added, keys sorted.
    assert_eq!(
        stored,
        Some(json!(want.replace("?mode=1", "?log=info&mode=1")))
    );
    create(
        &c,
        "client",
        "edge-client",
        "s3cret",
        &format!("127.0.0.1:{tunnel_port}"),
        &echo.addr(),
        &[],
    )
    .await;
    for alias in ["edge-server", "edge-client"] {
        wait_true(
            &c,
            &format!("{alias} running"),
            30,
            &format!(
                "{}?.querySelector('.status').textContent === 'running'",
                row(alias)
            ),
        )
        .await;
    }
    assert_eq!(text_of(&c, "#count").await, "2 instances");

    // Bytes through the tunnel move the counters, the rate and the graph.
    let user = format!("127.0.0.1:{user_port}");
    nodepass_testkit::wait_tunnel(&user, Duration::from_secs(30), &[]);
    let server_id = js(&c, &format!("{}.dataset.id", row("edge-server"))).await;
    let server_id = server_id.as_str().expect("id").to_string();
    c.execute(
        &format!("document.querySelector('#rows tr[data-id=\"{server_id}\"] td.role').click()"),
        vec![],
    )
    .await
    .expect("open the server");
    let payload = nodepass_testkit::pattern(256 * 1024, 7);
    let deadline = Instant::now() + Duration::from_secs(40);
    loop {
        let back = nodepass_testkit::echo_once(&user, &payload, Duration::from_secs(10))
            .expect("echo through the tunnel");
        assert_eq!(back, payload, "the echo came back whole");
        let moved = js(&c, "Number(document.getElementById('g-traffic').dataset.peak || 0) > 0 && document.querySelector('#rows tr.sel td.rx').textContent !== '0 B'").await;
        if moved == json!(true) {
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the counters never moved: {}",
            js(&c, "document.body.innerText").await
        );
        tokio::time::sleep(Duration::from_millis(300)).await;
    }
    let rx = text_of(&c, "#rows tr.sel td.rx").await;
    assert!(
        rx.ends_with("KiB") || rx.ends_with("MiB"),
        "received total {rx}"
    );
    // The worker's log lines arrive live, coloured by level.
    wait_true(
        &c,
        "a log line",
        20,
        "document.querySelectorAll('#d-log li.INFO').length > 0",
    )
    .await;
    if let Ok(png) = c.screenshot().await {
        save_screenshot(&png);
    }

    // Stop and delete the client through the buttons.
    c.execute(
        &format!("{}.querySelector('td.role').click()", row("edge-client")),
        vec![],
    )
    .await
    .expect("open the client");
    wait_true(
        &c,
        "the client's card",
        10,
        "document.getElementById('d-title').textContent.startsWith('edge-client')",
    )
    .await;
    click(&c, "[data-action=stop]").await;
    wait_true(
        &c,
        "the client stopped",
        20,
        &format!(
            "{}?.querySelector('.status').textContent === 'stopped'",
            row("edge-client")
        ),
    )
    .await;
    click(&c, "#d-delete").await;
    click(&c, "#d-delete-confirm").await;
    wait_true(
        &c,
        "the client row gone",
        20,
        &format!("!{}", row("edge-client")),
    )
    .await;
    let (_, list) = api(&m, &key, "GET", "/instances", None);
    assert!(
        !list.contains("edge-client"),
        "deleted on the master: {list}"
    );
    assert_eq!(text_of(&c, "#count").await, "1 instances");
    let _ = c.close().await;
}

/// Aliases, tags, URLs and log lines with markup in them are shown as text; a narrow window
/// still shows every instance; a regenerated key sends the console back to sign-in.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_text_is_shown_as_text_and_a_new_key_asks_again() {
    if !browser_present() {
        return;
    }
    let state = tempfile::tempdir().expect("state dir");
    let (m, key) = master(state.path());
    let evil = "<img src=x onerror=\"window.__pwned=1\">";
    // The crt path is logged by the worker when it cannot read it: a log line with markup.
    let crt = "%3Cimg%20src%3Dx%20onerror%3D%22window.__pwned%3D1%22%3E";
    let url = format!(
        "server://k@127.0.0.1:{}/127.0.0.1:{}?tls=2&crt={crt}&key={crt}&note={crt}",
        free_port(),
        free_port()
    );
    let body = json!({"alias": evil, "url": url}).to_string();
    let (status, made) = api(&m, &key, "POST", "/instances", Some(&body));
    assert_eq!(status, 201, "{made}");
    let id = serde_json::from_str::<Value>(&made).expect("json")["id"]
        .as_str()
        .expect("id")
        .to_string();
    let patch = json!({"meta": {"tags": {evil: evil}}}).to_string();
    let (status, _) = api(&m, &key, "PATCH", &format!("/instances/{id}"), Some(&patch));
    assert_eq!(status, 200);

    let (_driver, c) = browser(390, 844).await; // a phone
    sign_in(&c, &m, &key).await;
    wait_true(&c, "the row", 15, &format!("!!{}", row(evil))).await;
    c.execute(&format!("{}.click()", row(evil)), vec![])
        .await
        .expect("open");
    wait_true(
        &c,
        "a log line with the path",
        30,
        "[...document.querySelectorAll('#d-log li')].some(l => l.textContent.includes('<img'))",
    )
    .await;
    assert_eq!(
        js(&c, "document.querySelectorAll('img').length").await,
        json!(0),
        "no markup became an element"
    );
    assert_eq!(js(&c, "window.__pwned === undefined").await, json!(true));
    assert_eq!(text_of(&c, "#d-title").await, format!("{evil} ({id})"));
    assert_eq!(
        js(
            &c,
            "[...document.querySelectorAll('.tag')].map(t => t.textContent)"
        )
        .await,
        json!([format!("{evil}={evil}")])
    );
    assert_eq!(
        js(
            &c,
            "[...document.querySelectorAll('#tag-filter option')].map(o => o.textContent)"
        )
        .await,
        json!(["All tags", format!("{evil}={evil}")])
    );
    assert!(text_of(&c, "#d-url").await.contains("note="));
    // The phone layout: no header row, nothing wider than the window.
    assert_eq!(
        js(
            &c,
            "getComputedStyle(document.querySelector('#instances thead')).display"
        )
        .await,
        json!("none")
    );
    assert_eq!(
        js(
            &c,
            "document.documentElement.scrollWidth <= window.innerWidth"
        )
        .await,
        json!(true)
    );

    // The host's figures, and a tcping from the browser to the master's own port.
    click(&c, "#d-close").await;
    click(&c, "#nav [data-view=host]").await;
    wait_true(
        &c,
        "the host figures",
        10,
        "document.querySelectorAll('#h-figures dd').length > 10",
    )
    .await;
    assert!(text_of(&c, "#h-figures").await.contains("Memory"));
    fill(&c, "#tcping-target", &m.addr.to_string()).await;
    click(&c, "#tcping-form button").await;
    wait_true(
        &c,
        "the tcping answer",
        10,
        "document.getElementById('tcping-result').textContent.includes('connected in')",
    )
    .await;

    // Regenerating the key ends the session: the console asks again.
    let (status, _) = api(
        &m,
        &key,
        "PATCH",
        "/instances/********",
        Some(r#"{"action":"restart"}"#),
    );
    assert_eq!(status, 200);
    wait_true(
        &c,
        "the sign-in form again",
        20,
        "!document.getElementById('signin').hidden",
    )
    .await;
    let said = text_of(&c, "#signin-error").await;
    assert!(said.contains("regenerated"), "{said}");
    assert_eq!(js(&c, "sessionStorage.length").await, json!(0));
    let _ = c.close().await;
}
