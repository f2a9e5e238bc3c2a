//! The `nodepass` binary: command-line parsing only. The URL picks the role:
//! `server://` and `client://` run one tunnel end in the foreground, `master://` runs the
//! supervisor with its API, and `nodepass worker <url>` runs one instance for a master,
//! reporting as JSON lines on stdout. A master runs `nodepass worker -` and writes the URL
//! to the worker's stdin, so the tunnel key never appears in the process list (`ps`, and
//! /proc/<pid>/cmdline, are readable by every local user).

use std::process::ExitCode;

use clap::error::ErrorKind;
use clap::{CommandFactory, Parser, Subcommand};
use nodepass_proto::redact::mask_tunnel_keys;
use nodepass_proto::url::{self, NodeUrl};

const EXAMPLES: &str = "\
Examples:
  nodepass \"server://secret@:10101/127.0.0.1:8080?tls=1\"
      tunnel server: clients handshake on port 10101; users reach 127.0.0.1:8080 through it
  nodepass \"client://secret@server.example.com:10101/127.0.0.1:8080\"
      tunnel client for the server above
  nodepass \"server://:10101/10.0.0.5:80,10.0.0.6:80?lbs=2&read=1m\"
      two targets, the second as a backup; key derived from the port (same on both ends)
  nodepass \"client://127.0.0.1:1080/10.0.0.5:80\"
      single-end forwarding: listen on 127.0.0.1:1080, relay to 10.0.0.5:80
  nodepass \"master://0.0.0.0:9090/api?log=info\"
      master with the REST + SSE API at http://host:9090/api/v1 (API key printed at start)
  nodepass worker \"server://...\"
      what a master runs per instance: the same tunnel, JSON report lines on stdout
  echo \"server://...\" | nodepass worker -
      the same, URL read from stdin: the key stays out of the process list (`ps`)

URL: scheme://[key@]host:port/target[,target...]?param=value&...
     IPv6 hosts in brackets ([::1]:10101); an empty host (:10101) listens on all interfaces.
Parameters: log tls crt key dns sni lbs min max mode type dial read rate slot proxy block
notcp noudp (see README.md for each one's meaning, default and range).
A bad URL or argument exits with status 2 and a one-line message on stderr.";

/// `nodepass --version`: the package version and the commit it was built from (build.rs).
const VERSION: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    " (commit ",
    env!("NODEPASS_COMMIT"),
    ")"
);

#[derive(Parser, Debug)]
#[command(
    name = "nodepass",
    version = VERSION,
    about = "TCP/UDP tunnel with a management API, wire-compatible with NodePass v1.14.0",
    after_help = EXAMPLES,
    args_conflicts_with_subcommands = true
)]
struct Cli {
    /// The instance URL: server://..., client://... or master://...
    url: Option<String>,

    #[command(subcommand)]
    command: Option<Command>,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Import a Go NodePass master's state (its gob/nodepass.gob) into this master's state:
    /// every instance with its id, alias, URL, restart policy, tags, peer and traffic
    /// totals, and the API key, so dashboards keep working unchanged. Stop both masters
    /// first; the Go file is only read.
    Import {
        /// Path of the Go master's state file (gob/nodepass.gob beside its executable)
        gob: std::path::PathBuf,
        /// State directory to import into [default: NP_STATE_DIR, else nodepass-state
        /// beside this executable]
        #[arg(long, value_name = "DIR")]
        state: Option<std::path::PathBuf>,
        /// Replace a state that already holds instances (refused without it)
        #[arg(long)]
        replace: bool,
    },
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell) to stdout,
    /// e.g. `nodepass completions bash > /etc/bash_completion.d/nodepass`.
    Completions {
        /// The shell to complete for
        shell: clap_complete::Shell,
    },
    /// Print the manual page (roff) to stdout, e.g. `nodepass man | man -l -`.
    Man,
    /// Run one tunnel instance for a master: JSON report lines on stdout.
    Worker {
        /// The instance URL: server://... or client://...; `-` reads it from the first line
        /// of stdin instead (what the master does: keeps the key out of `ps`)
        url: String,
    },
}

/// Exit status for anything wrong with the command line or the URL (as clap uses).
const USAGE_ERROR: u8 = 2;

/// Longest URL accepted on stdin (the master's API limits URLs far below this).
const MAX_STDIN_URL: u64 = 64 * 1024;

/// The URL of `nodepass worker -`: the first line of stdin, surrounding blanks trimmed.
fn read_url_from_stdin() -> Result<String, String> {
    use std::io::{BufRead, Read};
    let mut line = String::new();
    std::io::stdin()
        .lock()
        .take(MAX_STDIN_URL + 1)
        .read_line(&mut line)
        .map_err(|e| format!("cannot read the URL from stdin: {e}"))?;
    if line.len() as u64 > MAX_STDIN_URL {
        return Err(format!(
            "the URL on stdin is longer than {MAX_STDIN_URL} bytes"
        ));
    }
    let url = line.trim();
    if url.is_empty() {
        return Err(
            "`nodepass worker -` reads the URL from stdin, but stdin was empty; \
             pipe the URL in or pass it as the argument"
                .to_string(),
        );
    }
    Ok(url.to_string())
}

