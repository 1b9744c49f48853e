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

#[cfg(test)]
mod tests {
    use crank_security_core::{CorrelationId, EventKind};

    use super::*;

    #[tokio::test]
    async fn subscribers_receive_events_in_order() {
        let sink = ChannelSink::new(8);
        let mut rx = sink.subscribe();
        let cid = CorrelationId::new();
        sink.emit(&CertificateEvent::new(EventKind::CsrGenerated, &cid));
        sink.emit(&CertificateEvent::new(EventKind::CertIssued, &cid));
        assert_eq!(rx.recv().await.unwrap().event, EventKind::CsrGenerated);
        let second = rx.recv().await.unwrap();
        assert_eq!(second.event, EventKind::CertIssued);
        assert_eq!(second.correlation_id, cid);
    }
}
