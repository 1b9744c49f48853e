//! `LocalSigner`: the CA's own key signs what the CA decided. The key is the CA's root,
//! or in intermediate mode its intermediate under an enterprise root (then every leaf
//! carries the intermediate chain).

use async_trait::async_trait;
use crank_security_core::{CertificateProvider, CertificateTemplate, ProviderError, SignRequest, cert_pem};
use rcgen::{
    CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
    SanType,
};
use time::OffsetDateTime;

use super::csr::parse_verified_csr;
use super::files::CaDir;
use crate::error::SetupError;
use crate::serial::random_serial;

/// Signs with the key in the CA directory.
pub struct LocalSigner {
    issuer: Issuer<'static, KeyPair>,
    /// End of the signing certificate's validity: no leaf outlives it.
    not_after: OffsetDateTime,
    /// Appended to every leaf: the intermediates (empty for a root).
    chain_pem: String,
    /// What peers trust.
    bundle_pem: String,
}

impl std::fmt::Debug for LocalSigner {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalSigner")
            .field("not_after", &self.not_after)
            .field("intermediate", &!self.chain_pem.is_empty())
            .field("key", &"<redacted>")
            .finish()
    }
}

impl LocalSigner {
    /// The signer of the CA in `dir` (root mode or intermediate mode).
    pub fn load(dir: &CaDir) -> Result<Self, SetupError> {
        let chain = dir.signing_chain()?;
        let signing = chain.first().ok_or_else(|| SetupError::no_certificate(dir.signing_cert_file()))?;
        let key = CaDir::read_key(&dir.signing_key())?;
        let not_after = crank_security_core::CertMetadata::from_der(signing)?.not_after;
        let issuer = Issuer::from_ca_cert_der(signing, key)
            .map_err(SetupError::certificate("reading the signing certificate"))?;
        let chain_pem = if dir.is_intermediate() { chain.iter().map(|c| cert_pem(c)).collect() } else { String::new() };
        Ok(Self { issuer, not_after, chain_pem, bundle_pem: dir.trust_bundle_pem()? })
    }

    /// The rcgen issuer (for CRLs and administrator certificates).
    pub fn issuer(&self) -> &Issuer<'static, KeyPair> {
        &self.issuer
    }

    /// The intermediates appended to every certificate this signer issues (empty for a
    /// root).
    pub fn chain_pem(&self) -> &str {
        &self.chain_pem
    }

    /// End of the signing certificate's validity.
    pub fn not_after(&self) -> OffsetDateTime {
        self.not_after
    }
}

/// The certificate a template describes, with a fresh random serial.
pub fn leaf_params(t: &CertificateTemplate) -> Result<CertificateParams, ProviderError> {
    let mut params = CertificateParams::default();
    let mut dn = DistinguishedName::new();
    dn.push(DnType::CommonName, t.common_name());
    dn.push(DnType::OrganizationName, t.organization());
    params.distinguished_name = dn;
    params.serial_number = Some(random_serial());
    params.not_before = t.not_before;
    params.not_after = t.not_after;
    params.is_ca = IsCa::ExplicitNoCa;
    params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
    params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth, ExtendedKeyUsagePurpose::ServerAuth];
    params.use_authority_key_identifier_extension = true;
    let uri = t.spiffe_id.to_string();
    let mut sans = vec![SanType::URI(
        uri.as_str().try_into().map_err(|_| ProviderError::Other("SPIFFE ID is not an IA5 string".into()))?,
    )];
    for d in &t.dns_sans {
        sans.push(SanType::DnsName(
            d.as_str()
                .try_into()
                .map_err(|_| ProviderError::BadRequest(format!("DNS SAN {d:?} is not an IA5 string")))?,
        ));
    }
    sans.extend(t.ip_sans.iter().map(|ip| SanType::IpAddress(*ip)));
    params.subject_alt_names = sans;
    if !t.capabilities.is_empty() {
        params.custom_extensions.push(capabilities_extension(&t.capabilities));
    }
    Ok(params)
}

/// crank's capabilities extension (non-critical) holding `capabilities`.
pub(crate) fn capabilities_extension(capabilities: &[String]) -> rcgen::CustomExtension {
    rcgen::CustomExtension::from_oid_content(
        &crank_security_core::CAPABILITIES_OID,
        crank_security_core::capabilities_extension(capabilities),
    )
}

#[async_trait]
impl CertificateProvider for LocalSigner {
    async fn sign(&self, request: SignRequest) -> Result<String, ProviderError> {
        // The front verified the CSR's self-signature before asking (SignRequest).
        let csr = parse_verified_csr(&request.csr_pem)?;
        let mut params = leaf_params(&request.template)?;
        // The signing certificate's end bounds every leaf.
        params.not_after = params.not_after.min(self.not_after);
        let cert = params
            .signed_by(csr.spki(), &self.issuer)
            .map_err(|e| ProviderError::Other(format!("signing failed: {e}")))?;
        Ok(format!("{}{}", cert.pem(), self.chain_pem))
    }

    async fn trust_bundle(&self) -> Result<String, ProviderError> {
        Ok(self.bundle_pem.clone())
    }

    fn name(&self) -> &str {
        "local"
    }
}
