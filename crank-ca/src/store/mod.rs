//! Durable CA state: the ledger of issued certificates, used join tokens, revocations
//! and the CRL counters.
//!
//! Two backends implement [`CaStore`], chosen by a store URL ([`open`]):
//!
//! | URL | backend | for |
//! |---|---|---|
//! | `sqlite://PATH` (default `<ca dir>/ca.db`) | [`SqliteStore`], embedded, WAL + `synchronous=FULL`, group commit | one CA process |
//! | `postgres://USER@HOST:PORT/DB` | [`PostgresStore`], pooled, one transaction per change | several CA replicas sharing state |
//!
//! Both apply their versioned schema migrations at start, and every write returns only
//! after it has committed: nothing is handed to a client before its ledger row is
//! durable.

mod model;
mod postgres;
mod sqlite;

use std::sync::Arc;

pub use self::model::*;
pub use self::postgres::PostgresStore;
pub use self::sqlite::SqliteStore;

/// Opens the store a URL names. `default_sqlite` is used when `url` is `None`.
///
/// * `sqlite://PATH`: the embedded store at PATH (relative to the working directory;
///   `sqlite:///abs/path` for an absolute one).
/// * `postgres://...` or `postgresql://...`: PostgreSQL (libpq-style URL).
pub async fn open(url: Option<&str>, default_sqlite: &std::path::Path) -> Result<Arc<dyn CaStore>, StoreError> {
    let Some(url) = url else {
        return Ok(Arc::new(SqliteStore::open(default_sqlite)?));
    };
    if let Some(path) = url.strip_prefix("sqlite://") {
        if path.is_empty() {
            return Err(StoreError::Database(
                "store URL sqlite:// names no file; use sqlite://PATH (e.g. sqlite://ca.db or sqlite:///var/lib/crank/ca.db)"
                    .into(),
            ));
        }
        return Ok(Arc::new(SqliteStore::open(std::path::Path::new(path))?));
    }
    if url.starts_with("postgres://") || url.starts_with("postgresql://") {
        return Ok(Arc::new(PostgresStore::connect(url).await?));
    }
    let scheme = url.split_once("://").map_or(url, |(s, _)| s);
    Err(StoreError::Database(format!(
        "store URL scheme {scheme:?} is not supported; use sqlite://PATH or postgres://USER@HOST:PORT/DB"
    )))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_by_name_and_code() {
        for r in RevocationReason::ALL {
            assert_eq!(r.as_str().parse::<RevocationReason>().unwrap(), r);
            assert_eq!(r.code().to_string().parse::<RevocationReason>().unwrap(), r);
        }
        assert_eq!("key-compromise".parse::<RevocationReason>().unwrap(), RevocationReason::KeyCompromise);
        assert_eq!(
            "CESSATION_OF_OPERATION".parse::<RevocationReason>().unwrap(),
            RevocationReason::CessationOfOperation
        );
        let e = "removeFromCRL".parse::<RevocationReason>().unwrap_err();
        assert!(e.contains("keyCompromise"), "{e}");
        assert!("7".parse::<RevocationReason>().is_err());
    }

    #[test]
    fn redacts_passwords() {
        assert_eq!(redact("postgres://crank:s3cret@db:5432/ca"), "postgres://crank:***@db:5432/ca");
        assert!(!redact("postgres://u:p@h/db").contains(":p@"));
    }

    #[tokio::test]
    async fn unknown_schemes_are_named() {
        let e = open(Some("mysql://x/y"), std::path::Path::new("unused")).await.unwrap_err().to_string();
        assert!(e.contains("\"mysql\""), "{e}");
        let e = open(Some("sqlite://"), std::path::Path::new("unused")).await.unwrap_err().to_string();
        assert!(e.contains("names no file"), "{e}");
    }
}
