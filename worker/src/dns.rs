//! Name resolution for target and tunnel addresses (REFERENCE.md 1, `dns`): IP literals go
//! straight through. With `dns=<duration>` names are resolved with the system resolver and
//! kept in a cache keyed by `host:port` for that TTL (0 = no cache). With
//! `dns=IP[:port],...` (our extension) names are resolved only through those servers by
//! hickory-resolver (UDP, falling back to TCP for truncated answers), whose own cache keeps
//! each answer for its records' TTL. Either way, when a lookup fails the last address that
//! worked for that name is used (the reference uses the one resolved at start), so a
//! resolver hiccup does not cut a working tunnel.
//!
//! One short mutex guards the cache; it is taken once per dial, never per chunk.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use hickory_resolver::config::{NameServerConfig, ResolveHosts, ResolverConfig, ResolverOpts};
use hickory_resolver::name_server::TokioConnectionProvider;
use hickory_resolver::proto::xfer::Protocol;
use hickory_resolver::TokioResolver;
use nodepass_proto::url::{DnsSetting, HostPort};

pub struct Dns {
    ttl: Duration,
    /// host:port -> (address, resolved at); with `servers` only the last good address.
    cache: Mutex<HashMap<String, (SocketAddr, Instant)>>,
    /// Set when `dns` names servers: every name goes through them (and their cache).
    servers: Option<TokioResolver>,
}

impl std::fmt::Debug for Dns {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Dns")
            .field("ttl", &self.ttl)
            .field("servers", &self.servers.is_some())
            .finish_non_exhaustive()
    }
}

