//! The CA's certificate revocation list: signed by the signing root, DER, listing every
//! revoked certificate that has not expired, with thisUpdate/nextUpdate and a CRL
//! number that increases across every replica of the store.
//!
//! A replica regenerates its CRL when the store's revocation generation changed (a
//! revocation at any replica), when its copy is older than [`CRL_REFRESH_AFTER`]
//! (so expired entries drop off), and at once after a revocation it made itself.

use std::time::Duration;

use rcgen::{CertificateRevocationListParams, Issuer, KeyIdMethod, KeyPair, RevokedCertParams, SerialNumber};
use time::OffsetDateTime;

use super::store::RevocationRecord;

/// A replica's CRL is regenerated at least this often.
pub const CRL_REFRESH_AFTER: Duration = Duration::from_secs(300);
/// nextUpdate is thisUpdate plus this, by default.
pub const CRL_VALIDITY: Duration = Duration::from_secs(24 * 3600);

/// A signed CRL and what it was made from.
#[derive(Debug, Clone)]
pub struct SignedCrl {
    /// The CRL, DER.
    pub der: Vec<u8>,
    /// Its CRL number.
    pub number: u64,
    /// thisUpdate.
    pub this_update: OffsetDateTime,
    /// nextUpdate.
    pub next_update: OffsetDateTime,
    /// The store's revocation generation it reflects.
    pub generation: u64,
    /// Number of entries.
    pub entries: usize,
}

/// Parses a serial written as hex octets separated by `:` (how the ledger stores it).
pub(crate) fn serial_from_hex(serial: &str) -> Result<SerialNumber, String> {
    let hex: String = serial.chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&hex).map_err(|e| format!("serial {serial:?} is not hex: {e}"))?;
    if bytes.is_empty() || bytes.len() > 20 {
        return Err(format!("serial {serial:?} must be 1 to 20 octets"));
    }
    Ok(SerialNumber::from_slice(&bytes))
}

/// Signs a CRL over `entries` (the caller passes only unexpired ones).
pub(crate) fn sign(
    issuer: &Issuer<'_, KeyPair>,
    entries: &[RevocationRecord],
    number: u64,
    generation: u64,
    now: OffsetDateTime,
    validity: Duration,
) -> Result<SignedCrl, String> {
    let mut revoked = Vec::with_capacity(entries.len());
    for e in entries {
        revoked.push(RevokedCertParams {
            serial_number: serial_from_hex(&e.serial)?,
            revocation_time: OffsetDateTime::from_unix_timestamp(e.revoked_at)
                .map_err(|err| format!("revocation time of {}: {err}", e.serial))?,
            reason_code: Some(e.reason.to_rcgen()),
            invalidity_date: None,
        });
    }
    // Whole seconds: what the encoding keeps anyway.
    let this_update = now.replace_nanosecond(0).unwrap_or(now);
    let next_update = this_update + validity;
    let params = CertificateRevocationListParams {
        this_update,
        next_update,
        crl_number: SerialNumber::from(number),
        issuing_distribution_point: None,
        revoked_certs: revoked,
        key_identifier_method: KeyIdMethod::Sha256,
    };
    let crl = params.signed_by(issuer).map_err(|e| format!("signing the CRL: {e}"))?;
    Ok(SignedCrl { der: crl.der().to_vec(), number, this_update, next_update, generation, entries: entries.len() })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::RevocationReason;

    #[test]
    fn serials_round_trip_and_bad_ones_are_named() {
        assert_eq!(serial_from_hex("01:ab").unwrap().to_bytes(), vec![0x01, 0xab]);
        assert!(serial_from_hex("zz").unwrap_err().contains("\"zz\""));
        assert!(serial_from_hex("").is_err());
    }

    #[test]
    fn signs_a_crl_that_parses_with_its_entries() {
        let key = KeyPair::generate().unwrap();
        let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
        p.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Constrained(0));
        p.key_usages = vec![rcgen::KeyUsagePurpose::KeyCertSign, rcgen::KeyUsagePurpose::CrlSign];
        let root = p.self_signed(&key).unwrap();
        let issuer = Issuer::from_ca_cert_der(root.der(), key).unwrap();
        let now = OffsetDateTime::now_utc();
        let entry = RevocationRecord {
            serial: "7f:01".into(),
            worker_id: "w".into(),
            reason: RevocationReason::KeyCompromise,
            revoked_at: now.unix_timestamp(),
            revoked_by: "admin".into(),
            not_after: now.unix_timestamp() + 60,
        };
        let crl = sign(&issuer, &[entry], 7, 1, now, CRL_VALIDITY).unwrap();
        use x509_parser::prelude::FromDer;
        let (_, parsed) = x509_parser::revocation_list::CertificateRevocationList::from_der(&crl.der).unwrap();
        assert_eq!(parsed.crl_number().unwrap().to_string(), "7");
        let serials: Vec<_> = parsed.iter_revoked_certificates().map(|r| r.raw_serial_as_string()).collect();
        assert_eq!(serials, vec!["7f:01"]);
        let (_, root_parsed) = x509_parser::parse_x509_certificate(root.der()).unwrap();
        parsed.verify_signature(root_parsed.public_key()).unwrap();
    }
}
