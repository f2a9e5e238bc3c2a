//! Fan-out of instance events to SSE subscribers.
//!
//! Each event is rendered once (`event: instance\ndata: <json>\n\n`) and put on a tokio
//! broadcast ring of [`EVENT_BUFFER`] frames shared by all subscribers, so publishing never
//! blocks and costs the same with 1 or 100 subscribers. A subscriber that falls more than
//! the ring's length behind is disconnected (policy: drop, not block): its EventSource
//! reconnects after the `retry: 3000` the stream announced and receives a fresh `initial`
//! snapshot of every instance, which is a complete resync.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::SystemTime;

use bytes::Bytes;
use tokio::sync::broadcast;

use crate::gojson;
use crate::model::{EventKind, Instance, InstanceEvent};

/// Frames a subscriber may lag behind before it is disconnected.
pub const EVENT_BUFFER: usize = 1024;

/// One rendered SSE frame.
#[derive(Clone, Debug)]
pub struct Frame {
    pub bytes: Bytes,
    /// The stream ends after this frame (a `shutdown` event).
    pub close: bool,
}

/// The publisher side, cheap to clone.
#[derive(Clone)]
pub struct EventHub {
    tx: broadcast::Sender<Frame>,
    /// Events that subscribers missed because they lagged and were dropped (a metric).
    dropped: Arc<AtomicU64>,
}

impl Default for EventHub {
    fn default() -> Self {
        Self::new()
    }
}

impl EventHub {
    pub fn new() -> Self {
        let (tx, _) = broadcast::channel(EVENT_BUFFER);
        EventHub {
            tx,
            dropped: Arc::new(AtomicU64::new(0)),
        }
    }

    /// Renders one event frame.
    pub fn render(kind: EventKind, instance: Option<&Instance>, logs: &str) -> Bytes {
        let ev = InstanceEvent {
            kind,
            time: gojson::rfc3339_nano(SystemTime::now()),
            instance,
            logs,
        };
        let mut out = Vec::with_capacity(640);
        out.extend_from_slice(b"event: instance\ndata: ");
        gojson::write(&mut out, &ev);
        out.extend_from_slice(b"\n\n");
        Bytes::from(out)
    }

    /// Publishes an event to every current subscriber; never blocks.
    pub fn publish(&self, kind: EventKind, instance: Option<&Instance>, logs: &str) {
        if self.tx.receiver_count() == 0 {
            return;
        }
        // A `log` event's text is a log line: its tunnel keys are masked like every other
        // log line (the instance's `url` beside it keeps the key, as dashboards need it).
        let logs = nodepass_proto::redact::mask_tunnel_keys(logs);
        let _ = self.tx.send(Frame {
            bytes: Self::render(kind, instance, &logs),
            close: false,
        });
    }

    /// Sends `shutdown` to every subscriber and ends every stream (master stop, API key
    /// regeneration).
    pub fn close_all(&self) {
        let _ = self.tx.send(Frame {
            bytes: Self::render(EventKind::Shutdown, None, ""),
            close: true,
        });
    }

    pub fn subscribe(&self) -> broadcast::Receiver<Frame> {
        self.tx.subscribe()
    }

    pub fn subscriber_count(&self) -> usize {
        self.tx.receiver_count()
    }

    /// Records that a subscriber was disconnected after missing `missed` events.
    pub fn note_lagged(&self, missed: u64) {
        self.dropped.fetch_add(missed, Ordering::Relaxed);
    }

    /// Events missed by subscribers that were disconnected for lagging, since start.
    pub fn dropped_events(&self) -> u64 {
        self.dropped.load(Ordering::Relaxed)
    }
}
