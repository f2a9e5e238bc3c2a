//! The `nodepass` binary: command-line parsing only. The URL picks the role:
//! `server://` and `client://` run one tunnel end in the foreground, `master://` runs the
//! supervisor with its API, and `nodepass worker <url>` runs one instance for a master,
//! reporting as JSON lines on stdout.

use std::process::ExitCode;

use clap::{Parser, Subcommand};
use nodepass_proto::url::{self, NodeUrl};

const EXAMPLES: &str = "\
Examples:
  nodepass \"server://secret@0.0.0.0:10101/127.0.0.1:8080?tls=1\"
      tunnel server: clients handshake on :10101, users reach 127.0.0.1:8080 through it
  nodepass \"client://secret@server.example.com:10101/127.0.0.1:8080\"
      tunnel client for the server above
  nodepass \"client://127.0.0.1:1080/10.0.0.5:80\"
      single-end forwarding: listen on 127.0.0.1:1080, relay to 10.0.0.5:80
  nodepass \"master://0.0.0.0:9090/api?log=info\"
      master with the REST + SSE API at http://host:9090/api/v1 (API key printed at start)

URL: scheme://[key@]host:port/target[,target...]?param=value&...
Parameters: log tls crt key dns sni lbs min max mode type dial read rate slot proxy block
notcp noudp (see README.md for each one's meaning, default and range).";

#[derive(Parser, Debug)]
#[command(
    name = "nodepass",
    version,
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
    /// Run one tunnel instance for a master: JSON report lines on stdout.
    Worker {
        /// The instance URL: server://... or client://...
        url: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let (raw, worker_mode) = match (cli.command, cli.url) {
        (Some(Command::Worker { url }), _) => (url, true),
        (None, Some(url)) => (url, false),
        (None, None) => {
            eprintln!("nodepass: missing URL; try `nodepass --help` for examples");
            return ExitCode::from(2);
        }
    };
    let parsed = match url::parse(&raw) {
        Ok(p) => p,
        Err(e) => {
            eprintln!("nodepass: {e}");
            return ExitCode::from(2);
        }
    };
    let result = match (parsed, worker_mode) {
        (NodeUrl::Tunnel(t), worker) => nodepass_worker::run(t, worker),
        (NodeUrl::Master(_), true) => {
            eprintln!("nodepass: a worker runs server:// or client:// URLs, not master://");
            return ExitCode::from(2);
        }
        (NodeUrl::Master(m), false) => nodepass_master::run(m),
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("nodepass: {e:#}");
            ExitCode::from(1)
        }
    }
}
