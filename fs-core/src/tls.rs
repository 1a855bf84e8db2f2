//! TLS for every stratusfs connection: the process-wide provider, server certificates (given,
//! or generated once and kept), reloading when the files change, and client verification by CA
//! or by a pinned SHA-256 fingerprint.
//!
//! stratusfs uses rustls with aws-lc-rs as its only crypto provider. Several dependencies (kube,
//! object_store's reqwest, tonic) build rustls configurations from the process default provider,
//! so each binary calls [`install_crypto_provider`] first thing in `main`.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::SystemTime;

use parking_lot::RwLock;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::server::{ClientHello, ResolvesServerCert};
use rustls::sign::CertifiedKey;
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};

/// Installs aws-lc-rs as the process-wide rustls crypto provider.
///
/// Idempotent: a second call (or a call after another part of the process installed the same
/// provider) is a no-op. Returns the provider in force.
pub fn install_crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    // `install_default` fails only when a provider is already installed; that one is kept.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default().cloned().expect("a rustls crypto provider is installed just above")
}

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{path}: {source}")]
    Io { path: PathBuf, source: std::io::Error },
    #[error("{path}: {message}")]
    Pem { path: PathBuf, message: String },
    #[error("generating a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
    #[error("fingerprint {0:?} is not 64 hex digits (SHA-256 of the server certificate)")]
    Fingerprint(String),
    #[error("give the server's CA file or its certificate fingerprint (see the server's log)")]
    NoTrust,
}

fn io(path: &Path) -> impl FnOnce(std::io::Error) -> TlsError + '_ {
    move |source| TlsError::Io { path: path.to_path_buf(), source }
}

/// The SHA-256 fingerprint of a certificate, as 64 lowercase hex digits.
pub fn fingerprint(cert: &[u8]) -> String {
    hex::encode(Sha256::digest(cert))
}

/// Parses a fingerprint written as hex, with or without `:` separators or a `sha256:` prefix.
pub fn parse_fingerprint(s: &str) -> Result<[u8; 32], TlsError> {
    let clean: String = s.trim().trim_start_matches("sha256:").chars().filter(|c| *c != ':').collect();
    let bytes = hex::decode(&clean).map_err(|_| TlsError::Fingerprint(s.to_string()))?;
    bytes.try_into().map_err(|_| TlsError::Fingerprint(s.to_string()))
}

/// A self-signed ECDSA P-256 certificate for `names` (DNS names or IP addresses): (cert, key) PEM.
pub fn self_signed(names: &[String]) -> Result<(String, String), TlsError> {
    let key = rcgen::KeyPair::generate()?;
    let mut params = rcgen::CertificateParams::new(names.to_vec())?;
    params.distinguished_name.push(rcgen::DnType::CommonName, "stratusfs");
    params.not_after = rcgen::date_time_ymd(2124, 1, 1);
    let cert = params.self_signed(&key)?;
    Ok((cert.pem(), key.serialize_pem()))
}

fn load_certified_key(cert: &Path, key: &Path) -> Result<CertifiedKey, TlsError> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| TlsError::Pem { path: cert.to_path_buf(), message: e.to_string() })?
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Pem { path: cert.to_path_buf(), message: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::Pem { path: cert.to_path_buf(), message: "no certificate in the file".into() });
    }
    let key_der = PrivateKeyDer::from_pem_file(key)
        .map_err(|e| TlsError::Pem { path: key.to_path_buf(), message: e.to_string() })?;
    let provider = install_crypto_provider();
    Ok(CertifiedKey::from_der(chain, key_der, &provider)?)
}

fn mtime(p: &Path) -> Option<SystemTime> {
    std::fs::metadata(p).and_then(|m| m.modified()).ok()
}

/// The server's certificate: read from files and re-read when they change (the operator renews
/// certificates in place).
#[derive(Debug)]
pub struct ServerCert {
    cert_path: PathBuf,
    key_path: PathBuf,
    current: RwLock<(Arc<CertifiedKey>, Option<SystemTime>, Option<SystemTime>)>,
}

