//! What the console's templates show: every value formatted here (times relative and
//! absolute), so the templates only lay out strings. askama escapes them all.

use askama::Template;
use time::OffsetDateTime;

use super::Status;
use crate::denials;
use crate::store::{CertStatus, CertificateHistory, CertificateRecord};

/// `2026-11-26T20:03:34Z`.
pub(crate) fn rfc3339(t: OffsetDateTime) -> String {
    t.to_offset(time::UtcOffset::UTC)
        .replace_nanosecond(0)
        .unwrap_or(t)
        .format(&time::format_description::well_known::Rfc3339)
        .unwrap_or_else(|_| t.to_string())
}

/// `t` as seen from `now`: `in 3 h 5 min`, `2 d 4 h ago`, `just now`.
pub fn relative(t: OffsetDateTime, now: OffsetDateTime) -> String {
    let d = t - now;
    let secs = d.whole_seconds().unsigned_abs();
    if secs < 5 {
        return "just now".into();
    }
    let (days, hours, mins) = (secs / 86_400, secs % 86_400 / 3600, secs % 3600 / 60);
    let span = match (days, hours, mins) {
        (0, 0, 0) => format!("{secs} s"),
        (0, 0, m) => format!("{m} min"),
        (0, h, 0) => format!("{h} h"),
        (0, h, m) => format!("{h} h {m} min"),
        (d, 0, _) => format!("{d} d"),
        (d, h, _) => format!("{d} d {h} h"),
    };
    if d.is_negative() { format!("{span} ago") } else { format!("in {span}") }
}

/// A time as (absolute, relative), from RFC 3339 text or Unix seconds.
#[derive(Debug)]
pub(crate) struct When {
    pub(crate) absolute: String,
    pub(crate) relative: String,
}

impl When {
    fn at(t: OffsetDateTime, now: OffsetDateTime) -> Self {
        Self { absolute: rfc3339(t), relative: relative(t, now) }
    }

    fn text(s: &str, now: OffsetDateTime) -> Self {
        match OffsetDateTime::parse(s, &time::format_description::well_known::Rfc3339) {
            Ok(t) => Self::at(t, now),
            Err(_) => Self { absolute: s.to_owned(), relative: String::new() },
        }
    }

    fn unix(secs: i64, now: OffsetDateTime) -> Self {
        Self::at(OffsetDateTime::from_unix_timestamp(secs).unwrap_or(OffsetDateTime::UNIX_EPOCH), now)
    }
}

/// How a ledger row reads in a table.
#[derive(Debug)]
pub(crate) struct Row {
    pub(crate) serial: String,
    pub(crate) worker_id: String,
    pub(crate) kind: &'static str,
    /// `valid`, `expiring`, `expired`, `superseded`, `revoked`.
    pub(crate) state: &'static str,
    pub(crate) issued: When,
    pub(crate) expires: When,
    pub(crate) replica: String,
}

fn state(r: &CertificateRecord, now: OffsetDateTime) -> &'static str {
    let end = OffsetDateTime::parse(&r.not_after, &time::format_description::well_known::Rfc3339).ok();
    match r.status {
        CertStatus::Revoked => "revoked",
        _ if end.is_some_and(|e| e <= now) => "expired",
        CertStatus::Superseded => "superseded",
        CertStatus::Valid if end.is_some_and(|e| e - now <= super::EXPIRING_WITHIN) => "expiring",
        CertStatus::Valid => "valid",
    }
}

impl Row {
    fn of(r: &CertificateRecord, now: OffsetDateTime) -> Self {
        Self {
            serial: r.serial.clone(),
            worker_id: r.worker_id.clone(),
            kind: r.kind.as_str(),
            state: state(r, now),
            issued: When::text(&r.issued_at, now),
            expires: When::text(&r.not_after, now),
            replica: r.issued_by.clone(),
        }
    }
}

#[derive(Template)]
#[template(path = "console/overview.html")]
pub(crate) struct Overview<'a> {
    pub(crate) s: &'a Status,
    pub(crate) crl_this: Option<When>,
    pub(crate) crl_next: Option<When>,
    pub(crate) replicas: Vec<(&'a super::ReplicaStatus, When)>,
    pub(crate) denials: Vec<(&'a super::Denial, When)>,
    pub(crate) kept: usize,
}

impl<'a> Overview<'a> {
    pub(crate) fn new(s: &'a Status, now: OffsetDateTime) -> Self {
        let when = |t: &str| When::text(t, now);
        Self {
            crl_this: s.crl.as_ref().map(|c| when(&c.this_update)),
            crl_next: s.crl.as_ref().map(|c| when(&c.next_update)),
            replicas: s.replicas.iter().map(|r| (r, when(&r.last_seen))).collect(),
            denials: s.recent_denials.iter().map(|d| (d, when(&d.at))).collect(),
            kept: denials::KEPT,
            s,
        }
    }
}

#[derive(Template)]
#[template(path = "console/certificates.html")]
pub(crate) struct Certificates<'a> {
    pub(crate) rows: Vec<Row>,
    pub(crate) q: &'a str,
    pub(crate) status: &'a str,
    pub(crate) next: Option<String>,
    pub(crate) statuses: [&'static str; 5],
}

impl<'a> Certificates<'a> {
    pub(crate) fn new(
        rows: &[CertificateRecord],
        q: &'a str,
        status: &'a str,
        next: Option<String>,
        now: OffsetDateTime,
    ) -> Self {
        Self {
            rows: rows.iter().map(|r| Row::of(r, now)).collect(),
            q,
            status: if status.is_empty() { "all" } else { status },
            next,
            statuses: ["all", "valid", "expiring", "revoked", "expired"],
        }
    }

    /// The query string of the next page.
    pub(crate) fn next_query(&self) -> Option<String> {
        let next = self.next.as_ref()?;
        Some(
            url::form_urlencoded::Serializer::new(String::new())
                .append_pair("q", self.q)
                .append_pair("status", self.status)
                .append_pair("after", next)
                .finish(),
        )
    }
}

/// One step of a certificate's life.
#[derive(Debug)]
pub(crate) struct Step {
    pub(crate) when: When,
    pub(crate) what: String,
    /// Another certificate it links to.
    pub(crate) link: Option<String>,
}

#[derive(Template)]
#[template(path = "console/certificate.html")]
pub(crate) struct Certificate<'a> {
    pub(crate) r: &'a CertificateRecord,
    pub(crate) row: Row,
    pub(crate) not_before: When,
    pub(crate) steps: Vec<Step>,
    pub(crate) sans: String,
    pub(crate) capabilities: String,
}

