//! A tunnel pair on loopback: a server and a client (ours, the Go reference's, or one of
//! each), over any pool type and TLS mode, in reverse or forward flow, with an echo server
//! as the target, started and waited for until TCP goes through it.
//!
//! ```no_run
//! use nodepass_testkit::pair::Spec;
//! let pair = Spec::new(2, 1).client_q("&min=4").start();
//! nodepass_testkit::echo_once(&pair.users, b"hi", std::time::Duration::from_secs(5)).unwrap();
//! ```

use std::time::Duration;

use crate::go::{go_bin, Impl};
use crate::pki::Pki;
use crate::{free_port, wait_tunnel, Echo, Proc};

/// How long a pair may take to come up before the test fails with both outputs.
pub const UP: Duration = Duration::from_secs(30);

/// What to start.
#[derive(Clone, Debug)]
pub struct Spec {
    pub server: Impl,
    pub client: Impl,
    /// The pool type (`type=` on the server: 0 TCP, 1 QUIC, 2 WebSocket, 3 HTTP/2).
    pub pool_type: u8,
    /// The server's TLS mode; 2 makes a [`Pki`] and has the client verify it.
    pub tls: u8,
    /// Forward flow (the client listens for users, the server dials the target) instead of
    /// reverse (the server listens for users, the client dials the target).
    pub forward: bool,
    /// The tunnel key.
    pub key: String,
    /// Appended to the server's / client's URL query (`&max=16`).
    pub server_q: String,
    pub client_q: String,
    /// Extra environment for both processes.
    pub env: Vec<(String, String)>,
    /// Our processes as `nodepass worker <url>` (JSON report lines) instead of the
    /// foreground mode's human log lines (the default, the form the Go binary prints too).
    pub worker: bool,
    /// Where the flow ends instead of the pair's echo server (a test's own target).
    pub target: Option<String>,
    /// The `log` level of both URLs.
    pub log: &'static str,
}

impl Spec {
    /// Our server and our client over `pool_type` with TLS mode `tls`, reverse flow.
    pub fn new(pool_type: u8, tls: u8) -> Spec {
        Spec {
            server: Impl::Ours,
            client: Impl::Ours,
            pool_type,
            tls,
            forward: false,
            key: "secret".into(),
            server_q: String::new(),
            client_q: String::new(),
            env: Vec::new(),
            worker: false,
            target: None,
            log: "debug",
        }
    }
    /// The flow ends at `addr` (a test's own target) instead of the pair's echo server.
    pub fn target(mut self, addr: &str) -> Spec {
        self.target = Some(addr.to_string());
        self
    }
    pub fn log(mut self, level: &'static str) -> Spec {
        self.log = level;
        self
    }
    /// Who plays the server and who the client.
    pub fn sides(mut self, server: Impl, client: Impl) -> Spec {
        self.server = server;
        self.client = client;
        self
    }
    pub fn forward(mut self, forward: bool) -> Spec {
        self.forward = forward;
        self
    }
    pub fn server_q(mut self, q: &str) -> Spec {
        self.server_q.push_str(q);
        self
    }
    pub fn client_q(mut self, q: &str) -> Spec {
        self.client_q.push_str(q);
        self
    }
    pub fn env(mut self, k: &str, v: &str) -> Spec {
        self.env.push((k.into(), v.into()));
        self
    }
    pub fn worker(mut self) -> Spec {
        self.worker = true;
        self
    }
    /// True when the pair runs the certificate fingerprint exchange: tls=1, or tls=0 on the
    /// QUIC and HTTP/2 pools, which always run TLS (both implementations upgrade to 1).
    pub fn verifies_fingerprint(&self) -> bool {
        self.tls == 1 || (self.tls == 0 && matches!(self.pool_type, 1 | 3))
    }
    /// Starts the pair and waits until TCP goes through it; None (the test skips, the
    /// reason printed) when a Go side is asked for and `NODEPASS_GO_BIN` names no binary.
    pub fn try_start(&self) -> Option<Pair> {
        let go = if self.server == Impl::Go || self.client == Impl::Go {
            Some(go_bin()?)
        } else {
            None
        };
        Some(self.start_with(go.as_deref()))
    }
    /// Starts a pair of our own (panics when a Go side is asked for: use [`Spec::try_start`])
    /// and waits until TCP goes through it.
    pub fn start(&self) -> Pair {
        let pair = self.start_unchecked();
        wait_tunnel(&pair.users, UP, &[&pair.server, &pair.client]);
        pair
    }

