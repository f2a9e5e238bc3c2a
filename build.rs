//! Build script of the `nodepass` binary: the git commit it is built from, for
//! `nodepass --version`. A build outside a git checkout (a source tarball, `cargo install`
//! from a registry) says `unknown`; `NODEPASS_COMMIT` in the environment overrides it (for
//! packagers that build from an exported tree).

use std::process::Command;

fn main() {
    println!("cargo:rerun-if-env-changed=NODEPASS_COMMIT");
    let commit = std::env::var("NODEPASS_COMMIT")
        .ok()
        .filter(|c| !c.is_empty())
        .or_else(git_commit)
        .unwrap_or_else(|| "unknown".to_string());
    println!("cargo:rustc-env=NODEPASS_COMMIT={commit}");
}

fn git(args: &[&str]) -> Option<String> {
    let out = Command::new("git").args(args).output().ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    Some(text.trim().to_string())
}

fn git_commit() -> Option<String> {
    // Rebuild when HEAD moves (a commit, a checkout) or the index changes (dirty state);
    // `--git-path` finds each file in a worktree too.
    let mut watched = vec!["HEAD".to_string(), "index".to_string()];
    if let Some(head_ref) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watched.push(head_ref);
    }
    for f in watched {
        let path = git(&["rev-parse", "--git-path", &f])?;
        println!("cargo:rerun-if-changed={path}");
    }
    let hash = git(&["rev-parse", "--short=12", "HEAD"])?;
    let dirty =
        git(&["status", "--porcelain", "--untracked-files=no"]).is_some_and(|s| !s.is_empty());
    Some(if dirty { format!("{hash}-dirty") } else { hash })
}
