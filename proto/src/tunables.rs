//! The NP_* environment variables of the reference (REFERENCE.md 8), read once at start.
//! Parsing is pure: the caller passes a lookup function (normally `std::env::var`), and a
//! bad value falls back to the default with a warning for the caller to log.

use std::time::Duration;

use crate::duration::{format_go_duration, parse_go_duration};

/// Every tunable with its reference default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Tunables {
    pub semaphore_limit: usize,
    pub tcp_data_buf_size: usize,
    pub udp_data_buf_size: usize,
    pub handshake_timeout: Duration,
    pub tcp_dial_timeout: Duration,
    pub udp_dial_timeout: Duration,
    pub udp_read_timeout: Duration,
    pub pool_get_timeout: Duration,
    pub min_pool_interval: Duration,
    pub max_pool_interval: Duration,
    pub report_interval: Duration,
    pub service_cooldown: Duration,
    pub shutdown_timeout: Duration,
    pub reload_interval: Duration,
    /// Ours (NP_POOL_REFRESH): once the oldest idle pool entry has waited this long, the side
    /// that hands entries out flushes the idle pool (a `flush` signal, which the reference
    /// understands) so the client opens fresh ones before a middlebox with an idle timeout
    /// forgets them. Zero turns it off (the reference's behaviour).
    pub pool_refresh: Duration,
}

impl Default for Tunables {
    fn default() -> Self {
        Tunables {
            semaphore_limit: 65536,
            tcp_data_buf_size: 16384,
            udp_data_buf_size: 16384,
            handshake_timeout: Duration::from_secs(5),
            tcp_dial_timeout: Duration::from_secs(5),
            udp_dial_timeout: Duration::from_secs(5),
            udp_read_timeout: Duration::from_secs(30),
            pool_get_timeout: Duration::from_secs(5),
            min_pool_interval: Duration::from_millis(100),
            max_pool_interval: Duration::from_secs(1),
            report_interval: Duration::from_secs(5),
            service_cooldown: Duration::from_secs(3),
            shutdown_timeout: Duration::from_secs(5),
            reload_interval: Duration::from_secs(3600),
            pool_refresh: Duration::from_secs(50),
        }
    }
}

impl Tunables {
    /// Reads every variable through `lookup`; returns the values and one warning per
    /// variable that was set but unusable.
    pub fn from_lookup(lookup: impl Fn(&str) -> Option<String>) -> (Tunables, Vec<String>) {
        let mut t = Tunables::default();
        let mut warnings = Vec::new();
        let mut int = |name: &str, slot: &mut usize, min: usize| {
            if let Some(v) = lookup(name) {
                match v.trim().parse::<usize>() {
                    Ok(n) if n >= min => *slot = n,
                    _ => warnings.push(format!(
                        "{name}={v:?} is not a whole number >= {min}; using the default {slot}"
                    )),
                }
            }
        };
        int("NP_SEMAPHORE_LIMIT", &mut t.semaphore_limit, 1);
        int("NP_TCP_DATA_BUF_SIZE", &mut t.tcp_data_buf_size, 1);
        int("NP_UDP_DATA_BUF_SIZE", &mut t.udp_data_buf_size, 1);
        let lookup = &lookup;
        let mut dur = |name: &str, slot: &mut Duration, nonzero: bool| {
            if let Some(v) = lookup(name) {
                match parse_go_duration(v.trim()) {
                    Ok(d) if !(nonzero && d.is_zero()) => *slot = d,
                    Ok(_) => warnings.push(format!(
                        "{name}={v:?} must be greater than zero; using the default {}",
                        format_go_duration(*slot)
                    )),
                    Err(e) => warnings.push(format!(
                        "{name}={v:?} is not a duration ({e}); using the default {}",
                        format_go_duration(*slot)
                    )),
                }
            }
        };
        dur("NP_HANDSHAKE_TIMEOUT", &mut t.handshake_timeout, false);
        dur("NP_TCP_DIAL_TIMEOUT", &mut t.tcp_dial_timeout, false);
        dur("NP_UDP_DIAL_TIMEOUT", &mut t.udp_dial_timeout, false);
        dur("NP_UDP_READ_TIMEOUT", &mut t.udp_read_timeout, false);
        dur("NP_POOL_GET_TIMEOUT", &mut t.pool_get_timeout, false);
        dur("NP_MIN_POOL_INTERVAL", &mut t.min_pool_interval, false);
        dur("NP_MAX_POOL_INTERVAL", &mut t.max_pool_interval, false);
        // Zero would make tickers spin (and crashes the reference): refuse it.
        dur("NP_REPORT_INTERVAL", &mut t.report_interval, true);
        dur("NP_SERVICE_COOLDOWN", &mut t.service_cooldown, false);
        dur("NP_SHUTDOWN_TIMEOUT", &mut t.shutdown_timeout, false);
        dur("NP_RELOAD_INTERVAL", &mut t.reload_interval, true);
        dur("NP_POOL_REFRESH", &mut t.pool_refresh, false);
        (t, warnings)
    }

    /// Reads the process environment.
    pub fn from_env() -> (Tunables, Vec<String>) {
        Self::from_lookup(|k| std::env::var(k).ok())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn with(vars: &[(&str, &str)]) -> (Tunables, Vec<String>) {
        let map: HashMap<String, String> = vars
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        Tunables::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn defaults_when_unset() {
        let (t, w) = with(&[]);
        assert_eq!(t, Tunables::default());
        assert!(w.is_empty());
    }

    #[test]
    fn values_are_read() {
        let (t, w) = with(&[
            ("NP_REPORT_INTERVAL", "1s"),
            ("NP_TCP_DATA_BUF_SIZE", "65536"),
            ("NP_SERVICE_COOLDOWN", "0"),
            ("NP_UDP_READ_TIMEOUT", "1m30s"),
            ("NP_POOL_REFRESH", "0"),
        ]);
        assert!(w.is_empty());
        assert!(t.pool_refresh.is_zero(), "0 turns the pool refresh off");
        assert_eq!(t.report_interval, Duration::from_secs(1));
        assert_eq!(t.tcp_data_buf_size, 65536);
        assert_eq!(t.service_cooldown, Duration::ZERO);
        assert_eq!(t.udp_read_timeout, Duration::from_secs(90));
    }

    #[test]
    fn bad_values_fall_back_with_a_warning() {
        let (t, w) = with(&[
            ("NP_REPORT_INTERVAL", "0"),
            ("NP_POOL_GET_TIMEOUT", "-1s"),
            ("NP_SEMAPHORE_LIMIT", "lots"),
            ("NP_TCP_DATA_BUF_SIZE", "-5"),
        ]);
        assert_eq!(t, Tunables::default());
        assert_eq!(w.len(), 4, "{w:?}");
        assert!(w[0].contains("NP_SEMAPHORE_LIMIT"));
    }
}
