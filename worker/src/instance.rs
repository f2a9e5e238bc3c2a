//! One running instance's shared state: its URL, the NP_* tunables, the live figures, the
//! policies and the targets. Built once at start and shared (read-only apart from atomics)
//! by every task of the instance through an `Arc<Instance>`.

use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;
use std::time::Instant;

use nodepass_proto::report::{Ready, Report};
use nodepass_proto::tunables::Tunables;
use nodepass_proto::url::{Role, TunnelUrl};

use crate::dns::Dns;
use crate::figures::Figures;
use crate::output;
use crate::policy::{RelayPolicy, Slots};
use crate::relay::{self, RelayIo, TrafficCounters};
use crate::targets::Targets;

pub struct Instance {
    pub url: TunnelUrl,
    pub tunables: Tunables,
    pub figures: Arc<Figures>,
    pub slots: Slots,
    pub policy: RelayPolicy,
    pub targets: Targets,
    /// The resolve cache shared by target and tunnel dials.
    pub dns: Arc<Dns>,
    /// Resolved mode (1 or 2) once known; 0 before.
    mode: AtomicU8,
    ready_sent: AtomicBool,
    /// When the instance was built, and how long after that the last figures went out (ms):
    /// the idle heartbeat ([`Instance::heartbeat`]) only speaks when nothing else did.
    born: Instant,
    last_stats_ms: AtomicU64,
}

impl Instance {
    pub fn new(url: TunnelUrl, tunables: Tunables) -> Arc<Self> {
        let figures = Arc::new(Figures::default());
        let slots = Slots::new(url.params.slot(), figures.clone());
        let policy = RelayPolicy::new(url.params.read(), url.effective_rate_bytes());
        let dns = Arc::new(Dns::new(&url.params.dns()));
        let targets = Targets::new(
            url.targets.clone(),
            url.params.lbs(),
            dns.clone(),
            url.params.dial(),
            tunables.tcp_dial_timeout,
            tunables.udp_dial_timeout,
        );
        Arc::new(Instance {
            dns,
            url,
            tunables,
            figures,
            slots,
            policy,
            targets,
            mode: AtomicU8::new(0),
            ready_sent: AtomicBool::new(false),
            born: Instant::now(),
            last_stats_ms: AtomicU64::new(0),
        })
    }

    pub fn role(&self) -> Role {
        self.url.role
    }

    pub fn mode(&self) -> u8 {
        self.mode.load(Ordering::Relaxed)
    }

    pub fn set_mode(&self, mode: u8) {
        self.mode.store(mode, Ordering::Relaxed);
    }

    /// Writes the `ready` report the first time the instance is up (not on restarts).
    pub fn announce_ready(&self, listen: Vec<String>) {
        if self.ready_sent.swap(true, Ordering::Relaxed) {
            return;
        }
        output::report(&Report::Ready(Ready {
            mode: self.mode(),
            role: self.role().as_str().to_string(),
            listen,
        }));
    }

    /// Buffer size of the buffered relay (NP_TCP_DATA_BUF_SIZE).
    /// Relays one TCP exchange: `counted` is the user/target-side connection (its bytes are
    /// the TCPRX/TCPTX figures), `far` the other end (a pool entry, or the target in
    /// single-end mode). Logs start and end as the reference does; the end of an exchange is
    /// never an error of the instance.
    pub async fn relay_tcp<A: RelayIo, B: RelayIo>(
        &self,
        counted: &mut A,
        far: &mut B,
        from: &(dyn std::fmt::Display + Sync),
        to: &(dyn std::fmt::Display + Sync),
    ) {
        tracing::info!("Starting exchange: {from} <-> {to}");
        let counters = TrafficCounters {
            rx: &self.figures.tcprx,
            tx: &self.figures.tcptx,
        };
        match relay::relay(counted, far, counters, &self.policy, self.tcp_buf()).await {
            Ok(t) => tracing::info!("Exchange complete: {t}"),
            Err(e) => tracing::info!("Exchange complete: {e}"),
        }
    }

    /// The stats ticker of every mode: fires at once, then every NP_REPORT_INTERVAL; a late
    /// tick is not made up for (the reference's ticker drops missed ticks too).
    pub fn report_ticker(&self) -> tokio::time::Interval {
        let mut tick = tokio::time::interval(self.tunables.report_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        tick
    }

    /// Publishes one round of figures with this instance's mode, the measured `ping` (ms)
    /// and the `pool` figure (idle entries; 0 in single-end mode).
    pub fn publish_stats(&self, ping: u64, pool: u64) {
        self.last_stats_ms
            .store(self.born.elapsed().as_millis() as u64, Ordering::Relaxed);
        output::publish_stats(self.figures.snapshot(self.mode(), ping, pool));
    }

    /// Report mode only: once the instance has reported `ready`, makes sure the master hears
    /// figures at least every NP_REPORT_INTERVAL even while no tunnel session runs (a server
    /// waiting for its client, a client between sessions), with `ping` and `pool` 0, so a
    /// healthy but idle worker is never taken for a silent one. Foreground mode prints no
    /// CHECK_POINT line then, as the reference.
    pub async fn heartbeat(self: Arc<Self>) {
        if !output::report_mode() {
            return;
        }
        let every = self.tunables.report_interval;
        let mut tick = self.report_ticker();
        loop {
            tick.tick().await;
            if !self.ready_sent.load(Ordering::Relaxed) {
                continue;
            }
            let now = self.born.elapsed().as_millis() as u64;
            let last = self.last_stats_ms.load(Ordering::Relaxed);
            if now.saturating_sub(last) >= every.as_millis() as u64 {
                self.publish_stats(0, 0);
            }
        }
    }

    pub fn tcp_buf(&self) -> usize {
        self.tunables.tcp_data_buf_size
    }

    /// Largest UDP datagram carried (NP_UDP_DATA_BUF_SIZE).
    pub fn udp_buf(&self) -> usize {
        self.tunables.udp_data_buf_size
    }
}
