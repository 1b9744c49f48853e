//! What a missing or stale CRL means for a handshake.

/// What a missing or stale CRL means for a peer's handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum CrlMode {
    /// A peer whose issuer has no CRL here is accepted, and a CRL past its nextUpdate is
    /// still applied (a stale list is better than none). Staleness is reported (event,
    /// metric, readiness). The default.
    #[default]
    Warn,
    /// A peer is refused unless a CRL of its issuer is here and within its nextUpdate
    /// (`CRANK_CRL_MODE=fail-closed`). An unreachable CA then stops new connections
    /// once the CRL it last published expires (24 h after it was signed).
    FailClosed,
}

impl std::str::FromStr for CrlMode {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s.trim().to_ascii_lowercase().as_str() {
            "warn" => Ok(Self::Warn),
            "fail-closed" | "fail_closed" | "failclosed" => Ok(Self::FailClosed),
            other => Err(format!("{other:?} is not warn or fail-closed")),
        }
    }
}
