//! Registration entries: which agent may obtain certificates for which worker id, for
//! the processes matching which selectors. Administrators create and delete them; the CA
//! signs for an agent only the worker ids an entry assigns to it.

use crank_security_core::{Selector, WorkerId, rfc3339};
use time::OffsetDateTime;

use super::LocalCa;
use crate::error::CaError;
use crate::store::{RegistrationEntry, StoreError};

/// The request itself is wrong.
fn invalid(code: &'static str, message: impl Into<String>) -> CaError {
    CaError::Invalid { code, message: message.into() }
}

impl LocalCa {
    /// Records a registration entry: agent `agent_id` may obtain certificates for
    /// `worker_id`, for processes that match every one of `selectors`. The selectors are
    /// stored canonical and sorted. Refused (`CaError::Invalid`) when a worker id or a
    /// selector is not valid (`bad_worker_id`, `bad_agent_id`, `bad_selector`), when the
    /// worker is the agent itself (`bad_entry`), when the worker id is a name of the CA
    /// service (`reserved_name`), or when an identical entry exists (`duplicate_entry`,
    /// naming it).
    pub async fn create_entry(
        &self,
        worker_id: &str,
        selectors: &[String],
        agent_id: &str,
        created_by: &str,
    ) -> Result<RegistrationEntry, CaError> {
        let worker = WorkerId::new(worker_id).map_err(|e| invalid("bad_worker_id", e.to_string()))?;
        let agent = WorkerId::new(agent_id)
            .map_err(|e| invalid("bad_agent_id", format!("the agent must be a worker id: {e}")))?;
        let selectors = Selector::parse_all(selectors).map_err(|e| invalid("bad_selector", e.to_string()))?;
        if worker == agent {
            return Err(invalid(
                "bad_entry",
                format!(
                    "an entry cannot assign agent {agent} its own worker id; an agent gets its own identity with a join token"
                ),
            ));
        }
        if self.reserved_names.iter().any(|n| n == worker.as_str()) {
            return Err(invalid(
                "reserved_name",
                format!("{worker:?} is a name of the CA service itself; no worker certificate may carry it"),
            ));
        }
        // At the precision PostgreSQL keeps, so that both stores hand back this text.
        let now = OffsetDateTime::now_utc();
        let now = now.replace_nanosecond(now.nanosecond() / 1_000 * 1_000).unwrap_or(now);
        let entry = RegistrationEntry {
            id: uuid::Uuid::new_v4().to_string(),
            worker_id: worker.to_string(),
            // Sorted by `parse_all`; the texts sorted again, as the store keys them.
            selectors: {
                let mut texts: Vec<String> = selectors.iter().map(ToString::to_string).collect();
                texts.sort();
                texts
            },
            agent_id: agent.to_string(),
            created_at: rfc3339(now),
            created_by: created_by.to_owned(),
        };
        self.store.create_entry(&entry).await.map_err(|e| match e {
            StoreError::DuplicateEntry(id) => invalid(
                "duplicate_entry",
                format!(
                    "registration entry {id} already assigns worker id {worker} to agent {agent} with the same selectors"
                ),
            ),
            other => CaError::unavailable(format!("the CA could not record the registration entry: {other}")),
        })?;
        Ok(entry)
    }

    /// Registration entries, oldest first; only `agent_id`'s when given.
    pub async fn entries(&self, agent_id: Option<&str>) -> Result<Vec<RegistrationEntry>, CaError> {
        self.store
            .entries(agent_id)
            .await
            .map_err(|e| CaError::unavailable(format!("the CA could not read the registration entries: {e}")))
    }

    /// Deletes registration entry `id`; `CaError::NotFound` (`unknown_entry`) when there
    /// is none.
    pub async fn delete_entry(&self, id: &str) -> Result<(), CaError> {
        match self.store.delete_entry(id).await {
            Ok(true) => Ok(()),
            Ok(false) => Err(CaError::not_found("unknown_entry", format!("no registration entry with id {id}"))),
            Err(e) => Err(CaError::unavailable(format!("the CA could not delete the registration entry: {e}"))),
        }
    }