impl<'a> Certificate<'a> {
    pub(crate) fn new(h: &'a CertificateHistory, now: OffsetDateTime) -> Self {
        let r = &h.record;
        let mut steps = Vec::new();
        let how = match r.kind.as_str() {
            "issue" => "issued with a join token",
            "renew" => "issued as a renewal",
            _ => "issued as an administrator certificate",
        };
        steps.push(Step {
            when: When::text(&r.issued_at, now),
            what: format!("{how} by replica {} (correlation id {})", r.issued_by, r.correlation_id),
            link: None,
        });
        if let Some(from) = &h.renewed_from {
            steps.push(Step { when: When::text(&r.issued_at, now), what: "renewed".into(), link: Some(from.clone()) });
        }
        if let Some(by) = &h.superseded_by {
            steps.push(Step {
                when: When::text("", now),
                what: "superseded at renewal by".into(),
                link: Some(by.clone()),
            });
        }
        if let Some(rev) = &h.revocation {
            steps.push(Step {
                when: When::unix(rev.revoked_at, now),
                what: format!("revoked ({}) by {}", rev.reason.as_str(), rev.revoked_by),
                link: None,
            });
        }
        let end = When::text(&r.not_after, now);
        let ended =
            OffsetDateTime::parse(&r.not_after, &time::format_description::well_known::Rfc3339).is_ok_and(|e| e <= now);
        steps.push(Step { when: end, what: if ended { "expired" } else { "expires" }.into(), link: None });
        Self {
            row: Row::of(r, now),
            not_before: When::text(&r.not_before, now),
            sans: r.sans.join(", "),
            capabilities: if r.capabilities.is_empty() { "none".into() } else { r.capabilities.join(", ") },
            steps,
            r,
        }
    }
}

#[derive(Template)]
#[template(path = "console/workers.html")]
pub(crate) struct Workers {
    pub(crate) source: Option<String>,
    pub(crate) error: Option<String>,
    pub(crate) rows: Vec<WorkerRow>,
}

#[derive(Debug)]
pub(crate) struct WorkerRow {
    pub(crate) worker_id: String,
    pub(crate) service_type: String,
    pub(crate) serial: String,
    pub(crate) load: String,
    pub(crate) last_seen: When,
    pub(crate) expires: When,
}

impl Workers {
    pub(crate) fn not_configured() -> Self {
        Self { source: None, error: None, rows: Vec::new() }
    }

    pub(crate) fn failed(url: &url::Url, error: &str) -> Self {
        Self { source: Some(url.to_string()), error: Some(error.to_owned()), rows: Vec::new() }
    }

    pub(crate) fn listed(url: &url::Url, list: &[crank_runtime::platform::WorkerRecord], now: OffsetDateTime) -> Self {
        let rows = list
            .iter()
            .map(|w| WorkerRow {
                worker_id: w.worker_id.clone(),
                service_type: w.service_type.clone(),
                serial: w.serial.clone(),
                load: format!("{:.2}", w.load_score),
                last_seen: When::text(&w.last_seen, now),
                expires: When::text(&w.cert_not_after, now),
            })
            .collect();
        Self { source: Some(url.to_string()), error: None, rows }
    }
}

#[derive(Template)]
#[template(path = "console/error.html")]
pub(crate) struct ErrorPage<'a> {
    pub(crate) message: &'a str,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times_read_both_ways() {
        let now = OffsetDateTime::from_unix_timestamp(1_800_000_000).unwrap();
        let at = |s: i64| now + time::Duration::seconds(s);
        assert_eq!(relative(at(3 * 3600 + 5 * 60), now), "in 3 h 5 min");
        assert_eq!(relative(at(-(2 * 86_400 + 4 * 3600)), now), "2 d 4 h ago");
        assert_eq!(relative(at(2), now), "just now");
        assert_eq!(relative(at(-42), now), "42 s ago");
        assert_eq!(rfc3339(now), "2027-01-15T08:00:00Z");
    }
}
