//! The policy refusals this replica saw last, for the console: an event sink that keeps
//! the most recent `ACCESS_DENIED` and `CSR_FAILED` events.

use std::collections::VecDeque;
use std::sync::Mutex;

use crank_security_core::{CertificateEvent, EventKind, EventSink};

/// How many refusals are kept.
pub(crate) const KEPT: usize = 200;

/// The last refusals (access denied, certificate requests refused), at most 200.
#[derive(Debug, Default)]
pub struct RecentDenials {
    events: Mutex<VecDeque<CertificateEvent>>,
}

impl RecentDenials {
    /// The refusals kept, newest first.
    pub fn newest_first(&self) -> Vec<CertificateEvent> {
        self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner).iter().rev().cloned().collect()
    }
}

impl EventSink for RecentDenials {
    fn emit(&self, event: &CertificateEvent) {
        if !matches!(event.event, EventKind::AccessDenied | EventKind::CsrFailed) {
            return;
        }
        let mut events = self.events.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        if events.len() == KEPT {
            events.pop_front();
        }
        events.push_back(event.clone());
    }
}

#[cfg(test)]
mod tests {
    use crank_security_core::CorrelationId;

    use super::*;

    #[test]
    fn keeps_only_refusals_and_only_the_last_ones() {
        let sink = RecentDenials::default();
        let cid = CorrelationId::new();
        sink.emit(&CertificateEvent::new(EventKind::CertIssued, &cid));
        for i in 0..KEPT + 5 {
            sink.emit(&CertificateEvent::new(EventKind::AccessDenied, &cid).worker(format!("w{i}")));
        }
        let kept = sink.newest_first();
        assert_eq!(kept.len(), KEPT);
        assert_eq!(kept[0].worker_id.as_deref(), Some(format!("w{}", KEPT + 4).as_str()));
        assert!(kept.iter().all(|e| e.event == EventKind::AccessDenied));
    }
}