    /// The entry assigning `worker_id` to `agent_id`, if any (the CA signs for an agent
    /// only worker ids assigned to it): the oldest, when several do (with other
    /// selectors).
    pub async fn entry_for(&self, agent_id: &str, worker_id: &str) -> Result<Option<RegistrationEntry>, CaError> {
        self.store.entry_for(agent_id, worker_id).await.map_err(|e| CaError::unavailable(e.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use crate::authority::test_ca as ca;
    use crate::error::CaError;
    use crate::files::CaDir;

    fn sel(items: &[&str]) -> Vec<String> {
        items.iter().map(|s| (*s).to_owned()).collect()
    }

    fn code(e: CaError) -> (&'static str, String) {
        match e {
            CaError::Invalid { code, message } => (code, message),
            other => panic!("expected Invalid, got {other:?}"),
        }
    }

    #[tokio::test]
    async fn entries_are_validated_canonical_and_sorted() {
        let (_tmp, ca) = ca().await;
        let sha = format!("unix:sha256:{}", "AB".repeat(32));
        let e = ca.create_entry("web", &sel(&["unix:uid:1000", &sha, "unix:gid:10"]), "agent-node1", "alice").await;
        let e = e.unwrap();
        assert_eq!(e.selectors, sel(&["unix:gid:10", &format!("unix:sha256:{}", "ab".repeat(32)), "unix:uid:1000"]));
        assert_eq!((e.worker_id.as_str(), e.agent_id.as_str(), e.created_by.as_str()), ("web", "agent-node1", "alice"));
        assert!(uuid::Uuid::parse_str(&e.id).is_ok(), "{}", e.id);
        assert_eq!(ca.entries(None).await.unwrap(), std::slice::from_ref(&e));
        assert_eq!(ca.entries(Some("agent-node1")).await.unwrap(), std::slice::from_ref(&e));
        assert!(ca.entries(Some("agent-node2")).await.unwrap().is_empty());
        assert_eq!(ca.entry_for("agent-node1", "web").await.unwrap(), Some(e.clone()));
        assert_eq!(ca.entry_for("agent-node2", "web").await.unwrap(), None);
        assert_eq!(ca.entry_for("agent-node1", "db").await.unwrap(), None);

        let cases: [(&str, Vec<String>, &str, &str, &str); 9] = [
            ("Web!", sel(&["unix:uid:1"]), "agent-node1", "bad_worker_id", "worker id"),
            ("", sel(&["unix:uid:1"]), "agent-node1", "bad_worker_id", "worker id"),
            ("web", sel(&["unix:uid:1"]), "Agent One", "bad_agent_id", "agent"),
            ("web", vec![], "agent-node1", "bad_selector", "at least one selector"),
            ("web", sel(&["k8s:ns:default"]), "agent-node1", "bad_selector", "only unix selectors"),
            ("web", sel(&["unix:uid:1", "unix:uid:1"]), "agent-node1", "bad_selector", "given twice"),
            ("agent-node1", sel(&["unix:uid:1"]), "agent-node1", "bad_entry", "join token"),
            ("cert-authority", sel(&["unix:uid:1"]), "agent-node1", "reserved_name", "CA service"),
            ("web", sel(&["unix:gid:10", "unix:uid:1000", &sha]), "agent-node1", "duplicate_entry", &e.id),
        ];
        for (worker, selectors, agent, want, says) in cases {
            let err = ca.create_entry(worker, &selectors, agent, "alice").await.unwrap_err();
            let (got, message) = code(err);
            assert_eq!(got, want, "{worker:?} {selectors:?} {agent:?}: {message}");
            assert!(message.contains(says), "{worker:?} {selectors:?} {agent:?}: {message}");
        }
        // Nothing refused was recorded.
        assert_eq!(ca.entries(None).await.unwrap().len(), 1);

        // The same worker for the same agent with other selectors, and for another agent.
        let other = ca.create_entry("web", &sel(&["unix:uid:1000"]), "agent-node1", "bob").await.unwrap();
        let elsewhere = ca.create_entry("web", &sel(&["unix:uid:1000"]), "agent-node2", "bob").await.unwrap();
        assert_eq!(ca.entries(Some("agent-node1")).await.unwrap(), [e.clone(), other.clone()]);
        assert_eq!(ca.entries(None).await.unwrap(), [e.clone(), other.clone(), elsewhere.clone()]);
        // The oldest entry assigning the worker.
        assert_eq!(ca.entry_for("agent-node1", "web").await.unwrap(), Some(e.clone()));

        ca.delete_entry(&e.id).await.unwrap();
        let gone = ca.delete_entry(&e.id).await.unwrap_err();
        assert!(
            matches!(gone, CaError::NotFound { code: "unknown_entry", ref message } if message.contains(&e.id)),
            "{gone:?}"
        );
        assert_eq!(ca.entry_for("agent-node1", "web").await.unwrap(), Some(other));
    }

    #[tokio::test]
    async fn store_failures_are_unavailable() {
        let (tmp, ca) = ca().await;
        // The entries' table dropped under the CA's (embedded) store.
        let conn = rusqlite::Connection::open(CaDir::new(tmp.path().join("ca")).store()).unwrap();
        conn.execute_batch("DROP TABLE registration_entries").unwrap();
        let e = ca.create_entry("web", &sel(&["unix:uid:1"]), "agent-node1", "alice").await.unwrap_err();
        assert!(matches!(e, CaError::Unavailable(ref m) if m.contains("registration entry")), "{e:?}");
        let e = ca.entries(None).await.unwrap_err();
        assert!(matches!(e, CaError::Unavailable(_)), "{e:?}");
        let e = ca.delete_entry("x").await.unwrap_err();
        assert!(matches!(e, CaError::Unavailable(_)), "{e:?}");
    }
}
