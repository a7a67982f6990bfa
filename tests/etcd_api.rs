//! etcd's v3 gRPC API on real store processes, through the `etcd-client` crate (a client
//! Miniku did not write): watches that resume on another member after theirs is killed,
//! lease keep-alive streams, concurrent transactions, and etcd's error codes and texts.
//! The real `etcdctl` is driven by `scripts/test-etcdctl.sh`.

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use anyhow::{anyhow, bail, ensure, Context, Result};
use common::{wait_until, StoreCluster};
use etcd_client::{
    Client, Compare, CompareOp, ConnectOptions, EventType, GetOptions, PutOptions, Txn, TxnOp,
    WatchOptions,
};

async fn connect(endpoint: &str) -> Result<Client> {
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_timeout(Duration::from_secs(10));
    Client::connect([endpoint], Some(opts))
        .await
        .with_context(|| format!("connecting to {endpoint}"))
}

/// The gRPC status an etcd-client error carries.
fn grpc_status(e: etcd_client::Error) -> Result<tonic::Status> {
    match e {
        etcd_client::Error::GRpcStatus(s) => Ok(s),
        other => Err(anyhow!("expected a gRPC status, got {other}")),
    }
}

/// Reads watch responses until `n` events arrived (or the stream fails); returns each
/// event's (revision, key, value, is_put).
async fn read_events(
    stream: &mut etcd_client::WatchStream,
    n: usize,
) -> Result<Vec<(i64, String, String, bool)>> {
    let mut out = Vec::new();
    while out.len() < n {
        let resp = tokio::time::timeout(Duration::from_secs(15), stream.message())
            .await
            .context("no watch response within 15 s")??
            .ok_or_else(|| anyhow!("the watch stream ended"))?;
        ensure!(!resp.canceled(), "watch canceled: {}", resp.cancel_reason());
        for e in resp.events() {
            let kv = e.kv().ok_or_else(|| anyhow!("event without kv"))?;
            out.push((
                kv.mod_revision(),
                kv.key_str()?.to_string(),
                kv.value_str()?.to_string(),
                e.event_type() == EventType::Put,
            ));
        }
    }
    Ok(out)
}

#[tokio::test]
async fn a_watch_resumes_on_another_member_after_its_member_is_killed() -> Result<()> {
    let mut store = StoreCluster::start(3).await?;
    let mut writer = connect(&store.member(2).endpoint()).await?;
    let start = writer
        .put("w/0", "0", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());

    let mut watcher = connect(&store.member(1).endpoint()).await?;
    let mut stream = watcher
        .watch(
            "w/",
            Some(WatchOptions::new().with_prefix().with_start_revision(start)),
        )
        .await?;
    let created = stream
        .message()
        .await?
        .ok_or_else(|| anyhow!("no created response"))?;
    ensure!(created.created(), "the first response must say created");
    for i in 1..10 {
        writer.put(format!("w/{i}"), i.to_string(), None).await?;
    }
    let mut seen = read_events(&mut stream, 10).await?;

    // The watcher's member dies; the watch resumes on member 3 from the next revision,
    // while writes go on through member 2.
    store.kill(1);
    for i in 10..20 {
        writer.put(format!("w/{i}"), i.to_string(), None).await?;
    }
    let last = seen.last().map(|e| e.0).unwrap_or(start);
    let mut resumed = connect(&store.member(3).endpoint()).await?;
    let mut stream = resumed
        .watch(
            "w/",
            Some(
                WatchOptions::new()
                    .with_prefix()
                    .with_start_revision(last + 1),
            ),
        )
        .await?;
    seen.extend(read_events(&mut stream, 10).await?);

    let revisions: Vec<i64> = seen.iter().map(|e| e.0).collect();
    ensure!(
        revisions.windows(2).all(|w| w[1] == w[0] + 1),
        "events must come once each and in revision order, got {revisions:?}"
    );
    let values: Vec<String> = seen.iter().map(|e| e.2.clone()).collect();
    let want: Vec<String> = (0..20).map(|i| i.to_string()).collect();
    ensure!(values == want, "every write once, in order: {values:?}");
    Ok(())
}

