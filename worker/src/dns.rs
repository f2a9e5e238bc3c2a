//! Name resolution for target and tunnel addresses (REFERENCE.md 1, `dns`): IP literals go
//! straight through; names are resolved with the system resolver and kept in a cache keyed
//! by `host:port` for the `dns` TTL (0 = no cache). When a lookup fails, the last address
//! that worked for that name is used (the reference uses the one resolved at start), so a
//! resolver hiccup does not cut a working tunnel.
//!
//! One short mutex guards the cache; it is taken once per dial, never per chunk.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::{anyhow, Context as _};
use nodepass_proto::url::{DnsSetting, HostPort};

#[derive(Debug)]
pub struct Dns {
    ttl: Duration,
    /// host:port -> (address, resolved at)
    cache: Mutex<HashMap<String, (SocketAddr, Instant)>>,
}

impl Dns {
    pub fn new(setting: &DnsSetting) -> Self {
        let (ttl, servers) = match setting {
            DnsSetting::Ttl(d) => (*d, Vec::new()),
            DnsSetting::Servers(list) => (nodepass_proto::url::DEFAULT_DNS_TTL, list.clone()),
        };
        if !servers.is_empty() {
            tracing::warn!(
                "dns: resolving through chosen DNS servers is not supported by this build; using the system resolver (with a {}s cache)",
                ttl.as_secs()
            );
        }
        Dns {
            ttl,
            cache: Mutex::new(HashMap::new()),
        }
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, HashMap<String, (SocketAddr, Instant)>> {
        self.cache.lock().unwrap_or_else(|p| p.into_inner())
    }

    /// Forgets every cached name (the reference clears its cache on each restart).
    pub fn clear(&self) {
        self.cache().clear();
    }

    /// Resolves `hp` to one socket address.
    pub async fn resolve(&self, hp: &HostPort) -> anyhow::Result<SocketAddr> {
        if let Some(sa) = hp.socket_addr() {
            return Ok(sa);
        }
        let key = hp.to_string();
        let cached = self.cache().get(&key).copied();
        if let Some((addr, at)) = cached {
            if !self.ttl.is_zero() && at.elapsed() < self.ttl {
                return Ok(addr);
            }
        }
        match lookup(hp).await {
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
}
