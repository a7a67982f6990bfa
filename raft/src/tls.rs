//! Owns TLS configuration, through rustls with the ring provider (never aws-lc): reading
//! PEM certificates and keys, the server side of a listener (optionally requiring client
//! certificates signed by a trusted CA: mutual TLS), the client side used by
//! [`crate::client::StoreClient`] and the peer client (trusting a CA, presenting a client
//! certificate), and installing ring as the process's default rustls provider, which
//! reqwest needs to build any client at all.
//!
//! Listening itself (handshakes, timeouts) is [`crate::serve`]'s business.

use std::path::{Path, PathBuf};
use std::sync::Arc;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

/// Why TLS could not be configured.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("{what} {path}: {message}")]
    File {
        what: &'static str,
        path: String,
        message: String,
    },
    #[error("TLS configuration: {0}")]
    Config(String),
}

/// A certificate chain (leaf first) and its private key, as PEM files.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CertKey {
    pub cert: PathBuf,
    pub key: PathBuf,
}

/// TLS of the peer API: this member's certificate (served, and presented as a client
/// certificate when dialling), and the CA that signs every member's certificate.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PeerTls {
    pub cert_key: CertKey,
    /// Verifies peers' server certificates when dialling; when given, the peer listener
    /// also requires a client certificate signed by it (mutual TLS). Without it, peers'
    /// certificates are checked against the system's roots and no client certificate is
    /// asked for.
    pub trusted_ca: Option<PathBuf>,
}

impl PeerTls {
    /// True when the peer listener requires and verifies client certificates.
    pub fn is_mutual(&self) -> bool {
        self.trusted_ca.is_some()
    }
}

/// Makes ring the process's default rustls provider (reqwest builds no client without
/// one). Idempotent; a provider installed earlier stays.
pub fn install_crypto_provider() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        // Err means another provider was installed first: that one is used.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

fn file_error(what: &'static str, path: &Path, message: impl ToString) -> TlsError {
    TlsError::File {
        what,
        path: path.display().to_string(),
        message: message.to_string(),
    }
}

/// Every certificate in a PEM file (at least one).
pub fn read_certs(
    what: &'static str,
    path: &Path,
) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    let certs = CertificateDer::pem_file_iter(path)
        .map_err(|e| file_error(what, path, e))?
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| file_error(what, path, e))?;
    if certs.is_empty() {
        return Err(file_error(what, path, "holds no PEM certificate"));
    }
    Ok(certs)
}

/// The first private key (PKCS#8, PKCS#1 or SEC1) in a PEM file.
pub fn read_key(path: &Path) -> Result<PrivateKeyDer<'static>, TlsError> {
    PrivateKeyDer::from_pem_file(path).map_err(|e| {
        let message = match e {
            rustls::pki_types::pem::Error::NoItemsFound => "holds no PEM private key".to_string(),
            other => other.to_string(),
        };
        file_error("key file", path, message)
    })
}

fn root_store(ca: &Path) -> Result<rustls::RootCertStore, TlsError> {
    let mut roots = rustls::RootCertStore::empty();
    for cert in read_certs("CA file", ca)? {
        roots
            .add(cert)
            .map_err(|e| file_error("CA file", ca, format!("unusable CA certificate: {e}")))?;
    }
    Ok(roots)
}

