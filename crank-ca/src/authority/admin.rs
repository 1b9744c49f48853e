//! Administrators: their certificates (`spiffe://<td>/admin/<name>`, client
//! authentication only) and recognising one.

use crank_security_core::{ADMIN_CAPABILITY, CertMetadata, CorrelationId, WorkerId, rfc3339};
use rcgen::{DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, KeyUsagePurpose, SanType};
use rustls_pki_types::CertificateDer;
use time::OffsetDateTime;

use super::{BACKDATE, LocalCa};
use crate::error::{CaError, SetupError};
use crate::files::new_key;
use crate::serial::random_serial;
use crate::store::{CertKind, CertStatus, CertificateRecord};

impl LocalCa {
    /// Issues an administrator certificate (`spiffe://<td>/admin/<name>`, client auth
    /// only) for a key made here, and records it in the ledger. Returns the certificate
    /// and key, PEM.
    pub async fn issue_admin(&self, name: &WorkerId, validity: time::Duration) -> Result<(String, String), SetupError> {
        let key = new_key("the administrator's key")?;
        let uri = self.trust_domain.admin_spiffe_id(name.as_str());
        let now = OffsetDateTime::now_utc();
        let mut params = rcgen::CertificateParams::default();
        let mut dn = DistinguishedName::new();
        dn.push(DnType::CommonName, format!("admin {name}"));
        dn.push(DnType::OrganizationName, self.trust_domain.as_str());
        params.distinguished_name = dn;
        params.serial_number = Some(random_serial());
        params.not_before = now - BACKDATE;
        params.not_after = now + validity;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        params.use_authority_key_identifier_extension = true;
        let san = uri.as_str().try_into().map_err(SetupError::certificate(format!("{uri} as a URI SAN")))?;
        params.subject_alt_names = vec![SanType::URI(san)];
        params.custom_extensions.push(crate::signer::capabilities_extension(&[ADMIN_CAPABILITY.to_owned()]));
        params.not_after = params.not_after.min(self.own.not_after());
        let cert = params
            .signed_by(&key, self.own.issuer())
            .map_err(SetupError::certificate("signing the administrator certificate"))?;
        let chain = format!("{}{}", cert.pem(), self.own.chain_pem());
        let meta = CertMetadata::from_der(cert.der())?;
        let record = CertificateRecord {
            serial: meta.serial.clone(),
            worker_id: name.to_string(),
            spiffe_id: uri.clone(),
            sans: vec![uri],
            capabilities: vec![ADMIN_CAPABILITY.into()],
            not_before: rfc3339(meta.not_before),
            not_after: rfc3339(meta.not_after),
            fingerprint: meta.fingerprint_sha256.clone(),
            issued_by: self.config.replica.clone(),
            kind: CertKind::Admin,
            correlation_id: CorrelationId::new().to_string(),
            issued_at: crate::store::now_rfc3339(),
            status: CertStatus::Valid,
            pem: chain.clone(),
        };
        self.store.record_issuance(None, record).await?;
        Ok((chain, key.serialize_pem()))
    }

    /// Who revokes, for the record (`admin/<name>` or `worker/<id>`): the holder of a
    /// verified client certificate that policy allowed the capability `ca.revoke`. Its
    /// ledger row must be the same certificate, still valid: an administrator's
    /// (`spiffe://<td>/admin/<name>`), or a worker's that was granted the capability.
    pub async fn revoker_of(&self, leaf: &CertificateDer<'_>) -> Result<String, CaError> {
        let refuse = |m: String| CaError::denied("revoker_required", m);
        let meta = CertMetadata::from_der(leaf).map_err(|e| refuse(format!("unreadable client certificate: {e}")))?;
        if meta.spiffe().is_none() {
            return self.admin_of(leaf).await.map(|name| format!("admin/{name}"));
        }
        let worker = meta.spiffe().map(|s| s.worker_id.to_string()).unwrap_or_default();
        match self.store.certificate(&meta.serial).await {
            Ok(Some(r))
                if r.fingerprint == meta.fingerprint_sha256
                    && r.status == CertStatus::Valid
                    && r.kind != CertKind::Admin
                    && r.worker_id == worker =>
            {
                Ok(format!("worker/{worker}"))
            }
            Ok(Some(r)) => Err(refuse(format!("client certificate {} is {} ({})", meta.serial, r.status, r.kind))),
            Ok(None) => Err(refuse(format!("client certificate {} is not in the ledger", meta.serial))),
            Err(e) => Err(CaError::unavailable(e.to_string())),
        }
    }

    /// The administrator name of a verified client certificate: its SPIFFE ID must be
    /// `spiffe://<td>/admin/<name>` and its ledger row an unrevoked admin certificate.
    pub async fn admin_of(&self, leaf: &CertificateDer<'_>) -> Result<String, CaError> {
        let refuse = |m: String| CaError::denied("admin_required", m);
        let meta = CertMetadata::from_der(leaf).map_err(|e| refuse(format!("unreadable client certificate: {e}")))?;
        let prefix = self.trust_domain.admin_spiffe_id("");
        let Some(name) = meta.uri_sans.iter().find_map(|u| u.strip_prefix(&prefix)) else {
            return Err(refuse(format!(
                "this endpoint needs an administrator certificate ({prefix}<name>, from `crank ca admin-cert`); the client certificate is not one"
            )));
        };
        match self.store.certificate(&meta.serial).await {
            Ok(Some(r)) if r.fingerprint != meta.fingerprint_sha256 => Err(refuse(format!(
                "client certificate {} is not the one this CA's ledger holds under that serial",
                meta.serial
            ))),
            Ok(Some(r)) if r.kind == CertKind::Admin && r.status == CertStatus::Valid && r.worker_id == name => {
                Ok(name.to_owned())
            }
            Ok(Some(r)) => {
                Err(refuse(format!("administrator certificate {} is {} ({})", meta.serial, r.status, r.kind)))
            }
            Ok(None) => Err(refuse(format!("administrator certificate {} is not in the ledger", meta.serial))),
            Err(e) => Err(CaError::unavailable(e.to_string())),
        }
    }
}