impl Dns {
    pub fn new(setting: &DnsSetting) -> Self {
        let (ttl, servers) = match setting {
            DnsSetting::Ttl(d) => (*d, None),
            DnsSetting::Servers(list) => (
                nodepass_proto::url::DEFAULT_DNS_TTL,
                Some(servers_resolver(list)),
            ),
        };
        Dns {
            ttl,
            cache: Mutex::new(HashMap::new()),
            servers,
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SocketAddr, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every cached name (the reference clears its cache on each restart).
    pub fn clear(&self) {
        self.cache().clear();
        if let Some(r) = &self.servers {
            r.clear_cache();
        }
    }

    /// Resolves `hp` to one socket address.
    pub async fn resolve(&self, hp: &HostPort) -> anyhow::Result<SocketAddr> {
        if let Some(sa) = hp.socket_addr() {
            return Ok(sa);
        }
        let key = hp.to_string();
        let cached = self.cache().get(&key).copied();
        // With chosen servers the resolver's own cache decides freshness (record TTLs).
        if let (Some((addr, at)), None) = (cached, &self.servers) {
            if !self.ttl.is_zero() && at.elapsed() < self.ttl {
                return Ok(addr);
            }
        }
        let found = match &self.servers {
            Some(r) => lookup_with(r, hp).await,
            None => lookup(hp).await,
        };
        match found {
            Ok(addr) => {
                self.cache().insert(key, (addr, Instant::now()));
                Ok(addr)
            }
            Err(e) => match cached {
                Some((addr, _)) => {
                    tracing::warn!("{e:#}; using the last known address {addr}");
                    Ok(addr)
                }
                None => Err(e),
            },
        }
    }
}

/// Resolves once, without the cache (listening addresses).
pub async fn resolve_once(hp: &HostPort) -> anyhow::Result<SocketAddr> {
    match hp.socket_addr() {
        Some(sa) => Ok(sa),
        None => lookup(hp).await,
    }
}

/// A resolver that asks only `list` (each over UDP, and over TCP when an answer is
/// truncated), in order, and ignores the system's resolv.conf and hosts file.
fn servers_resolver(list: &[SocketAddr]) -> TokioResolver {
    let mut config = ResolverConfig::new();
    for &addr in list {
        config.add_name_server(NameServerConfig::new(addr, Protocol::Udp));
        config.add_name_server(NameServerConfig::new(addr, Protocol::Tcp));
    }
    let mut opts = ResolverOpts::default();
    opts.use_hosts_file = ResolveHosts::Never;
    TokioResolver::builder_with_config(config, TokioConnectionProvider::default())
        .with_options(opts)
        .build()
}

async fn lookup_with(resolver: &TokioResolver, hp: &HostPort) -> anyhow::Result<SocketAddr> {
    let ips = resolver
        .lookup_ip(hp.host.as_str())
        .await
        .with_context(|| format!("cannot resolve {hp} with the servers given in dns="))?;
    ips.iter()
        .next()
        .map(|ip| SocketAddr::new(ip, hp.port))
        .ok_or_else(|| anyhow!("{hp} resolves to no address"))
}

async fn lookup(hp: &HostPort) -> anyhow::Result<SocketAddr> {
    let mut addrs = tokio::net::lookup_host((hp.host.as_str(), hp.port))
        .await
        .with_context(|| format!("cannot resolve {hp}"))?;
    addrs
        .next()
        .ok_or_else(|| anyhow!("{hp} resolves to no address"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn literals_bypass_and_names_are_cached() {
        let dns = Dns::new(&DnsSetting::Ttl(Duration::from_secs(60)));
        let lit = HostPort {
            host: "127.0.0.1".into(),
            port: 80,
        };
        assert_eq!(
            dns.resolve(&lit).await.expect("literal"),
            "127.0.0.1:80".parse().expect("addr")
        );
        assert!(dns.cache().is_empty());
        let name = HostPort {
            host: "localhost".into(),
            port: 81,
        };
        let a = dns.resolve(&name).await.expect("localhost resolves");
        assert_eq!(a.port(), 81);
        assert!(a.ip().is_loopback());
        assert!(dns.cache().contains_key("localhost:81"));
        dns.clear();
        assert!(dns.cache().is_empty());
    }

    /// A DNS answer to `query`, built by hand: `ip` as the A record (TTL 0, so the
    /// resolver asks again next time) when given, else an empty answer with `rcode`.
    fn answer(query: &[u8], ip: Option<[u8; 4]>, rcode: u8) -> Option<Vec<u8>> {
        let mut end = 12;
        loop {
            let len = *query.get(end)? as usize;
            end += 1;
            if len == 0 {
                break;
            }
            end += len;
        }
        let qtype = query.get(end..end + 2)?;
        let with_a = rcode == 0 && ip.is_some() && qtype == [0, 1];
        let mut out = Vec::with_capacity(end + 20);
        out.extend_from_slice(&query[..2]);
        out.extend_from_slice(&[
            0x80 | (query[2] & 1),
            0x80 | rcode,
            0,
            1,
            0,
            u8::from(with_a),
            0,
            0,
            0,
            0,
        ]);
        out.extend_from_slice(query.get(12..end + 4)?);
        if let (true, Some(ip)) = (with_a, ip) {
            out.extend_from_slice(&[0xc0, 12, 0, 1, 0, 1, 0, 0, 0, 0, 0, 4]);
            out.extend_from_slice(&ip);
        }
        Some(out)
    }

    #[tokio::test]
    async fn chosen_servers_resolve_names_and_failures_fall_back_to_the_last_good_address() {
        let stub = tokio::net::UdpSocket::bind("127.0.0.1:0")
            .await
            .expect("bind stub");
        let server = stub.local_addr().expect("stub addr");
        let queries = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let seen = queries.clone();
        // The first A query is answered with 127.0.0.7; later ones are refused.
        tokio::spawn(async move {
            let mut buf = [0u8; 512];
            while let Ok((n, from)) = stub.recv_from(&mut buf).await {
                let first = seen.fetch_add(1, std::sync::atomic::Ordering::SeqCst) == 0;
                let reply = if first {
                    answer(&buf[..n], Some([127, 0, 0, 7]), 0)
                } else {
                    answer(&buf[..n], None, 5)
                };
                if let Some(r) = reply {
                    let _ = stub.send_to(&r, from).await;
                }
            }
        });
        let dns = Dns::new(&DnsSetting::Servers(vec![server]));
        let name = HostPort {
            host: "echo.test".into(),
            port: 9,
        };
        let first = dns.resolve(&name).await.expect("the stub answers");
        assert_eq!(first, "127.0.0.7:9".parse().expect("addr"));
        assert!(queries.load(std::sync::atomic::Ordering::SeqCst) >= 1);
        // TTL 0: the next resolve asks again, is refused, and keeps the last good address.
        let again = dns.resolve(&name).await.expect("last good address");
        assert_eq!(again, first);
        assert!(queries.load(std::sync::atomic::Ordering::SeqCst) >= 2);
        // Literals never reach the servers.
        let before = queries.load(std::sync::atomic::Ordering::SeqCst);
        let lit = HostPort {
            host: "127.0.0.9".into(),
            port: 1,
        };
        assert_eq!(
            dns.resolve(&lit).await.expect("literal"),
            "127.0.0.9:1".parse().expect("addr")
        );
        assert_eq!(queries.load(std::sync::atomic::Ordering::SeqCst), before);
    }
}
