//! Flags of how a server listens, shared by `miniku store` and `miniku apiserver`: TLS
//! (certificate and key) and the limit on concurrent connections; and the store's peer TLS
//! flags; the bearer tokens their flags name. Only parsing and checking; the listening
//! itself is `miniku_store::serve`.

use std::path::{Path, PathBuf};

use miniku_store::tls::{CertKey, PeerTls};

/// The token in the file the flag `flag` names, if given; an error names the flag.
pub fn token_of(
    flag: &str,
    path: Option<&Path>,
) -> anyhow::Result<Option<miniku_store::auth::Token>> {
    path.map(miniku_store::auth::Token::from_file)
        .transpose()
        .map_err(|e| anyhow::anyhow!("{flag}: {e}"))
}

/// TLS of a client-facing listener (the store's client API, the API server).
#[derive(clap::Args, Debug, Clone)]
pub struct ListenArgs {
    /// PEM file with the certificate chain (leaf first) to serve HTTPS with; needs
    /// --key-file. Without it, plain HTTP. The certificate must name the address clients
    /// dial (subjectAltName IP:... or DNS:...).
    #[arg(long, requires = "key_file")]
    pub cert_file: Option<PathBuf>,
    /// PEM file with the private key of --cert-file (PKCS#8, PKCS#1 or SEC1).
    #[arg(long, requires = "cert_file")]
    pub key_file: Option<PathBuf>,
}

impl ListenArgs {
    /// The certificate and key, when TLS is asked for.
    pub fn tls(&self) -> Option<CertKey> {
        match (&self.cert_file, &self.key_file) {
            (Some(cert), Some(key)) => Some(CertKey {
                cert: cert.clone(),
                key: key.clone(),
            }),
            _ => None,
        }
    }
}

/// The store's client TLS and its connection limit.
#[derive(clap::Args, Debug, Clone)]
pub struct StoreListenArgs {
    #[command(flatten)]
    pub tls: ListenArgs,
    /// Most connections served at once on each listener, client and peer (TLS handshakes
    /// included); further ones get one 429 answer and are closed. Above the 20,000 watchers
    /// a member serves, since each watch stream holds a connection. Keep it below the
    /// open-file limit (ulimit -n).
    #[arg(long, default_value_t = 25_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// The API server's TLS and its connection limit.
#[derive(clap::Args, Debug, Clone)]
pub struct ApiListenArgs {
    #[command(flatten)]
    pub tls: ListenArgs,
    /// Most connections served at once (TLS handshakes included); further ones get one 429
    /// answer and are closed. Keep it below the open-file limit (ulimit -n).
    #[arg(long, default_value_t = 10_000, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_connections: u32,
}

/// TLS between store members.
#[derive(clap::Args, Debug, Clone)]
pub struct PeerTlsArgs {
    /// PEM certificate chain of this member for peer traffic: served on --peer-addr and
    /// presented as a client certificate when dialling other members. Needs --peer-key-file.
    /// Every member then dials the others over https.
    #[arg(long, requires = "peer_key_file")]
    pub peer_cert_file: Option<PathBuf>,
    /// PEM private key of --peer-cert-file.
    #[arg(long, requires = "peer_cert_file")]
    pub peer_key_file: Option<PathBuf>,
    /// PEM file with the CA that signs every member's peer certificate. Members' server
    /// certificates are verified against it, and the peer listener requires a client
    /// certificate signed by it (mutual TLS), which authenticates peers without
    /// --peer-token-file. Without it, peers' certificates are checked against the system's
    /// roots and no client certificate is asked for.
    #[arg(long, requires = "peer_cert_file")]
    pub peer_trusted_ca_file: Option<PathBuf>,
}

impl PeerTlsArgs {
    pub fn tls(&self) -> Option<PeerTls> {
        match (&self.peer_cert_file, &self.peer_key_file) {
            (Some(cert), Some(key)) => Some(PeerTls {
                cert_key: CertKey {
                    cert: cert.clone(),
                    key: key.clone(),
                },
                trusted_ca: self.peer_trusted_ca_file.clone(),
            }),
            _ => None,
        }
    }
}
