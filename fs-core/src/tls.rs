//! TLS set-up shared by every stratusfs process.
//!
//! stratusfs uses rustls with aws-lc-rs as its only crypto provider. Several dependencies (kube,
//! object_store's reqwest, tonic) build rustls configurations from the process default provider,
//! so each binary calls [`install_crypto_provider`] first thing in `main`.

use std::sync::Arc;

/// Installs aws-lc-rs as the process-wide rustls crypto provider.
///
/// Idempotent: a second call (or a call after another part of the process installed the same
/// provider) is a no-op. Returns the provider in force.
pub fn install_crypto_provider() -> Arc<rustls::crypto::CryptoProvider> {
    // `install_default` fails only when a provider is already installed; that one is kept.
    let _ = rustls::crypto::aws_lc_rs::default_provider().install_default();
    rustls::crypto::CryptoProvider::get_default()
        .cloned()
        .expect("a rustls crypto provider is installed just above")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn provider_is_aws_lc_rs_and_install_is_idempotent() {
        let a = install_crypto_provider();
        let b = install_crypto_provider();
        assert!(Arc::ptr_eq(&a, &b));
        // aws-lc-rs offers TLS 1.3 suites with AES-256-GCM; ring would too, so check the FIPS-capable
        // provider's identity through its key-exchange group names instead.
        assert!(!a.cipher_suites.is_empty());
        assert!(
            a.kx_groups
                .iter()
                .any(|g| format!("{g:?}").contains("X25519MLKEM768")),
            "aws-lc-rs offers the post-quantum hybrid group; ring does not: {:?}",
            a.kx_groups
        );
    }
}