impl ServerCert {
    /// Uses the given files, or, with none, the certificate kept in `dir` (generated on first use
    /// for `names`, private key mode 0600).
    pub fn load_or_generate(
        given: Option<(PathBuf, PathBuf)>,
        dir: &Path,
        names: &[String],
    ) -> Result<Arc<ServerCert>, TlsError> {
        let (cert_path, key_path) = match given {
            Some(pair) => pair,
            None => {
                let (c, k) = (dir.join("server.crt"), dir.join("server.key"));
                if !c.exists() || !k.exists() {
                    std::fs::create_dir_all(dir).map_err(io(dir))?;
                    let (cert, key) = self_signed(names)?;
                    write_private(&k, key.as_bytes())?;
                    std::fs::write(&c, cert).map_err(io(&c))?;
                    tracing::info!(cert = %c.display(), "generated a self-signed server certificate");
                }
                (c, k)
            }
        };
        let ck = load_certified_key(&cert_path, &key_path)?;
        let sc = Arc::new(ServerCert {
            current: RwLock::new((Arc::new(ck), mtime(&cert_path), mtime(&key_path))),
            cert_path,
            key_path,
        });
        tracing::info!(fingerprint = %sc.fingerprint(), cert = %sc.cert_path.display(), "server certificate");
        Ok(sc)
    }

    /// SHA-256 of the end-entity certificate in use (what clients pin).
    pub fn fingerprint(&self) -> String {
        fingerprint(self.current.read().0.end_entity_cert().map(|c| c.as_ref()).unwrap_or_default())
    }

    /// Re-reads the files if their modification time changed. A file that does not load keeps
    /// the old certificate in use (and says so in the log).
    pub fn reload_if_changed(&self) -> bool {
        let (c, k) = (mtime(&self.cert_path), mtime(&self.key_path));
        {
            let cur = self.current.read();
            if cur.1 == c && cur.2 == k {
                return false;
            }
        }
        match load_certified_key(&self.cert_path, &self.key_path) {
            Ok(ck) => {
                *self.current.write() = (Arc::new(ck), c, k);
                tracing::info!(fingerprint = %self.fingerprint(), "reloaded the server certificate");
                true
            }
            Err(e) => {
                tracing::warn!(error = %e, "the changed certificate does not load; keeping the old one");
                false
            }
        }
    }

    /// A rustls server configuration (HTTP/2) serving this certificate.
    pub fn server_config(self: &Arc<Self>) -> Arc<rustls::ServerConfig> {
        let mut cfg = rustls::ServerConfig::builder_with_provider(install_crypto_provider())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions")
            .with_no_client_auth()
            .with_cert_resolver(self.clone());
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Arc::new(cfg)
    }
}

impl ResolvesServerCert for ServerCert {
    fn resolve(&self, _hello: ClientHello<'_>) -> Option<Arc<CertifiedKey>> {
        Some(self.current.read().0.clone())
    }
}

/// Writes a file readable by its owner only.
pub fn write_private(path: &Path, bytes: &[u8]) -> Result<(), TlsError> {
    use std::io::Write;
    use std::os::unix::fs::OpenOptionsExt;
    let mut f =
        std::fs::OpenOptions::new().write(true).create(true).truncate(true).mode(0o600).open(path).map_err(io(path))?;
    f.write_all(bytes).map_err(io(path))
}

/// How a client trusts a server.
#[derive(Clone, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct ClientTrust {
    /// PEM file of the CA (or the server's own certificate).
    pub ca_file: Option<PathBuf>,
    /// The server certificate's SHA-256 fingerprint.
    pub fingerprint: Option<String>,
    /// The CA's PEM itself (a Kubernetes Secret's `ca.crt` held in memory), instead of a file.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_pem: Option<String>,
    /// The name the server's certificate must carry, when the address dialled is not that name
    /// (an operator reaching a Service's pod through a forwarded port); default: the address's host.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server_name: Option<String>,
}

