//! The server's certificate (`http.tls_cert`, `http.tls_key`, PEM) and the TLS acceptor made from it.
//!
//! The certificate can be replaced while livegate runs (SIGHUP calls [`TlsCerts::reload`]): connections accepted
//! afterwards get the new one, open connections keep the session they negotiated, and a file that does not
//! load leaves the old certificate in place.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use parking_lot::RwLock;
use rustls::ServerConfig;
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};

#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read {path}: {detail}")]
    Read { path: String, detail: String },
    #[error("{0} holds no PEM certificate")]
    NoCertificate(String),
    #[error("{path}: the key does not fit the certificate, or is not a usable key: {source}")]
    Key { path: String, source: rustls::Error },
}

/// The certificate chain and key in use, reloadable.
pub struct TlsCerts {
    cert: PathBuf,
    key: PathBuf,
    current: RwLock<Arc<ServerConfig>>,
}

/// ALPN protocols offered, in order of preference.
pub const ALPN_H2: &[u8] = b"h2";
pub const ALPN_HTTP11: &[u8] = b"http/1.1";

impl TlsCerts {
    /// Loads `cert` (a PEM chain, leaf first) and `key` (PEM, PKCS#8, PKCS#1 or SEC1).
    pub fn load(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<Self>, TlsError> {
        let config = server_config(cert, key, alpn)?;
        Ok(Arc::new(Self { cert: cert.to_owned(), key: key.to_owned(), current: RwLock::new(config) }))
    }

    /// Reads the files again; on success new connections get the new certificate.
    pub fn reload(&self) -> Result<(), TlsError> {
        let alpn: Vec<Vec<u8>> = self.current.read().alpn_protocols.clone();
        let alpn: Vec<&[u8]> = alpn.iter().map(Vec::as_slice).collect();
        let config = server_config(&self.cert, &self.key, &alpn)?;
        *self.current.write() = config;
        Ok(())
    }

    /// An acceptor with the certificate in use now.
    pub fn acceptor(&self) -> tokio_rustls::TlsAcceptor {
        tokio_rustls::TlsAcceptor::from(self.current.read().clone())
    }
}

fn server_config(cert: &Path, key: &Path, alpn: &[&[u8]]) -> Result<Arc<ServerConfig>, TlsError> {
    let read = |p: &Path| {
        std::fs::read(p).map_err(|e| TlsError::Read { path: p.display().to_string(), detail: e.to_string() })
    };
    let cert_pem = read(cert)?;
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(&cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| TlsError::Read { path: cert.display().to_string(), detail: e.to_string() })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(cert.display().to_string()));
    }
    let key_pem = read(key)?;
    let key_der = PrivateKeyDer::from_pem_slice(&key_pem)
        .map_err(|e| TlsError::Read { path: key.display().to_string(), detail: e.to_string() })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|source| TlsError::Key { path: key.display().to_string(), source })?
        .with_no_client_auth()
        .with_single_cert(chain, key_der)
        .map_err(|source| TlsError::Key { path: key.display().to_string(), source })?;
    config.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(config))
}
