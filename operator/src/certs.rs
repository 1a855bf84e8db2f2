//! The installation's CA and the metadata servers' certificates issued from it (ECDSA P-256).
//! Mounts and the operator verify a metadata server against the CA (`<vol>-ca`, `ca.crt`) and the
//! Service's DNS name.

use k8s_openapi::jiff::Timestamp;
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair, KeyUsagePurpose,
};

/// How long the CA is valid.
const CA_DAYS: u64 = 3650;
/// How long a server certificate is valid; it is renewed when less than a third is left.
pub const SERVER_DAYS: u64 = 90;

/// A CA: its certificate and key, PEM.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Ca {
    pub cert_pem: String,
    pub key_pem: String,
}

/// The CA's parameters: the same every time, so an [`Issuer`] can be rebuilt from them and the
/// key (rcgen reads no certificate back without its x509-parser feature).
fn ca_params() -> Result<CertificateParams, rcgen::Error> {
    let mut p = CertificateParams::new(Vec::<String>::new())?;
    p.distinguished_name.push(DnType::CommonName, "stratusfs CA");
    p.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    p.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign, KeyUsagePurpose::DigitalSignature];
    Ok(p)
}

/// Valid from yesterday (clocks differ) for `days`.
fn validity(p: &mut CertificateParams, days: u64) {
    let today = Timestamp::now().to_zoned(k8s_openapi::jiff::tz::TimeZone::UTC).date();
    let start = rcgen::date_time_ymd(today.year().into(), today.month() as u8, today.day() as u8)
        - std::time::Duration::from_secs(86_400);
    p.not_before = start;
    p.not_after = start + std::time::Duration::from_secs((days + 1) * 86_400);
}

/// A new CA.
pub fn new_ca() -> Result<Ca, rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut p = ca_params()?;
    validity(&mut p, CA_DAYS);
    let cert = p.self_signed(&key)?;
    Ok(Ca { cert_pem: cert.pem(), key_pem: key.serialize_pem() })
}

/// A server certificate for `names` (the first is its common name), issued by `ca`: (cert, key) PEM.
pub fn issue(ca: &Ca, names: &[String]) -> Result<(String, String), rcgen::Error> {
    let key = KeyPair::generate()?;
    let mut p = CertificateParams::new(names.to_vec())?;
    if let Some(first) = names.first() {
        p.distinguished_name.push(DnType::CommonName, first.as_str());
    }
    p.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
    validity(&mut p, SERVER_DAYS);
    let issuer = Issuer::new(ca_params()?, KeyPair::from_pem(&ca.key_pem)?);
    let cert = p.signed_by(&key, &issuer)?;
    Ok((cert.pem(), key.serialize_pem()))
}

/// The DNS names of Service `service` in `namespace`.
pub fn service_names(service: &str, namespace: &str) -> Vec<String> {
    vec![
        format!("{service}.{namespace}.svc"),
        format!("{service}.{namespace}.svc.cluster.local"),
        format!("{service}.{namespace}"),
        service.to_string(),
    ]
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use rustls::client::WebPkiServerVerifier;
    use rustls::client::danger::ServerCertVerifier;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::{CertificateDer, ServerName, UnixTime};

    use super::*;

    fn verify(ca: &Ca, cert_pem: &str, name: &str) -> Result<(), rustls::Error> {
        let provider = fs_core::tls::install_crypto_provider();
        let mut roots = rustls::RootCertStore::empty();
        roots.add(CertificateDer::from_pem_slice(ca.cert_pem.as_bytes()).unwrap()).unwrap();
        let verifier = WebPkiServerVerifier::builder_with_provider(Arc::new(roots), provider).build().unwrap();
        let cert = CertificateDer::from_pem_slice(cert_pem.as_bytes()).unwrap();
        let name = ServerName::try_from(name.to_string()).unwrap();
        verifier.verify_server_cert(&cert, &[], &name, &[], UnixTime::now()).map(drop)
    }

    #[test]
    fn a_server_certificate_verifies_against_its_ca_for_its_names_only() {
        let ca = new_ca().unwrap();
        let (cert, key) = issue(&ca, &service_names("vol-meta", "team")).unwrap();
        assert!(key.contains("PRIVATE KEY"));
        for name in ["vol-meta.team.svc", "vol-meta.team.svc.cluster.local", "vol-meta.team", "vol-meta"] {
            verify(&ca, &cert, name).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
        assert!(verify(&ca, &cert, "other-meta.team.svc").is_err(), "another Service's name");
        assert!(verify(&new_ca().unwrap(), &cert, "vol-meta.team.svc").is_err(), "another installation's CA");
    }
}