    /// [`Spec::start`] without the wait for traffic (the server is listening; the test
    /// decides what "up" means, e.g. with a target that is no echo server).
    pub fn start_unchecked(&self) -> Pair {
        assert!(
            self.server == Impl::Ours && self.client == Impl::Ours,
            "a pair with the Go reference starts with try_start (it may skip)"
        );
        self.launch(None)
    }

    fn start_with(&self, go: Option<&str>) -> Pair {
        let pair = self.launch(go);
        wait_tunnel(&pair.users, UP, &[&pair.server, &pair.client]);
        pair
    }

    fn launch(&self, go: Option<&str>) -> Pair {
        eprintln!(
            "--- pair: server {:?}, client {:?}, type {}, tls {}, {}",
            self.server,
            self.client,
            self.pool_type,
            self.tls,
            if self.forward { "forward" } else { "reverse" }
        );
        let echo = Echo::start();
        let (tunnel, user_port) = (free_port(), free_port());
        let users = format!("127.0.0.1:{user_port}");
        let target = self.target.clone().unwrap_or_else(|| echo.addr());
        let (server_target, client_target, mode) = if self.forward {
            (target, users.clone(), 2)
        } else {
            (users.clone(), target, 1)
        };
        let pki = (self.tls == 2).then(Pki::new);
        let mut env: Vec<(&str, &str)> = self
            .env
            .iter()
            .map(|(k, v)| (k.as_str(), v.as_str()))
            .collect();
        let (tls_q, sni_q) = match &pki {
            Some(p) => {
                env.push(("SSL_CERT_FILE", p.ca.as_str()));
                env.push(("NP_HANDSHAKE_TIMEOUT", "20s"));
                (
                    format!("&tls=2&crt={}&key={}", p.crt, p.key),
                    "&sni=tunnel.test",
                )
            }
            None => (format!("&tls={}", self.tls), ""),
        };
        let key = &self.key;
        let server_url = format!(
            "server://{key}@127.0.0.1:{tunnel}/{server_target}?mode={mode}&type={}&log={}{tls_q}{}",
            self.pool_type, self.log, self.server_q
        );
        let client_url = format!(
            "client://{key}@127.0.0.1:{tunnel}/{client_target}?mode=2&log={}{sni_q}{}",
            self.log, self.client_q
        );
        let run = |who: Impl, name: &str, url: &str| match (who, go) {
            (Impl::Go, Some(go)) => Proc::start(name, go, &[url], &env),
            (Impl::Go, None) => unreachable!("checked by try_start"),
            (Impl::Ours, _) if self.worker => Proc::worker(name, url, &env),
            (Impl::Ours, _) => Proc::foreground(name, url, &env),
        };
        let server = run(self.server, "server", &server_url);
        server.wait_line("the server waiting for its client", UP, |l| {
            l.contains("Pending tunnel handshake") || l.contains("\"kind\":\"ready\"")
        });
        let client = run(self.client, "client", &client_url);
        Pair {
            echo,
            server,
            client,
            tunnel,
            users,
            _pki: pki,
        }
    }
}

/// A started pair, stopped when dropped.
pub struct Pair {
    /// The target both flows end at (TCP and UDP echo).
    pub echo: Echo,
    pub server: Proc,
    pub client: Proc,
    /// The server's tunnel port.
    pub tunnel: u16,
    /// Where users connect (`127.0.0.1:PORT`): the server's user port in reverse flow, the
    /// client's in forward flow.
    pub users: String,
    _pki: Option<Pki>,
}

impl Pair {
    /// (users, server, client), for tests that handle the processes one by one. The echo
    /// server keeps serving; a tls=2 pair's certificate files are removed (the processes
    /// read them at start).
    pub fn into_parts(self) -> (String, Proc, Proc) {
        (self.users, self.server, self.client)
    }

    /// Both outputs, for failure messages.
    pub fn dumps(&self) -> String {
        format!("{}\n{}", self.server.dump(), self.client.dump())
    }
}

/// Our reverse-flow pair as worker processes (JSON report lines) with `client_q` appended
/// to the client's URL (e.g. `&min=4`).
pub fn reverse_pair(pool_type: u8, client_q: &str) -> Pair {
    Spec::new(pool_type, 0).worker().client_q(client_q).start()
}

/// The pool types (`type=N`): 0 TCP, 1 QUIC, 2 WebSocket, 3 HTTP/2.
pub const POOL_TYPES: [u8; 4] = [0, 1, 2, 3];

/// Runs `body` once per pool type, saying first which (so a failure's captured output names
/// the type that failed).
pub fn each_type(body: impl Fn(u8)) {
    for t in POOL_TYPES {
        eprintln!("--- pool type {t}");
        body(t);
    }
}
