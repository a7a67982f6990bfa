//! TLS and the connection limit, on real processes: a store cluster with TLS on its client
//! and peer listeners and mutual TLS between members serves https to clients that trust its
//! CA and to no one else; a peer without a certificate from the cluster's CA cannot speak
//! Raft; the API server serves https behind its token and reaches a TLS store through
//! --store-ca-file; a listener at its connection limit answers 429 (TLS handshakes in
//! progress count, and stalled ones time out). Certificates are made at test time (rcgen).

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{free_port, impostor_is_refused, wait_until, Process, StoreCluster, BIN};
use futures::StreamExt;
use miniku_store::client::{GetOptions, PutOptions, StoreClient, WatchOptions};
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa,
    KeyPair, KeyUsagePurpose,
};
use serde_json::{json, Value};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A certificate and its key, as PEM files.
struct Pem {
    cert: PathBuf,
    key: PathBuf,
}

impl Pem {
    fn args(&self, cert_flag: &str, key_flag: &str) -> Vec<String> {
        vec![
            cert_flag.into(),
            self.cert.display().to_string(),
            key_flag.into(),
            self.key.display().to_string(),
        ]
    }

    /// Certificate and key in one PEM, as reqwest's `Identity` takes them.
    fn identity(&self) -> Result<reqwest::Identity> {
        let mut pem = std::fs::read(&self.cert)?;
        pem.extend(std::fs::read(&self.key)?);
        Ok(reqwest::Identity::from_pem(&pem)?)
    }
}

/// A certificate authority writing its certificate and the ones it issues into a directory.
struct Ca {
    dir: PathBuf,
    issuer: CertifiedIssuer<'static, KeyPair>,
    file: PathBuf,
}

impl Ca {
    fn new(dir: &Path, name: &str) -> Result<Ca> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        let issuer = CertifiedIssuer::self_signed(params, KeyPair::generate()?)?;
        let file = dir.join(format!("{name}-ca.pem"));
        std::fs::write(&file, issuer.pem())?;
        Ok(Ca {
            dir: dir.to_path_buf(),
            issuer,
            file,
        })
    }

    /// A certificate for 127.0.0.1 and localhost, good as server and as client certificate.
    fn issue(&self, name: &str) -> Result<Pem> {
        let key = KeyPair::generate()?;
        let cert = leaf_params(name)?.signed_by(&key, &self.issuer)?;
        write_pem(&self.dir, name, &cert.pem(), &key)
    }

    fn trust(&self) -> Result<Vec<reqwest::Certificate>> {
        Ok(reqwest::Certificate::from_pem_bundle(&std::fs::read(
            &self.file,
        )?)?)
    }
}