/// The server side of a listener: serves `cert_key`; with `client_ca`, requires every
/// client to present a certificate signed by it (mutual TLS).
pub fn server_config(
    cert_key: &CertKey,
    client_ca: Option<&Path>,
) -> Result<Arc<rustls::ServerConfig>, TlsError> {
    let certs = read_certs("certificate file", &cert_key.cert)?;
    let key = read_key(&cert_key.key)?;
    let builder = rustls::ServerConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?;
    let builder = match client_ca {
        Some(ca) => {
            let verifier = rustls::server::WebPkiClientVerifier::builder_with_provider(
                Arc::new(root_store(ca)?),
                provider(),
            )
            .build()
            .map_err(|e| file_error("CA file", ca, e))?;
            builder.with_client_cert_verifier(verifier)
        }
        None => builder.with_no_client_auth(),
    };
    let mut config = builder.with_single_cert(certs, key).map_err(|e| {
        TlsError::Config(format!(
            "certificate {} with key {}: {e}",
            cert_key.cert.display(),
            cert_key.key.display()
        ))
    })?;
    config.alpn_protocols = vec![b"h2".to_vec(), b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

/// The client side for a server whose certificate `ca` signed (only `ca` is trusted), and
/// presenting `identity` as a client certificate when given.
pub fn client_config(
    ca: &Path,
    identity: Option<&CertKey>,
) -> Result<rustls::ClientConfig, TlsError> {
    let builder = rustls::ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()
        .map_err(|e| TlsError::Config(e.to_string()))?
        .with_root_certificates(root_store(ca)?);
    let mut config = match identity {
        Some(id) => builder
            .with_client_auth_cert(
                read_certs("certificate file", &id.cert)?,
                read_key(&id.key)?,
            )
            .map_err(|e| {
                TlsError::Config(format!(
                    "client certificate {} with key {}: {e}",
                    id.cert.display(),
                    id.key.display()
                ))
            })?,
        None => builder.with_no_client_auth(),
    };
    // reqwest speaks HTTP/1.1 only here (its http2 feature is off).
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(config)
}

/// What a client trusts when it dials `https://`.
#[derive(Clone, Copy, Debug)]
pub enum Trust<'a> {
    /// It only dials plain `http://`: no roots are loaded (an `https://` URL would fail).
    PlainHttp,
    /// The system's roots (loaded once per process, on first use).
    System,
    /// Only the CA certificates in this PEM file.
    Ca(&'a Path),
}

/// The client side trusting the system's roots, built once: loading them takes a while.
fn system_config() -> Result<rustls::ClientConfig, TlsError> {
    static SYSTEM: std::sync::OnceLock<Result<rustls::ClientConfig, String>> =
        std::sync::OnceLock::new();
    let built = SYSTEM.get_or_init(|| {
        let found = rustls_native_certs::load_native_certs();
        for e in &found.errors {
            tracing::warn!(error = %e, "reading the system's CA certificates");
        }
        let mut roots = rustls::RootCertStore::empty();
        let (_added, _ignored) = roots.add_parsable_certificates(found.certs);
        let mut config = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| e.to_string())?
            .with_root_certificates(roots)
            .with_no_client_auth();
        config.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(config)
    });
    built.clone().map_err(TlsError::Config)
}

/// A reqwest client builder with TLS per `trust` (presenting `identity`, a client
/// certificate, to servers `Trust::Ca` names). Always the ring provider. Also installs ring
/// as the process default, so that other reqwest clients in the process can be built.
pub fn reqwest_builder(
    trust: Trust<'_>,
    identity: Option<&CertKey>,
) -> Result<reqwest::ClientBuilder, TlsError> {
    install_crypto_provider();
    let config = match trust {
        Trust::PlainHttp => rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()
            .map_err(|e| TlsError::Config(e.to_string()))?
            .with_root_certificates(rustls::RootCertStore::empty())
            .with_no_client_auth(),
        Trust::System => system_config()?,
        Trust::Ca(ca) => client_config(ca, identity)?,
    };
    Ok(reqwest::Client::builder().tls_backend_preconfigured(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unusable_files_are_named_in_the_error() {
        let dir = tempfile::tempdir().expect("tempdir");
        let missing = CertKey {
            cert: dir.path().join("missing.crt"),
            key: dir.path().join("missing.key"),
        };
        let e = server_config(&missing, None).expect_err("missing files");
        assert!(e.to_string().contains("missing.crt"), "{e}");

        let empty = dir.path().join("empty.pem");
        std::fs::write(&empty, "not PEM at all\n").expect("write");
        let e = read_certs("CA file", &empty).expect_err("no certificate");
        assert!(e.to_string().contains("holds no PEM certificate"), "{e}");
        let e = read_key(&empty).expect_err("no key");
        assert!(e.to_string().contains("holds no PEM private key"), "{e}");
        let e = client_config(&empty, None).expect_err("no CA certificate");
        assert!(e.to_string().contains("empty.pem"), "{e}");
    }
}
