//! How the harness reaches the store: the members' client endpoints and, for a cluster
//! across hosts, the CA that signed their certificates and the bearer token they require.
//! Every client and watcher of a run is built from one [`Access`], so loopback and hosts
//! runs share the workload.

use std::path::PathBuf;
use std::time::Duration;

use miniku_store::auth::Token;
use miniku_store::client::StoreClient;
use miniku_store::tls::{reqwest_builder, Trust};

#[derive(Clone, Debug)]
pub struct Access {
    /// `http://host:port` or `https://host:port`, one per member, in member-id order.
    pub endpoints: Vec<String>,
    /// Trust only this CA (PEM) for `https://` endpoints.
    pub ca_file: Option<PathBuf>,
    /// Sent as `Authorization: Bearer` on every request.
    pub token: Option<Token>,
}

impl Access {
    /// Plain HTTP on loopback, no token.
    pub fn plain(endpoints: Vec<String>) -> Access {
        Access {
            endpoints,
            ca_file: None,
            token: None,
        }
    }

    /// A store client of `endpoints` (a subset of this access's, or all of them).
    pub fn client(&self, endpoints: Vec<String>) -> anyhow::Result<StoreClient> {
        Ok(StoreClient::new(endpoints)?
            .with_ca_file(self.ca_file.as_deref())?
            .with_token(self.token.clone())?)
    }

    /// A store client of every endpoint.
    pub fn any(&self, timeout: Duration) -> anyhow::Result<StoreClient> {
        Ok(self.client(self.endpoints.clone())?.with_timeout(timeout))
    }

    /// A raw HTTP client (for SSE watches) with the same trust; send
    /// [`Access::authorize`]d requests through it.
    pub fn http(&self, connect_timeout: Duration) -> anyhow::Result<reqwest::Client> {
        let trust = match &self.ca_file {
            Some(ca) => Trust::Ca(ca),
            None if self.endpoints.iter().any(|e| e.starts_with("https://")) => Trust::System,
            None => Trust::PlainHttp,
        };
        Ok(reqwest_builder(trust, None)?
            .connect_timeout(connect_timeout)
            .build()?)
    }

    /// Adds the token, if any, to a request.
    pub fn authorize(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(t) => request.bearer_auth(t.expose()),
            None => request,
        }
    }
}
