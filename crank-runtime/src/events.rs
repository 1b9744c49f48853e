//! Event sinks beyond the JSON log: an in-memory channel for tests and embedding.
//! (The Prometheus sink is [`crate::metrics::PrometheusSink`].)

use crank_security_core::{CertificateEvent, EventSink};
use tokio::sync::broadcast;

/// Broadcasts every event to subscribers; slow subscribers lose the oldest events
/// rather than slowing the emitter.
#[derive(Debug, Clone)]
pub struct ChannelSink {
    tx: broadcast::Sender<CertificateEvent>,
}

impl ChannelSink {
    /// A channel keeping up to `capacity` unread events per subscriber.
    pub fn new(capacity: usize) -> Self {
        let (tx, _) = broadcast::channel(capacity.max(1));
        Self { tx }
    }

    /// A receiver of every event emitted from now on.
    pub fn subscribe(&self) -> broadcast::Receiver<CertificateEvent> {
        self.tx.subscribe()
    }
}

impl Default for ChannelSink {
    fn default() -> Self {
        Self::new(1024)
    }
}

impl EventSink for ChannelSink {
    fn emit(&self, event: &CertificateEvent) {
        // No subscriber is not an error.
        let _ = self.tx.send(event.clone());
    }
}