impl ClientTrust {
    /// A rustls client configuration (HTTP/2) verifying servers this way.
    pub fn client_config(&self) -> Result<Arc<rustls::ClientConfig>, TlsError> {
        let provider = install_crypto_provider();
        let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
            .with_safe_default_protocol_versions()
            .expect("aws-lc-rs supports the default protocol versions");
        let mut cfg = if let Some(fp) = &self.fingerprint {
            let want = parse_fingerprint(fp)?;
            builder
                .dangerous()
                .with_custom_certificate_verifier(Arc::new(PinnedVerifier { want, provider }))
                .with_no_client_auth()
        } else if let Some(pem) = &self.ca_pem {
            let path = PathBuf::from("(the CA given in memory)");
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                let c = c.map_err(|e| TlsError::Pem { path: path.clone(), message: e.to_string() })?;
                roots.add(c)?;
            }
            if roots.is_empty() {
                return Err(TlsError::Pem { path, message: "no certificate in it".into() });
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else if let Some(ca) = &self.ca_file {
            let mut roots = rustls::RootCertStore::empty();
            for c in CertificateDer::pem_file_iter(ca)
                .map_err(|e| TlsError::Pem { path: ca.clone(), message: e.to_string() })?
            {
                let c = c.map_err(|e| TlsError::Pem { path: ca.clone(), message: e.to_string() })?;
                roots.add(c)?;
            }
            builder.with_root_certificates(roots).with_no_client_auth()
        } else {
            return Err(TlsError::NoTrust);
        };
        cfg.alpn_protocols = vec![b"h2".to_vec()];
        Ok(Arc::new(cfg))
    }
}

/// Accepts exactly the server certificate with the pinned SHA-256 (names and dates are not
/// checked: the pin is the identity), and still verifies the handshake signature.
#[derive(Debug)]
struct PinnedVerifier {
    want: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for PinnedVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let got: [u8; 32] = Sha256::digest(end_entity.as_ref()).into();
        if got == self.want {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General(format!(
                "server certificate fingerprint {} does not match the pinned {}",
                hex::encode(got),
                hex::encode(self.want)
            )))
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_is_aws_lc_rs_and_install_is_idempotent() {
        let a = install_crypto_provider();
        let b = install_crypto_provider();
        assert!(Arc::ptr_eq(&a, &b));
        assert!(
            a.kx_groups.iter().any(|g| format!("{g:?}").contains("X25519MLKEM768")),
            "aws-lc-rs offers the post-quantum hybrid group; ring does not: {:?}",
            a.kx_groups
        );
    }

    #[test]
    fn generated_certificate_is_kept_private_and_reused() {
        use std::os::unix::fs::PermissionsExt;
        let dir = tempfile::tempdir().unwrap();
        let a = ServerCert::load_or_generate(None, dir.path(), &["localhost".into()]).unwrap();
        let mode = std::fs::metadata(dir.path().join("server.key")).unwrap().permissions().mode();
        assert_eq!(mode & 0o777, 0o600);
        let b = ServerCert::load_or_generate(None, dir.path(), &["localhost".into()]).unwrap();
        assert_eq!(a.fingerprint(), b.fingerprint(), "the kept certificate is reused");
        assert_eq!(parse_fingerprint(&a.fingerprint()).unwrap().len(), 32);
    }

    #[test]
    fn changed_files_are_reloaded() {
        let dir = tempfile::tempdir().unwrap();
        let (c, k) = (dir.path().join("c.pem"), dir.path().join("k.pem"));
        let (cert, key) = self_signed(&["a".into()]).unwrap();
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        let sc = ServerCert::load_or_generate(Some((c.clone(), k.clone())), dir.path(), &[]).unwrap();
        let before = sc.fingerprint();
        assert!(!sc.reload_if_changed());
        std::thread::sleep(std::time::Duration::from_millis(20));
        let (cert, key) = self_signed(&["b".into()]).unwrap();
        std::fs::write(&c, cert).unwrap();
        std::fs::write(&k, key).unwrap();
        assert!(sc.reload_if_changed());
        assert_ne!(sc.fingerprint(), before);
    }

    #[test]
    fn a_client_without_trust_is_refused_with_advice() {
        let err = ClientTrust::default().client_config().unwrap_err();
        assert!(err.to_string().contains("fingerprint"), "{err}");
        assert!(parse_fingerprint("zz").is_err());
    }
}