#[tokio::test]
async fn a_keep_alive_stream_holds_a_lease_and_its_end_lets_the_lease_expire() -> Result<()> {
    let store = StoreCluster::start(3).await?;
    let mut c = connect(&store.member(2).endpoint()).await?;
    let lease = c.lease_grant(2, None).await?;
    ensure!(lease.ttl() == 2, "granted TTL: {}", lease.ttl());
    c.put(
        "leased",
        "v",
        Some(PutOptions::new().with_lease(lease.id())),
    )
    .await?;

    // Keep it alive well past its TTL, through a follower or the leader alike.
    let (mut keeper, mut answers) = c.lease_keep_alive(lease.id()).await?;
    let held_until = tokio::time::Instant::now() + Duration::from_secs(5);
    let mut renewals = 0;
    while tokio::time::Instant::now() < held_until {
        keeper.keep_alive().await?;
        let answer = answers
            .message()
            .await?
            .ok_or_else(|| anyhow!("the keep-alive stream ended"))?;
        ensure!(
            answer.id() == lease.id() && answer.ttl() == 2,
            "answer: {answer:?}"
        );
        renewals += 1;
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    ensure!(renewals >= 5, "only {renewals} renewals");
    let still = c.get("leased", None).await?;
    ensure!(
        still.kvs().len() == 1,
        "the key must outlive its TTL while kept alive"
    );

    // Stop renewing: the lease expires and its key goes, seen as a DELETE event.
    let rev = still.header().map_or(0, |h| h.revision());
    drop(keeper);
    drop(answers);
    let mut stream = c
        .watch(
            "leased",
            Some(WatchOptions::new().with_start_revision(rev + 1)),
        )
        .await?;
    let deleted = tokio::time::timeout(Duration::from_secs(15), async {
        loop {
            let Some(resp) = stream.message().await? else {
                bail!("watch ended")
            };
            if resp
                .events()
                .iter()
                .any(|e| e.event_type() == EventType::Delete)
            {
                return Ok(());
            }
        }
    })
    .await;
    ensure!(
        matches!(deleted, Ok(Ok(()))),
        "the key was not deleted after the lease expired"
    );
    let ttl = c.lease_time_to_live(lease.id(), None).await?;
    ensure!(
        ttl.ttl() == -1,
        "an expired lease reports TTL -1, got {}",
        ttl.ttl()
    );

    // A keep-alive of a lease that does not exist answers TTL 0, as etcd's does, which the
    // client reports as "lease not found".
    let unknown = async {
        let (mut keeper, mut answers) = c.lease_keep_alive(987_654_321).await?;
        keeper.keep_alive().await?;
        answers.message().await
    }
    .await;
    match unknown {
        Err(etcd_client::Error::LeaseKeepAliveError(m)) if m.contains("lease not found") => {}
        other => bail!("a keep-alive of an unknown lease: {other:?}"),
    }
    Ok(())
}

#[tokio::test]
async fn concurrent_compare_and_swap_transactions_lose_no_update() -> Result<()> {
    let store = StoreCluster::start(3).await?;
    let endpoints = store.endpoints();
    let mut setup = connect(&endpoints[0]).await?;
    setup.put("counter", "0", None).await?;
    let mut tasks = Vec::new();
    for t in 0..6usize {
        let ep = endpoints[t % endpoints.len()].clone();
        tasks.push(tokio::spawn(async move {
            let mut c = connect(&ep).await?;
            let mut won = Vec::new();
            while won.len() < 10 {
                let cur = c.get("counter", None).await?;
                let kv = cur.kvs().first().ok_or_else(|| anyhow!("no counter"))?;
                let n: u64 = kv.value_str()?.parse()?;
                let txn = Txn::new()
                    .when([Compare::mod_revision(
                        "counter",
                        CompareOp::Equal,
                        kv.mod_revision(),
                    )])
                    .and_then([TxnOp::put("counter", (n + 1).to_string(), None)]);
                let r = c.txn(txn).await?;
                if r.succeeded() {
                    won.push(r.header().map_or(0, |h| h.revision()));
                }
            }
            anyhow::Ok(won)
        }));
    }
    let mut revisions = BTreeSet::new();
    for t in tasks {
        for rev in t.await?? {
            ensure!(
                revisions.insert(rev),
                "two transactions won at revision {rev}"
            );
        }
    }
    let fin = setup.get("counter", None).await?;
    let value = fin
        .kvs()
        .first()
        .ok_or_else(|| anyhow!("no counter"))?
        .value_str()?
        .to_string();
    ensure!(
        value == "60",
        "60 won increments must leave 60, not {value}"
    );
    Ok(())
}

#[tokio::test]
async fn errors_carry_etcds_codes_and_texts() -> Result<()> {
    use tonic::Code;
    let store = StoreCluster::start(3).await?;
    let mut c = connect(&store.member(1).endpoint()).await?;

    let e = grpc_status(
        c.put("k", "v", Some(PutOptions::new().with_lease(424_242)))
            .await
            .err()
            .ok_or_else(|| anyhow!("a put with an unknown lease succeeded"))?,
    )?;
    ensure!(e.code() == Code::NotFound, "{e:?}");
    ensure!(
        e.message() == "etcdserver: requested lease not found",
        "{e:?}"
    );

    let big = "x".repeat(2 * 1024 * 1024 - 4096);
    let e = grpc_status(
        c.put("big", big, None)
            .await
            .err()
            .ok_or_else(|| anyhow!("oversize put"))?,
    )?;
    ensure!(e.code() == Code::InvalidArgument, "{e:?}");
    ensure!(e.message() == "etcdserver: request is too large", "{e:?}");

    let e = grpc_status(
        c.put("", "v", None)
            .await
            .err()
            .ok_or_else(|| anyhow!("empty key"))?,
    )?;
    ensure!(e.message() == "etcdserver: key is not provided", "{e:?}");

    let ops: Vec<TxnOp> = (0..129)
        .map(|i| TxnOp::put(format!("t{i}"), "v", None))
        .collect();
    let e = grpc_status(
        c.txn(Txn::new().and_then(ops))
            .await
            .err()
            .ok_or_else(|| anyhow!("129 ops"))?,
    )?;
    ensure!(
        e.message() == "etcdserver: too many operations in txn request",
        "{e:?}"
    );

    let dup = Txn::new().and_then([TxnOp::put("d", "1", None), TxnOp::put("d", "2", None)]);
    let e = grpc_status(
        c.txn(dup)
            .await
            .err()
            .ok_or_else(|| anyhow!("duplicate key txn"))?,
    )?;
    ensure!(
        e.message() == "etcdserver: duplicate key given in txn request",
        "{e:?}"
    );

    let r1 = c
        .put("h", "1", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    let r2 = c
        .put("h", "2", None)
        .await?
        .header()
        .map_or(0, |h| h.revision());
    c.compact(r2, None).await?;
    let e = grpc_status(
        c.get("h", Some(GetOptions::new().with_revision(r1)))
            .await
            .err()
            .ok_or_else(|| anyhow!("a compacted read succeeded"))?,
    )?;
    ensure!(e.code() == Code::OutOfRange, "{e:?}");
    ensure!(
        e.message() == "etcdserver: mvcc: required revision has been compacted",
        "{e:?}"
    );
    let e = grpc_status(
        c.get("h", Some(GetOptions::new().with_revision(r2 + 1000)))
            .await
            .err()
            .ok_or_else(|| anyhow!("a future read succeeded"))?,
    )?;
    ensure!(
        e.message() == "etcdserver: mvcc: required revision is a future revision",
        "{e:?}"
    );

    // A watch from a compacted revision: created, then canceled with the compact revision.
    let mut stream = c
        .watch("h", Some(WatchOptions::new().with_start_revision(r1)))
        .await?;
    let created = stream
        .message()
        .await?
        .ok_or_else(|| anyhow!("no created"))?;
    ensure!(created.created(), "created first");
    let canceled = stream
        .message()
        .await?
        .ok_or_else(|| anyhow!("no cancel"))?;
    ensure!(
        canceled.canceled() && canceled.compact_revision() == r2,
        "canceled with compact revision {r2}: {canceled:?}"
    );
    Ok(())
}

#[tokio::test]
async fn a_store_with_a_token_wants_it_from_etcd_clients_too() -> Result<()> {
    use tonic::Code;
    let token = "etcd-api-test-token-0123456789";
    let store = StoreCluster::start_secured(3, token, "etcd-api-test-peer-secret-0123").await?;
    let ep = store.member(1).endpoint();

    let mut anonymous = connect(&ep).await?;
    let e = grpc_status(
        anonymous
            .get("k", None)
            .await
            .err()
            .ok_or_else(|| anyhow!("no token, yet served"))?,
    )?;
    ensure!(e.code() == Code::InvalidArgument, "{e:?}");
    ensure!(e.message() == "etcdserver: user name is empty", "{e:?}");

    let wrong = ConnectOptions::new().with_user("root", "not-the-token-at-all");
    let e = Client::connect([ep.as_str()], Some(wrong))
        .await
        .err()
        .ok_or_else(|| anyhow!("a wrong password authenticated"))?;
    let e = grpc_status(e)?;
    ensure!(
        e.message() == "etcdserver: authentication failed, invalid user ID or password",
        "{e:?}"
    );

    let right = ConnectOptions::new().with_user("anyname", token);
    let mut c = Client::connect([ep.as_str()], Some(right)).await?;
    c.put("k", "v", None).await?;
    let got = c.get("k", None).await?;
    ensure!(
        got.kvs().first().map(|kv| kv.value()) == Some(&b"v"[..]),
        "read back"
    );
    let members = c.member_list().await?;
    ensure!(members.members().len() == 3, "{members:?}");
    wait_until(Duration::from_secs(5), "status", || {
        let mut c = c.clone();
        async move { c.status().await.ok() }
    })
    .await?;
    Ok(())
}

#[tokio::test]
async fn a_watch_that_requires_a_leader_ends_with_no_leader_when_the_quorum_is_gone() -> Result<()>
{
    let mut store = StoreCluster::start(3).await?;
    let opts = ConnectOptions::new()
        .with_connect_timeout(Duration::from_secs(2))
        .with_require_leader(true);
    let mut c = Client::connect([store.member(1).endpoint()], Some(opts)).await?;
    let mut stream = c.watch("hl", None).await?;
    let created = stream
        .message()
        .await?
        .ok_or_else(|| anyhow!("no created response"))?;
    ensure!(created.created(), "created first");
    // Member 1 is left alone: a follower without a leader, or a leader without a quorum.
    store.kill(2);
    store.kill(3);
    let ended = tokio::time::timeout(Duration::from_secs(30), async {
        loop {
            match stream.message().await {
                Ok(Some(_)) => continue,
                other => return other,
            }
        }
    })
    .await
    .context("the watch went on for 30 s without a leader")?;
    let e = grpc_status(
        ended
            .err()
            .ok_or_else(|| anyhow!("the watch ended without an error"))?,
    )?;
    ensure!(e.code() == tonic::Code::Unavailable, "{e:?}");
    ensure!(e.message() == "etcdserver: no leader", "{e:?}");
    Ok(())
}

#[tokio::test]
async fn watches_on_one_stream_get_ids_that_are_never_reused() -> Result<()> {
    let store = StoreCluster::start(1).await?;
    let mut c = connect(&store.member(1).endpoint()).await?;
    let mut stream = c.watch("a", None).await?;
    let first = stream
        .message()
        .await?
        .ok_or_else(|| anyhow!("no created"))?;
    ensure!(
        first.created() && first.watch_id() == 0,
        "first watch: {first:?}"
    );
    stream.cancel(0).await?;
    let canceled = stream
        .message()
        .await?
        .ok_or_else(|| anyhow!("no cancel"))?;
    ensure!(
        canceled.canceled() && canceled.watch_id() == 0,
        "cancel: {canceled:?}"
    );
    stream.watch("b", None).await?;
    let second = stream
        .message()
        .await?
        .ok_or_else(|| anyhow!("no second created"))?;
    ensure!(
        second.created() && second.watch_id() == 1,
        "a new watch after a cancel takes a new id: {second:?}"
    );
    c.put("b", "v", None).await?;
    let event = stream.message().await?.ok_or_else(|| anyhow!("no event"))?;
    ensure!(
        event.watch_id() == 1 && event.events().len() == 1,
        "event: {event:?}"
    );
    Ok(())
}
