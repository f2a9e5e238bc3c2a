//! What an operator installs: `nodepass --version` names the commit, shell completions and
//! the man page come from the CLI definition, and the Debian package (packaging/build-deb.sh,
//! cargo-deb) holds the binary, the hardened unit, the system user, the settings file,
//! completions, man page and maintainer scripts that keep the state on upgrade and remove
//! and delete it on purge. The package test skips, saying why, where cargo-deb is absent.

use std::path::Path;
use std::process::Command;

fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_nodepass")
}

fn run(cmd: &mut Command) -> String {
    let out = cmd.output().expect("run the command");
    assert!(
        out.status.success(),
        "{cmd:?} failed: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).expect("utf-8 output")
}

#[test]
fn version_names_the_commit_it_was_built_from() {
    let out = run(Command::new(bin()).arg("--version"));
    let line = out.trim();
    let rest = line
        .strip_prefix(&format!("nodepass {} (commit ", env!("CARGO_PKG_VERSION")))
        .and_then(|r| r.strip_suffix(')'))
        .unwrap_or_else(|| panic!("unexpected version line {line:?}"));
    let root = env!("CARGO_MANIFEST_DIR");
    let head = Command::new("git")
        .args(["-C", root, "rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string());
    match head {
        Some(hash) => assert!(
            rest == hash || rest == format!("{hash}-dirty"),
            "built from {rest}, HEAD is {hash}"
        ),
        None => assert_eq!(rest, "unknown", "no git here: the commit is unknown"),
    }
}

#[test]
fn completions_and_the_man_page_come_from_the_cli() {
    for (shell, marker) in [
        ("bash", "complete -F"),
        ("zsh", "#compdef nodepass"),
        ("fish", "complete -c nodepass"),
    ] {
        let script = run(Command::new(bin()).args(["completions", shell]));
        assert!(script.contains(marker), "{shell}: {script}");
        for sub in ["import", "worker", "completions"] {
            assert!(script.contains(sub), "{shell} completes {sub}");
        }
    }
    let page = run(Command::new(bin()).arg("man"));
    assert!(page.contains(".TH nodepass 1"), "{page}");
    assert!(
        page.contains("import"),
        "the man page lists the subcommands"
    );
    let bad = Command::new(bin())
        .args(["completions", "tcsh"])
        .output()
        .unwrap();
    assert_eq!(
        bad.status.code(),
        Some(2),
        "an unknown shell is a usage error"
    );
}

#[test]
fn the_debian_package_holds_the_service_and_keeps_state_until_purge() {
    if Command::new("cargo-deb").arg("--version").output().is_err() {
        eprintln!(
            "skipping: cargo-deb is not installed (cargo install cargo-deb --locked); \
             the package is not built"
        );
        return;
    }
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    // The debug binary this test run already built; the fastest compression.
    let out = run(Command::new(root.join("packaging/build-deb.sh"))
        .args(["--debug", "--", "--fast"])
        .current_dir(root));
    let deb = out
        .lines()
        .rev()
        .map(str::trim)
        .find(|l| l.ends_with(".deb"))
        .unwrap_or_else(|| panic!("build-deb.sh named no package: {out}"))
        .to_string();
    let deb = root.join(deb);
    let contents = run(Command::new("dpkg-deb").arg("-c").arg(&deb));
    for path in [
        "./usr/bin/nodepass",
        "./lib/systemd/system/nodepass.service",
        "./usr/lib/sysusers.d/nodepass.conf",
        "./etc/nodepass/nodepass.env",
        "./usr/share/bash-completion/completions/nodepass",
        "./usr/share/zsh/vendor-completions/_nodepass",
        "./usr/share/fish/vendor_completions.d/nodepass.fish",
        "./usr/share/man/man1/nodepass.1.gz",
        "./usr/share/doc/nodepass/copyright",
    ] {
        assert!(
            contents.lines().any(|l| l.ends_with(path)),
            "{path} missing from the package:\n{contents}"
        );
    }
    let info = run(Command::new("dpkg-deb").arg("-I").arg(&deb));
    for needle in [
        "Package: nodepass",
        "Section: net",
        "postinst",
        "prerm",
        "postrm",
    ] {
        assert!(info.contains(needle), "{needle} missing:\n{info}");
    }
    let field = |f: &str| run(Command::new("dpkg-deb").args(["-f"]).arg(&deb).arg(f));
    assert_eq!(field("Package").trim(), "nodepass");

    // The control files, as dpkg will run them.
    let ctl = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb").arg("-e").arg(&deb).arg(ctl.path()));
    let read = |name: &str| std::fs::read_to_string(ctl.path().join(name)).unwrap();
    assert_eq!(read("conffiles").trim(), "/etc/nodepass/nodepass.env");
    let postinst = read("postinst");
    assert!(
        postinst.contains("systemd-sysusers nodepass.conf"),
        "{postinst}"
    );
    assert!(
        postinst.contains("try-restart nodepass.service"),
        "upgrade restarts"
    );
    let postrm = read("postrm");
    let purge = postrm.split("purge)").nth(1).expect("a purge branch");
    assert!(
        purge.contains("rm -rf /var/lib/nodepass"),
        "purge deletes the state"
    );
    let remove = postrm
        .split("remove)")
        .nth(1)
        .and_then(|r| r.split("purge)").next())
        .expect("a remove branch");
    assert!(
        !remove.contains("/var/lib/nodepass"),
        "remove keeps the state"
    );
    for script in ["postinst", "prerm", "postrm"] {
        let status = Command::new("sh")
            .arg("-n")
            .arg(ctl.path().join(script))
            .status()
            .unwrap();
        assert!(status.success(), "{script} is not valid sh");
    }

    // The unit in the package runs the packaged binary with the hardening of packaging/.
    let unit_dir = tempfile::tempdir().unwrap();
    run(Command::new("dpkg-deb")
        .arg("-x")
        .arg(&deb)
        .arg(unit_dir.path()));
    let unit = std::fs::read_to_string(unit_dir.path().join("lib/systemd/system/nodepass.service"))
        .unwrap();
    assert!(
        unit.contains("ExecStart=/usr/bin/nodepass ${NODEPASS_MASTER_URL}"),
        "{unit}"
    );
    for line in [
        "StateDirectory=nodepass",
        "User=nodepass",
        "ProtectSystem=strict",
    ] {
        assert!(unit.contains(line), "{line} missing from the unit");
    }
    let installed = unit_dir.path().join("usr/bin/nodepass");
    let version = run(Command::new(&installed).arg("--version"));
    assert!(version.starts_with("nodepass "), "{version}");
}