fn main() -> ExitCode {
    // clap words a second URL as a subcommand clash; say what is wrong instead.
    let positional: Vec<String> = std::env::args_os()
        .skip(1)
        .map(|a| a.to_string_lossy().into_owned())
        .filter(|a| !a.starts_with('-'))
        .collect();
    let urls = positional.len() - usize::from(positional.first().is_some_and(|a| a == "worker"));
    let other_subcommand = positional
        .first()
        .is_some_and(|a| ["import", "completions", "man"].contains(&a.as_str()));
    if urls > 1 && !other_subcommand {
        eprintln!(
            "nodepass: expected one URL, got {urls} arguments (quote the URL in the shell); try `nodepass --help` for examples"
        );
        return ExitCode::from(USAGE_ERROR);
    }
    let cli = match Cli::try_parse() {
        Ok(cli) => cli,
        Err(e) => match e.kind() {
            ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
                // Help and version go to stdout with status 0; a failed write has nowhere
                // better to be reported.
                let _ = e.print();
                return ExitCode::SUCCESS;
            }
            _ => {
                // clap's own report spans several lines; keep the first, as one line.
                let rendered = e.to_string();
                let first = rendered.lines().next().unwrap_or("invalid arguments");
                let first = first.strip_prefix("error: ").unwrap_or(first);
                eprintln!("nodepass: {first}; try `nodepass --help` for examples");
                return ExitCode::from(USAGE_ERROR);
            }
        },
    };
    let (raw, worker_mode) = match (cli.command, cli.url) {
        (
            Some(Command::Import {
                gob,
                state,
                replace,
            }),
            _,
        ) => return import(&gob, state, replace),
        (Some(Command::Completions { shell }), _) => {
            clap_complete::generate(
                shell,
                &mut Cli::command(),
                "nodepass",
                &mut std::io::stdout(),
            );
            return ExitCode::SUCCESS;
        }
        (Some(Command::Man), _) => {
            let page = clap_mangen::Man::new(Cli::command());
            return match page.render(&mut std::io::stdout()) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    eprintln!("nodepass: cannot write the manual page: {e}");
                    ExitCode::from(1)
                }
            };
        }
        (Some(Command::Worker { url }), _) if url == "-" => match read_url_from_stdin() {
            Ok(url) => (url, true),
            Err(e) => {
                eprintln!("nodepass: {e}");
                return ExitCode::from(USAGE_ERROR);
            }
        },
        (Some(Command::Worker { url }), _) => (url, true),
        (None, Some(url)) => (url, false),
        (None, None) => {
            eprintln!("nodepass: missing URL; try `nodepass --help` for examples");
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let parsed = match url::parse(&raw) {
        Ok(p) => p,
        Err(e) => {
            // The message quotes the URL; its key stays out of logs that collect stderr.
            eprintln!("nodepass: {}", mask_tunnel_keys(&e.to_string()));
            return ExitCode::from(USAGE_ERROR);
        }
    };
    let result = match (parsed, worker_mode) {
        (NodeUrl::Tunnel(t), worker) => nodepass_worker::run(t, worker),
        (NodeUrl::Master(_), true) => {
            eprintln!("nodepass: a worker runs server:// or client:// URLs, not master://");
            return ExitCode::from(USAGE_ERROR);
        }
        (NodeUrl::Master(m), false) => nodepass_master::run(m),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodepass: {}", mask_tunnel_keys(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}

/// `nodepass import`: the Go master's state into ours, with a summary of what was done.
fn import(gob: &std::path::Path, state: Option<std::path::PathBuf>, replace: bool) -> ExitCode {
    let state = match state {
        Some(s) => s,
        None => match std::env::current_exe() {
            Ok(exe) => nodepass_master::state_dir_from_env(&exe),
            Err(e) => {
                eprintln!("nodepass: cannot find this executable's path ({e}); give --state DIR");
                return ExitCode::from(1);
            }
        },
    };
    match nodepass_master::import::import_into(gob, &state, replace) {
        Ok(done) => {
            println!(
                "Imported {} instance(s) from {} into {} ({} start with the master); {}. \
                 Start the master on this state to run them.",
                done.instances,
                gob.display(),
                state.display(),
                done.autostart,
                if done.key {
                    "the Go master's API key and master id are kept"
                } else {
                    "the file had no API key record: the master keeps its own key"
                }
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("nodepass: {}", mask_tunnel_keys(&format!("{e:#}")));
            ExitCode::from(1)
        }
    }
}