fn leaf_params(name: &str) -> Result<CertificateParams> {
    let mut params = CertificateParams::new(vec!["127.0.0.1".to_string(), "localhost".into()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.extended_key_usages = vec![
        ExtendedKeyUsagePurpose::ServerAuth,
        ExtendedKeyUsagePurpose::ClientAuth,
    ];
    Ok(params)
}

fn write_pem(dir: &Path, name: &str, cert: &str, key: &KeyPair) -> Result<Pem> {
    let pem = Pem {
        cert: dir.join(format!("{name}.crt")),
        key: dir.join(format!("{name}.key")),
    };
    std::fs::write(&pem.cert, cert)?;
    std::fs::write(&pem.key, key.serialize_pem())?;
    Ok(pem)
}

/// A self-signed certificate: what a stranger without the cluster's CA can make.
fn self_signed(dir: &Path, name: &str) -> Result<Pem> {
    let key = KeyPair::generate()?;
    let cert = leaf_params(name)?.self_signed(&key)?;
    write_pem(dir, name, &cert.pem(), &key)
}

fn strs(v: &[String]) -> Vec<&str> {
    v.iter().map(String::as_str).collect()
}

/// A reqwest client trusting `ca` only, presenting `identity` if given.
fn https_client(ca: &Ca, identity: Option<&Pem>) -> Result<reqwest::Client> {
    miniku_store::tls::install_crypto_provider();
    let mut b = reqwest::Client::builder()
        .tls_certs_only(ca.trust()?)
        .timeout(Duration::from_secs(10));
    if let Some(id) = identity {
        b = b.identity(id.identity()?);
    }
    Ok(b.build()?)
}

/// Every flag of a member with TLS on both listeners and mutual TLS between members.
fn tls_member_args(ca: &Ca, client: &Pem, peer: &Pem) -> Vec<String> {
    let mut args = client.args("--cert-file", "--key-file");
    args.extend(peer.args("--peer-cert-file", "--peer-key-file"));
    args.extend([
        "--peer-trusted-ca-file".into(),
        ca.file.display().to_string(),
    ]);
    args
}

/// Three members with TLS on both listeners and mutual TLS between them, all certificates
/// from one CA.
async fn mutual_tls_cluster() -> Result<(Ca, StoreCluster)> {
    let tmp = tempfile::tempdir()?;
    let ca = Ca::new(tmp.path(), "cluster")?;
    let (client_pem, peer_pem) = (ca.issue("store")?, ca.issue("peer")?);
    let args = tls_member_args(&ca, &client_pem, &peer_pem);
    // Electing a leader already needs the members to dial each other over mutual TLS.
    let store = StoreCluster::start_tls(tmp, 3, &strs(&args), ca.file.clone(), None).await?;
    Ok((ca, store))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_tls_cluster_serves_https_to_clients_that_trust_its_ca_and_to_no_one_else() -> Result<()>
{
    let (ca, store) = mutual_tls_cluster().await?;

    let trusting = StoreClient::new(store.endpoints())?.with_ca_file(Some(&ca.file))?;
    ensure!(
        store.endpoints().iter().all(|e| e.starts_with("https://")),
        "endpoints {:?}",
        store.endpoints()
    );
    let put = trusting
        .put(b"tls/a", b"one", PutOptions::default())
        .await?;
    let start = put.header.revision + 1;
    // Every member answers a linearizable read over https (a read index over mutual TLS
    // for the followers).
    for m in &store.members {
        let c = StoreClient::new(vec![m.endpoint()])?.with_ca_file(Some(&ca.file))?;
        let got = c.get(b"tls/a", GetOptions::default()).await?;
        let value = got.kvs.first().map(|kv| kv.value.as_bytes().to_vec());
        ensure!(
            value.as_deref() == Some(&b"one"[..]),
            "member {}: {got:?}",
            m.id
        );
    }
    // A watch on one member sees writes made through another.
    let watcher =
        StoreClient::new(vec![store.member(3).endpoint()])?.with_ca_file(Some(&ca.file))?;
    let mut watch = watcher.watch(
        b"tls/",
        WatchOptions {
            prefix: true,
            start_revision: start,
            ..Default::default()
        },
    );
    let writer =
        StoreClient::new(vec![store.member(1).endpoint()])?.with_ca_file(Some(&ca.file))?;
    for i in 0..5 {
        writer
            .put(format!("tls/{i}").as_bytes(), b"v", PutOptions::default())
            .await?;
    }
    let mut seen = Vec::new();
    while seen.len() < 5 {
        let m = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await
            .context("no watch event within 10 s")?
            .context("the watch ended")??;
        seen.extend(m.events.iter().map(|e| e.kv.mod_revision));
    }
    ensure!(
        seen == (start..start + 5).collect::<Vec<_>>(),
        "watched revisions {seen:?}, expected {start}..{}",
        start + 5
    );

    let m1 = store.member(1);
    // Plain HTTP to the TLS ports gets no HTTP answer.
    let plain = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()?;
    for port in [m1.client_port, m1.peer_port] {
        let r = plain
            .get(format!("http://127.0.0.1:{port}/health"))
            .send()
            .await;
        ensure!(r.is_err(), "plain HTTP to TLS port {port} answered: {r:?}");
    }
    // A client that does not trust the cluster's CA refuses the members' certificate.
    let untrusting = plain.get(m1.url("/health")).send().await;
    match untrusting {
        Err(e) => ensure!(
            format!("{e:?}").to_lowercase().contains("certificate"),
            "expected a certificate error: {e:?}"
        ),
        Ok(r) => bail!("a client without the CA got an answer: {}", r.status()),
    }
    let stranger_ca = Ca::new(store.tmp.path(), "stranger")?;
    let wrong = StoreClient::new(vec![m1.endpoint()])?
        .with_ca_file(Some(&stranger_ca.file))?
        .with_timeout(Duration::from_secs(3));
    let r = wrong.get(b"tls/a", GetOptions::default()).await;
    ensure!(r.is_err(), "a client trusting another CA read: {r:?}");
    // The same request with the cluster's CA works: the refusals were about trust.
    let ok = store.http()?.get(m1.url("/health")).send().await?;
    ensure!(ok.status() == 200, "/health with the CA: {}", ok.status());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_peer_without_a_certificate_from_the_cluster_ca_cannot_speak_raft() -> Result<()> {
    let (ca, store) = mutual_tls_cluster().await?;
    // Any certificate from the cluster's CA is a member's.
    let peer_pem = ca.issue("peer-2")?;
    let leader = store.wait_leader(&[1, 2, 3]).await?;
    let http = store.http()?;
    let cluster = |id: u64| {
        let (http, url) = (http.clone(), store.member(id).url("/v1/cluster"));
        async move { anyhow::Ok(http.get(url).send().await?.json::<Value>().await?) }
    };
    let term = cluster(leader).await?["term"].as_u64().context("term")?;

    let dir = store.tmp.path();
    let rogue_ca = Ca::new(dir, "rogue")?;
    let strangers = [
        (
            "a self-signed certificate",
            Some(self_signed(dir, "self-signed")?),
        ),
        (
            "a certificate from another CA",
            Some(rogue_ca.issue("rogue-peer")?),
        ),
        ("no certificate", None),
    ];
    let member_client = https_client(&ca, Some(&peer_pem))?;
    for m in &store.members {
        for path in ["/raft/append", "/raft/vote", "/raft/snapshot", "/peer/call"] {
            let url = format!("https://127.0.0.1:{}{path}", m.peer_port);
            for (what, identity) in &strangers {
                // Trusts the cluster's CA, so the refusal is the member's, not the client's.
                let stranger = https_client(&ca, identity.as_ref())?;
                let r = stranger.post(&url).body(vec![0u8; 64]).send().await;
                ensure!(
                    r.is_err(),
                    "{path} on member {} with {what} was answered: {:?}",
                    m.id,
                    r.map(|r| r.status())
                );
            }
            // A member's certificate gets through the handshake to an HTTP answer (about
            // the garbage body): the failures above were the handshake's.
            member_client
                .post(&url)
                .body(vec![0u8; 64])
                .send()
                .await
                .with_context(|| format!("{path} on member {} with a member's cert", m.id))?;
        }
    }

    // An impostor member 2 with its own data and a self-signed certificate (trusting the
    // cluster's CA) campaigns: its RPCs fail the handshake and the term does not move.
    let impostor_pem = self_signed(dir, "impostor")?;
    let mut credentials: Vec<std::ffi::OsString> = impostor_pem
        .args("--peer-cert-file", "--peer-key-file")
        .into_iter()
        .map(Into::into)
        .collect();
    credentials.push("--peer-trusted-ca-file".into());
    credentials.push(ca.file.clone().into_os_string());
    impostor_is_refused(&store, dir, &credentials, "received fatal alert: UnknownCA").await?;
    let v = cluster(leader).await?;
    ensure!(
        v["leader_id"].as_u64() == Some(leader) && v["term"].as_u64() == Some(term),
        "the cluster changed: {v}"
    );
    Ok(())
}

const API_TOKEN: &str = "api-token-0123456789abcdef";
const STORE_TOKEN: &str = "store-token-0123456789abcdef";

#[tokio::test(flavor = "multi_thread")]
async fn the_api_server_serves_https_behind_its_token_and_reaches_a_tls_store() -> Result<()> {
    let tmp = tempfile::tempdir()?;
    let ca = Ca::new(tmp.path(), "cluster")?;
    let store_pem = ca.issue("store")?;
    let api_pem = ca.issue("api")?;
    let store_token = tmp.path().join("store.token");
    std::fs::write(&store_token, STORE_TOKEN)?;
    let mut args = store_pem.args("--cert-file", "--key-file");
    args.extend(["--token-file".into(), store_token.display().to_string()]);
    let store = StoreCluster::start_tls(
        tmp,
        3,
        &strs(&args),
        ca.file.clone(),
        Some(STORE_TOKEN.into()),
    )
    .await?;
    let dir = store.tmp.path();
    let api_token = dir.join("api.token");
    std::fs::write(&api_token, API_TOKEN)?;
    let stores = store.endpoints().join(",");
    let spawn = |port: u16, store_ca: Option<&Path>, log: &str| {
        let mut cmd = Command::new(BIN);
        cmd.args(["apiserver", "--listen", &format!("127.0.0.1:{port}")])
            .args(api_pem.args("--cert-file", "--key-file"))
            .arg("--token-file")
            .arg(&api_token)
            .args(["--store", &stores, "--store-token-file"])
            .arg(&store_token)
            .env_remove("MINIKU_STORE_CA_FILE");
        // The component flag's environment variable, as a deployment would set it.
        if let Some(ca) = store_ca {
            cmd.env("MINIKU_STORE_CA_FILE", ca);
        }
        Process::spawn(&mut cmd, &dir.join(log))
    };
    let (port, blind_port) = (free_port(), free_port());
    let children = vec![
        spawn(port, Some(&ca.file), "api.log")?,
        // Does not trust the store's CA: cannot use the store.
        spawn(blind_port, None, "api-blind.log")?,
    ];
    let result = async {
        let http = https_client(&ca, None)?;
        let url = |port: u16, p: &str| format!("https://127.0.0.1:{port}{p}");
        // Healthy means it answers over https and reaches the store; the blind one only
        // answers (unhealthy).
        for (p, healthy) in [(port, true), (blind_port, false)] {
            let status = wait_until(Duration::from_secs(30), "the API server over https", || {
                let (http, u) = (http.clone(), url(p, "/health"));
                async move {
                    let r = http.get(u).send().await.ok()?;
                    (!healthy || r.status() == 200).then_some(r.status())
                }
            })
            .await?;
            ensure!(
                (status == 200) == healthy,
                "/health of the API server on {p}: {status}"
            );
        }
        let bearer = format!("Bearer {API_TOKEN}");
        for auth in [None, Some("Bearer wrong-token-0123456789")] {
            let mut req = http.get(url(port, "/replicasets"));
            if let Some(a) = auth {
                req = req.header("authorization", a);
            }
            let r = req.send().await?;
            let status = r.status();
            let body: Value = r.json().await?;
            ensure!(
                status == 401 && body["error"] == "unauthorized",
                "GET /replicasets over https with {auth:?}: {status} {body}"
            );
        }
        let r = http
            .get(url(port, "/replicasets"))
            .header("authorization", &bearer)
            .send()
            .await?;
        let status = r.status();
        let list: Value = r.json().await?;
        ensure!(status == 200 && list == json!([]), "{status} {list}");
        let rs = json!({"name": "web", "desiredCount": 1, "selector": {"app": "web"},
                        "template": {"image": "nginx:latest", "labels": {"app": "web"}}});
        let created = http
            .post(url(port, "/replicasets"))
            .header("authorization", &bearer)
            .json(&rs)
            .send()
            .await?;
        ensure!(
            created.status() == 201,
            "POST over https: {}",
            created.status()
        );
        // It is in the store, read over https with the store's CA and token.
        let token = miniku_store::auth::Token::new(STORE_TOKEN).map_err(anyhow::Error::msg)?;
        let got = StoreClient::new(store.endpoints())?
            .with_token(Some(token))?
            .with_ca_file(Some(&ca.file))?
            .get(
                b"/registry/",
                GetOptions {
                    prefix: true,
                    count_only: true,
                    ..Default::default()
                },
            )
            .await?;
        ensure!(got.count >= 1, "nothing in the store: {got:?}");
        // The API server without the store's CA cannot reach it.
        let blind = http
            .get(url(blind_port, "/replicasets"))
            .header("authorization", &bearer)
            .send()
            .await?
            .status();
        ensure!(
            blind != 200,
            "an API server not trusting the store's CA read it"
        );
        // Plain HTTP to the API server's TLS port gets no HTTP answer.
        let plain = reqwest::Client::new()
            .get(format!("http://127.0.0.1:{port}/health"))
            .timeout(Duration::from_secs(5))
            .send()
            .await;
        ensure!(plain.is_err(), "plain HTTP answered: {plain:?}");
        Ok(())
    }
    .await;
    drop(children);
    result.with_context(|| {
        let log = |f: &str| std::fs::read_to_string(dir.join(f)).unwrap_or_default();
        format!(
            "===== api.log =====\n{}===== api-blind.log =====\n{}",
            log("api.log"),
            log("api-blind.log")
        )
    })
}

/// Sends `GET /health` on `stream` and reads one response: (status, body). With `close`,
/// reads until the server closes the connection.
async fn raw_get(stream: &mut TcpStream, close: bool) -> Result<(u16, String)> {
    let connection = if close { "close" } else { "keep-alive" };
    stream
        .write_all(
            format!("GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\nConnection: {connection}\r\n\r\n")
                .as_bytes(),
        )
        .await?;
    let mut buf = Vec::new();
    let read = async {
        loop {
            let mut chunk = [0u8; 4096];
            let n = stream.read(&mut chunk).await?;
            if n == 0 {
                return anyhow::Ok(());
            }
            buf.extend_from_slice(&chunk[..n]);
            if !close {
                if let Some(end) = find(&buf, b"\r\n\r\n") {
                    let head = String::from_utf8_lossy(&buf[..end]).to_ascii_lowercase();
                    let len = head
                        .lines()
                        .find_map(|l| l.strip_prefix("content-length:"))
                        .and_then(|v| v.trim().parse::<usize>().ok())
                        .context("no content-length")?;
                    if buf.len() >= end + 4 + len {
                        return Ok(());
                    }
                }
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .context("no response within 10 s")??;
    let end = find(&buf, b"\r\n\r\n").context("no complete response head")?;
    let head = String::from_utf8_lossy(&buf[..end]).to_string();
    let status = head
        .split_whitespace()
        .nth(1)
        .and_then(|s| s.parse().ok())
        .with_context(|| format!("no status in {head:?}"))?;
    Ok((status, String::from_utf8_lossy(&buf[end + 4..]).to_string()))
}

fn find(hay: &[u8], needle: &[u8]) -> Option<usize> {
    hay.windows(needle.len()).position(|w| w == needle)
}

fn check_429(status: u16, body: &str, limit: usize) -> Result<()> {
    let v: Value = serde_json::from_str(body).with_context(|| format!("body {body:?}"))?;
    ensure!(
        status == 429
            && v["error"] == "resource_exhausted"
            && v["message"] == format!("too many connections (limit {limit})"),
        "over the limit: {status} {body}"
    );
    Ok(())
}

/// A new connection to `addr` on which a request is served (200); retried until one is.
async fn served_connection(addr: &str, what: &str) -> Result<TcpStream> {
    wait_until(Duration::from_secs(10), what, || async {
        let mut s = TcpStream::connect(addr).await.ok()?;
        let (status, _) = raw_get(&mut s, false).await.ok()?;
        (status == 200).then_some(s)
    })
    .await
}

#[tokio::test(flavor = "multi_thread")]
async fn connections_over_the_limit_get_429_until_some_close() -> Result<()> {
    const LIMIT: usize = 8;
    let store = StoreCluster::start_with(1, &["--max-connections", "8"]).await?;
    let addr = format!("127.0.0.1:{}", store.member(1).client_port);
    // LIMIT connections, each served once and then left open and idle. (A connection the
    // harness used may still be closing: such a refusal is retried.)
    let mut idle = Vec::new();
    while idle.len() < LIMIT {
        let mut s = served_connection(&addr, "a connection within the limit").await?;
        let (status, _) = raw_get(&mut s, false).await?;
        ensure!(status == 200, "connection {} reused: {status}", idle.len());
        idle.push(s);
    }
    // One more: a single 429 with the JSON body, then closed.
    for _ in 0..3 {
        let mut extra = TcpStream::connect(&addr).await?;
        let (status, body) = raw_get(&mut extra, true).await?;
        check_429(status, &body, LIMIT)?;
    }
    // And through an ordinary client.
    let http = reqwest::Client::new();
    let r = http.get(store.member(1).url("/health")).send().await?;
    let status = r.status().as_u16();
    check_429(status, &r.text().await?, LIMIT)?;
    // The idle connections were not disturbed.
    for s in idle.iter_mut() {
        ensure!(
            raw_get(s, false).await?.0 == 200,
            "an idle connection broke"
        );
    }
    // Closing three frees three slots.
    idle.truncate(LIMIT - 3);
    let mut reopened = Vec::new();
    for _ in 0..3 {
        let s = served_connection(&addr, "a freed slot").await?;
        reopened.push(s);
    }
    // Full again.
    let mut extra = TcpStream::connect(&addr).await?;
    let (status, body) = raw_get(&mut extra, true).await?;
    check_429(status, &body, LIMIT)
}

#[tokio::test(flavor = "multi_thread")]
async fn stalled_tls_handshakes_hold_slots_only_until_they_time_out() -> Result<()> {
    const LIMIT: usize = 8;
    let tmp = tempfile::tempdir()?;
    let ca = Ca::new(tmp.path(), "cluster")?;
    let pem = ca.issue("store")?;
    let mut args = pem.args("--cert-file", "--key-file");
    args.extend(["--max-connections".into(), LIMIT.to_string()]);
    let store = StoreCluster::start_tls(tmp, 1, &strs(&args), ca.file.clone(), None).await?;
    let m = store.member(1);
    let addr = format!("127.0.0.1:{}", m.client_port);
    // Connections that never start their handshake.
    let mut stalled = Vec::new();
    for _ in 0..LIMIT {
        stalled.push(TcpStream::connect(&addr).await?);
    }
    // Once the server has accepted all of them (it may lag behind the connects on a loaded
    // machine), a new request is over the limit. Every attempt is a new client, so a new
    // connection: one that got a slot before the server had accepted all the stalled ones
    // would otherwise be kept alive, reused, and answered 200 until the end.
    let (status, body) = wait_until(Duration::from_secs(5), "a 429 while they stall", || {
        let (http, u) = (https_client(&ca, None), m.url("/health"));
        async move {
            let http = http.ok()?;
            let r = http.get(u).send().await.ok()?;
            let status = r.status().as_u16();
            (status == 429).then_some((status, r.text().await.ok()?))
        }
    })
    .await?;
    check_429(status, &body, LIMIT)?;
    // The server gives up on them after its handshake timeout (10 s) and closes them...
    for s in stalled.iter_mut() {
        let mut b = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(30), s.read(&mut b))
            .await
            .context("a stalled handshake was never timed out")?
            .unwrap_or(0);
        ensure!(n == 0, "a stalled connection got {n} bytes");
    }
    // ...and requests are served again.
    let http = https_client(&ca, None)?;
    wait_until(
        Duration::from_secs(10),
        "a request served after the timeouts",
        || {
            let (http, u) = (http.clone(), m.url("/health"));
            async move { (http.get(u).send().await.ok()?.status() == 200).then_some(()) }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_alone_keeps_a_listener_on_loopback_but_mutual_tls_authenticates_peers() -> Result<()> {
    miniku_store::tls::install_crypto_provider();
    let tmp = tempfile::tempdir()?;
    let dir = tmp.path();
    let ca = Ca::new(dir, "cluster")?;
    let pem = ca.issue("store")?;
    let store = |name: &str, client: String, peer: String, tls: Vec<String>| {
        let peer_for_cluster = peer.replace("0.0.0.0", "127.0.0.1");
        let mut cmd = Command::new(BIN);
        cmd.args(["store", "--id", "1", "--data-dir"])
            .arg(dir.join(name))
            .args(["--client-addr", &client, "--peer-addr", &peer])
            .args(["--initial-cluster", &format!("1={peer_for_cluster}")])
            .args(tls)
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        cmd
    };
    let loopback = || format!("127.0.0.1:{}", free_port());
    let anywhere = || format!("0.0.0.0:{}", free_port());
    let peer_tls = |mutual: bool| {
        let mut a = pem.args("--peer-cert-file", "--peer-key-file");
        if mutual {
            a.extend([
                "--peer-trusted-ca-file".into(),
                ca.file.display().to_string(),
            ]);
        }
        a
    };
    // TLS on the client API, no token, on every address: refused.
    let out = store(
        "a",
        anywhere(),
        loopback(),
        pem.args("--cert-file", "--key-file"),
    )
    .output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("--token-file"),
        "client API with TLS but no token on 0.0.0.0: {err}"
    );
    // TLS on the peer API without client certificates, no secret: refused.
    let out = store("b", loopback(), anywhere(), peer_tls(false)).output()?;
    let err = String::from_utf8_lossy(&out.stderr);
    ensure!(
        !out.status.success() && err.contains("--peer-token-file"),
        "peer API with TLS but no secret on 0.0.0.0: {err}"
    );
    // Mutual TLS on the peer API: its certificates authenticate; it serves.
    let client = loopback();
    let mut child = store("c", client.clone(), anywhere(), peer_tls(true)).spawn()?;
    let served = wait_until(
        Duration::from_secs(30),
        "the member with mutual TLS",
        || {
            let url = format!("http://{client}/health");
            async move {
                let r = reqwest::get(url).await.ok()?;
                (r.status() == 200).then_some(())
            }
        },
    )
    .await;
    let exited = child.try_wait()?;
    let _ = child.kill();
    let _ = child.wait();
    ensure!(exited.is_none(), "the member exited: {exited:?}");
    served
}

/// Runs the real `etcdctl` with `args`; returns (success, stdout, stderr).
fn etcdctl(args: &[&str]) -> Result<(bool, String, String)> {
    let out = std::process::Command::new("etcdctl")
        .env("ETCDCTL_API", "3")
        .args(args)
        .output()
        .context("running etcdctl (Debian's etcd-client)")?;
    Ok((
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    ))
}

#[tokio::test(flavor = "multi_thread")]
async fn etcdctl_speaks_to_a_tls_cluster_with_its_ca_and_not_without() -> Result<()> {
    let (ca, store) = mutual_tls_cluster().await?;
    let endpoints = format!("--endpoints={}", store.endpoints().join(","));
    let cacert = format!("--cacert={}", ca.file.display());

    let (ok, out, err) = etcdctl(&[&cacert, &endpoints, "put", "tls/e", "over-tls"])?;
    ensure!(ok && out.trim() == "OK", "put: {out} {err}");
    let (ok, out, err) = etcdctl(&[&cacert, &endpoints, "get", "tls/e", "--print-value-only"])?;
    ensure!(ok && out.trim() == "over-tls", "get: {out} {err}");
    // --cluster dials the members' advertised client URLs, https ones here.
    let (ok, out, err) = etcdctl(&[&cacert, &endpoints, "endpoint", "health", "--cluster"])?;
    let healthy = format!("{out}{err}");
    ensure!(
        ok && healthy.matches("https://127.0.0.1:").count() == 3
            && healthy.matches("is healthy").count() == 3,
        "endpoint health --cluster: {healthy}"
    );
    // A CA that did not sign the members' certificates: nothing is answered.
    let stranger = Ca::new(store.tmp.path(), "stranger")?;
    let wrong = format!("--cacert={}", stranger.file.display());
    let (ok, out, err) = etcdctl(&[&wrong, &endpoints, "--command-timeout=3s", "get", "tls/e"])?;
    ensure!(
        !ok && !out.contains("over-tls"),
        "a stranger's CA read: {out} {err}"
    );
    Ok(())
}
