//! The command line as a user meets it: every kind of bad URL or argument is refused with
//! exit status 2 and a one-line message on stderr (nothing on stdout, no panic), and
//! `--help` / `--version` work. No role is started here: only input the binary must refuse
//! before doing anything (the roles have their own end-to-end tests).

use std::process::{Command, Output};

fn nodepass(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_nodepass"))
        .args(args)
        // Keep any role from starting by accident if a case were ever accepted.
        .env("NP_SERVICE_COOLDOWN", "0s")
        .output()
        .expect("the nodepass binary runs")
}

/// Runs `args`, expects status 2, nothing on stdout and exactly one line on stderr that
/// contains every one of `needles`; returns that line.
fn refused(args: &[&str], needles: &[&str]) -> String {
    let out = nodepass(args);
    let stderr = String::from_utf8_lossy(&out.stderr).to_string();
    assert_eq!(
        out.status.code(),
        Some(2),
        "{args:?}: status {:?}, stderr {stderr:?}",
        out.status
    );
    assert!(
        out.stdout.is_empty(),
        "{args:?}: stdout {:?}",
        String::from_utf8_lossy(&out.stdout)
    );
    assert!(
        stderr.ends_with('\n') && stderr.matches('\n').count() == 1,
        "{args:?}: stderr is not one line: {stderr:?}"
    );
    assert!(stderr.starts_with("nodepass: "), "{args:?}: {stderr:?}");
    assert!(!stderr.contains("panicked"), "{args:?}: {stderr:?}");
    for needle in needles {
        assert!(
            stderr.contains(needle),
            "{args:?}: {stderr:?} lacks {needle:?}"
        );
    }
    stderr
}

#[test]
fn urls_without_a_usable_scheme() {
    refused(
        &["127.0.0.1:10101/127.0.0.1:8080"],
        &["invalid URL", "scheme://"],
    );
    refused(&["server:127.0.0.1:10101"], &["invalid URL"]);
    refused(
        &["http://127.0.0.1:10101/127.0.0.1:8080"],
        &[
            "unsupported scheme \"http\"",
            "server://, client:// or master://",
        ],
    );
}

#[test]
fn bad_addresses() {
    refused(
        &["server://127.0.0.1/127.0.0.1:8080"],
        &["tunnel address \"127.0.0.1\"", "missing port"],
    );
    refused(
        &["client://127.0.0.1:99999/127.0.0.1:8080"],
        &["port must be a number from 1 to 65535"],
    );
    refused(&["server://:0/127.0.0.1:8080"], &["port must be"]);
    refused(&["server://:http/127.0.0.1:8080"], &["port must be"]);
    refused(
        &["client://::1:10101/127.0.0.1:8080"],
        &["IPv6 address needs brackets"],
    );
    refused(
        &["server://:10101/::1:8080"],
        &["target address \"::1:8080\"", "needs brackets"],
    );
    refused(
        &["server://:10101/1.2.3.256:80"],
        &["not a valid host name or IP address"],
    );
    refused(&["server://:10101"], &["no target address"]);
    refused(&["server://:10101/ , "], &["no target address"]);
    refused(
        &["server://127.0.0.1:10101/127.0.0.1:10101"],
        &["tunnel port 10101 conflicts with target address 127.0.0.1:10101"],
    );
}

#[test]
fn bad_parameter_values_name_the_parameter_and_the_value() {
    let base = "server://key@:10101/127.0.0.1:8080";
    let line = refused(&[&format!("{base}?tls=7")], &[]);
    assert_eq!(
        line,
        "nodepass: invalid value \"7\" for tls: expected 0, 1 or 2\n"
    );
    for (query, needles) in [
        ("type=9", &["\"9\" for type"][..]),
        ("mode=3", &["\"3\" for mode"]),
        ("log=loud", &["\"loud\" for log", "debug"]),
        ("read=30", &["\"30\" for read", "duration"]),
        ("dns=bogus", &["\"bogus\" for dns", "TTL", "DNS servers"]),
        ("block=4", &["\"4\" for block"]),
        ("lbs=3", &["\"3\" for lbs"]),
        ("min=0", &["\"0\" for min"]),
        ("max=-1", &["\"-1\" for max"]),
        ("rate=fast", &["\"fast\" for rate"]),
        ("slot=1.5", &["\"1.5\" for slot"]),
        ("dial=eth0", &["\"eth0\" for dial"]),
        ("proxy=yes", &["\"yes\" for proxy"]),
        ("notcp=2", &["\"2\" for notcp"]),
        ("noudp=true", &["\"true\" for noudp"]),
        ("sni=a%20b", &["\"a b\" for sni"]),
    ] {
        refused(&[&format!("{base}?{query}")], needles);
    }
    // The same check guards `nodepass worker`.
    refused(
        &["worker", &format!("{base}?rate=-1")],
        &["\"-1\" for rate"],
    );
}

#[test]
fn bad_percent_encoding_and_characters() {
    refused(
        &["server://:10101/127.0.0.1:8080?sni=%zz"],
        &["invalid percent-encoding", "%zz"],
    );
    refused(
        &["server://a%2@:10101/127.0.0.1:8080"],
        &["percent-encoding"],
    );
    refused(&["server://:10101/127.0.0.1:80%"], &["percent-encoding"]);
    refused(
        &["server://:10101/127.0.0.1:8080?log=info\n&tls=1"],
        &["control character"],
    );
    refused(
        &["server://:10101/127.0.0.1:8080?log=info;tls=1"],
        &["use '&'"],
    );
}

#[test]
fn wrong_arguments() {
    refused(&[], &["missing URL", "--help"]);
    refused(
        &["worker", "master://127.0.0.1:9090"],
        &["worker runs server:// or client:// URLs"],
    );
    refused(&["worker"], &["--help"]);
    refused(&["--bogus"], &["--bogus"]);
    refused(
        &["server://:10101/127.0.0.1:8080", "client://:1/127.0.0.1:2"],
        &["expected one URL, got 2 arguments"],
    );
    refused(
        &["worker", "server://:10101/127.0.0.1:8080", "x"],
        &["expected one URL, got 2 arguments"],
    );
}

#[test]
fn help_shows_examples_and_version_works() {
    for flag in ["--help", "-h"] {
        let out = nodepass(&[flag]);
        assert_eq!(out.status.code(), Some(0), "{flag}");
        let help = String::from_utf8_lossy(&out.stdout);
        for needle in [
            "Examples:",
            "nodepass \"server://",
            "nodepass \"client://",
            "nodepass \"master://",
            "nodepass worker",
            "scheme://[key@]host:port/target",
            "notcp noudp",
        ] {
            assert!(
                help.contains(needle),
                "{flag}: help lacks {needle:?}:\n{help}"
            );
        }
    }
    let out = nodepass(&["--version"]);
    assert_eq!(out.status.code(), Some(0));
    // The version and the commit it was built from (tests/packaging.rs checks the commit).
    let version = String::from_utf8_lossy(&out.stdout);
    assert!(
        version.starts_with(&format!("nodepass {} (commit ", env!("CARGO_PKG_VERSION")))
            && version.ends_with(")\n"),
        "{version:?}"
    );
}
