//! HTTPS for the streaming server: a rustls acceptor from a PEM certificate chain and key
//! (`streaming.tls_cert`, `streaming.tls_key`), as kubelet's and containerd's servers take.

use std::path::Path;
use std::sync::Arc;

use tokio_rustls::TlsAcceptor;
use tokio_rustls::rustls::pki_types::pem::PemObject;
use tokio_rustls::rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tokio_rustls::rustls::{ServerConfig, crypto};

use crate::errors::{Error, Result};

/// An acceptor serving the chain in `cert` with the key in `key` (PKCS#8, PKCS#1 or SEC1).
pub fn acceptor(cert: &Path, key: &Path) -> Result<TlsAcceptor> {
    let bad = |what: &str, path: &Path, e: &dyn std::fmt::Display| {
        Error::InvalidConfig(format!("{what} {}: {e}", path.display()))
    };
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert)
        .map_err(|e| bad("streaming.tls_cert", cert, &e))?
        .collect::<std::result::Result<_, _>>()
        .map_err(|e| bad("streaming.tls_cert", cert, &e))?;
    if chain.is_empty() {
        return Err(bad(
            "streaming.tls_cert",
            cert,
            &"no PEM CERTIFICATE block in the file",
        ));
    }
    let key_der =
        PrivateKeyDer::from_pem_file(key).map_err(|e| bad("streaming.tls_key", key, &e))?;
    // The provider is named: the build links aws-lc-rs through oci-client, and naming it keeps
    // rustls from having to guess a process default.
    let provider = Arc::new(crypto::aws_lc_rs::default_provider());
    let config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| Error::InvalidConfig(format!("streaming TLS: {e}")))?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|e| {
            Error::InvalidConfig(format!(
                "streaming.tls_cert {} and streaming.tls_key {} do not make a usable \
                 certificate: {e}",
                cert.display(),
                key.display()
            ))
        })?;
    Ok(TlsAcceptor::from(Arc::new(config)))
}
