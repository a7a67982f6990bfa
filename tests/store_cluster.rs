//! The replicated store as real processes: replication, failover, restarts, snapshots,
//! watches, leases, compaction, transactions.

mod common;

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::{ensure, Context, Result};
use common::{wait_until, StoreCluster};
use futures::StreamExt;
use miniku_store::client::{StoreClient, WatchOptions};
use serde_json::{json, Value};

async fn put(http: &reqwest::Client, url: &str, value: &str) -> Result<Value> {
    let resp = http.put(url).body(value.to_string()).send().await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status.is_success(), "PUT {url} -> {status}: {body}");
    Ok(body)
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<(u16, Value)> {
    let resp = http.get(url).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

fn value_of(range: &Value) -> Option<String> {
    range["kvs"].get(0)?["value"].as_str().map(String::from)
}

/// Reads an SSE stream until `n` messages with events arrived; returns their ids and data.
async fn read_sse(
    resp: reqwest::Response,
    n: usize,
    timeout: Duration,
) -> Result<Vec<(i64, Value)>> {
    let frames = common::read_frames(resp, n, timeout, |f| {
        serde_json::from_str::<Value>(&f.data)
            .is_ok_and(|v| v["events"].as_array().is_some_and(|e| !e.is_empty()))
    })
    .await?;
    frames
        .iter()
        .map(|f| {
            let id = f.id.as_deref().and_then(|id| id.parse().ok()).unwrap_or(0);
            Ok((id, serde_json::from_str(&f.data)?))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn writes_replicate_to_every_member() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let r = put(&http, &c.member(2).url("/v1/kv/greeting"), "hello").await?;
    let rev = r["header"]["revision"].as_i64().context("revision")?;
    ensure!(
        rev >= 2,
        "first write on a fresh store is revision 2, got {rev}"
    );
    for id in 1..=3 {
        // Linearizable by default: every member must see the acknowledged write at once.
        let (status, v) = get_json(&http, &c.member(id).url("/v1/kv/greeting")).await?;
        ensure!(status == 200, "member {id}: {status} {v}");
        ensure!(value_of(&v).as_deref() == Some("hello"), "member {id}: {v}");
        ensure!(v["kvs"][0]["version"] == 1 && v["kvs"][0]["create_revision"] == rev);
        ensure!(v["header"]["member_id"] == id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn leader_kill_elects_new_leader_and_the_old_one_catches_up() -> Result<()> {
    let mut c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let leader = c.wait_leader(&[1, 2, 3]).await?;
    put(&http, &c.member(leader).url("/v1/kv/a"), "1").await?;
    c.kill(leader);
    let alive: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    let new_leader = c.wait_leader(&alive).await?;
    ensure!(new_leader != leader);
    // Writes continue, through either survivor.
    for (i, id) in alive.iter().enumerate() {
        put(&http, &c.member(*id).url("/v1/kv/a"), &format!("after-{i}")).await?;
    }
    c.spawn(leader)?;
    let url = c.member(leader).url("/v1/kv/a?serializable=true");
    wait_until(
        Duration::from_secs(20),
        "the restarted member to catch up",
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                (value_of(&v).as_deref() == Some("after-1")).then_some(())
            }
        },
    )
    .await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn full_cluster_kill_keeps_every_acknowledged_write() -> Result<()> {
    let mut c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let mut acked = BTreeMap::new();
    let mut tasks = Vec::new();
    for i in 0..120u64 {
        let url = c.member(1 + i % 3).url(&format!("/v1/kv/k{i:03}"));
        let http = http.clone();
        tasks.push(tokio::spawn(async move {
            put(&http, &url, &format!("v{i}")).await.map(|_| i)
        }));
    }
    for t in tasks {
        let i = t.await??;
        acked.insert(format!("k{i:03}"), format!("v{i}"));
    }
    for id in 1..=3 {
        c.kill(id);
    }
    for id in 1..=3 {
        c.spawn(id)?;
    }
    c.wait_leader(&[1, 2, 3]).await?;
    let (_, v) = get_json(&http, &c.member(2).url("/v1/kv/k?prefix=true")).await?;
    let got: BTreeMap<String, String> = v["kvs"]
        .as_array()
        .context("kvs")?
        .iter()
        .filter_map(|kv| {
            Some((
                kv["key"].as_str()?.to_string(),
                kv["value"].as_str()?.to_string(),
            ))
        })
        .collect();
    ensure!(
        got == acked,
        "lost writes: {} acknowledged, {} found",
        acked.len(),
        got.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn member_down_long_catches_up_through_a_snapshot() -> Result<()> {
    let mut c = StoreCluster::start_with(3, &["--snapshot-entries", "40"]).await?;
    let http = reqwest::Client::new();
    let leader = c.wait_leader(&[1, 2, 3]).await?;
    let lagger = (1..=3).find(|i| *i != leader).context("a follower")?;
    c.kill(lagger);
    let alive: Vec<u64> = (1..=3).filter(|i| *i != lagger).collect();
    // Sequential writes: one Raft entry each, so the log passes several snapshots.
    for i in 0..300 {
        put(
            &http,
            &c.member(alive[i % 2]).url(&format!("/v1/kv/s/{i}")),
            "x",
        )
        .await?;
    }
    c.spawn(lagger)?;
    let url = c
        .member(lagger)
        .url("/v1/kv/s/?prefix=true&count_only=true&serializable=true");
    wait_until(
        Duration::from_secs(30),
        "the lagging member to install a snapshot",
        || {
            let http = http.clone();
            let url = url.clone();
            async move {
                let v: Value = http.get(&url).send().await.ok()?.json().await.ok()?;
                (v["count"] == 300).then_some(())
            }
        },
    )
    .await?;
    // History came along: a historical read on the lagger works like on the others.
    let (status, v) = get_json(&http, &c.member(lagger).url("/v1/kv/s/0?revision=2")).await?;
    ensure!(
        status == 200 && value_of(&v).as_deref() == Some("x"),
        "{status} {v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn watch_on_a_follower_sees_every_revision_once_in_order() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let leader = c.wait_leader(&[1, 2, 3]).await?;
    let follower = (1..=3).find(|i| *i != leader).context("a follower")?;
    let first = put(&http, &c.member(leader).url("/v1/kv/w/start"), "0").await?;
    let start = first["header"]["revision"].as_i64().context("rev")? + 1;
    let resp = http
        .get(
            c.member(follower)
                .url(&format!("/v1/watch/w/?prefix=true&start_revision={start}")),
        )
        .send()
        .await?;
    ensure!(resp.status() == 200);
    let writer = {
        let http = http.clone();
        let urls: Vec<String> = (1..=3).map(|i| c.member(i).url("")).collect();
        tokio::spawn(async move {
            for i in 0..50usize {
                put(
                    &http,
                    &format!("{}/v1/kv/w/{}", urls[i % 3], i % 7),
                    &i.to_string(),
                )
                .await?;
            }
            anyhow::Ok(())
        })
    };
    let msgs = read_sse(resp, 50, Duration::from_secs(30)).await?;
    writer.await??;
    let revs: Vec<i64> = msgs.iter().map(|(id, _)| *id).collect();
    let expected: Vec<i64> = (start..start + 50).collect();
    ensure!(revs == expected, "revisions seen {revs:?}");
    for (id, m) in &msgs {
        ensure!(m["header"]["revision"] == *id);
        ensure!(m["events"][0]["kv"]["mod_revision"] == *id);
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn client_watch_resumes_across_a_member_kill_without_gaps() -> Result<()> {
    let mut c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    // The watching client prefers member 3 (first endpoint); kill it mid-stream.
    let mut endpoints = c.endpoints();
    endpoints.rotate_left(2);
    let client = StoreClient::new(endpoints)?;
    let base = put(&http, &c.member(1).url("/v1/kv/r/base"), "0").await?;
    let start = base["header"]["revision"].as_i64().context("rev")? + 1;
    let mut watch = client.watch(
        b"r/",
        WatchOptions {
            prefix: true,
            start_revision: start,
            ..Default::default()
        },
    );
    let mut seen = Vec::new();
    for i in 0..20 {
        put(&http, &c.member(1).url(&format!("/v1/kv/r/{i}")), "v").await?;
    }
    while seen.len() < 10 {
        let m = tokio::time::timeout(Duration::from_secs(10), watch.next())
            .await?
            .context("ended")??;
        if !m.events.is_empty() {
            seen.push(m.header.revision);
        }
    }
    c.kill(3);
    for i in 20..40 {
        put(
            &http,
            &c.member(1 + i % 2).url(&format!("/v1/kv/r/{i}")),
            "v",
        )
        .await?;
    }
    while seen.len() < 40 {
        let m = tokio::time::timeout(Duration::from_secs(20), watch.next())
            .await?
            .context("ended")??;
        if !m.events.is_empty() {
            seen.push(m.header.revision);
        }
    }
    let expected: Vec<i64> = (start..start + 40).collect();
    ensure!(seen == expected, "revisions seen {seen:?}");
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn lease_expiry_deletes_keys_with_delete_events() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let grant: Value = http
        .post(c.member(2).url("/v1/lease"))
        .json(&json!({"ttl": 2}))
        .send()
        .await?
        .json()
        .await?;
    let id = grant["id"].as_i64().context("lease id")?;
    let r = put(
        &http,
        &c.member(3).url(&format!("/v1/kv/l/a?lease={id}")),
        "1",
    )
    .await?;
    put(
        &http,
        &c.member(3).url(&format!("/v1/kv/l/b?lease={id}")),
        "2",
    )
    .await?;
    let (_, ttl) = get_json(&http, &c.member(1).url(&format!("/v1/lease/{id}"))).await?;
    ensure!(ttl["keys"].as_array().map(Vec::len) == Some(2), "{ttl}");
    let start = r["header"]["revision"].as_i64().context("rev")? + 2;
    let resp = http
        .get(
            c.member(1)
                .url(&format!("/v1/watch/l/?prefix=true&start_revision={start}")),
        )
        .send()
        .await?;
    // Both keys vanish in ONE revision, as one message with two DELETE events.
    let msgs = read_sse(resp, 1, Duration::from_secs(15)).await?;
    let events = msgs[0].1["events"].as_array().context("events")?;
    ensure!(events.len() == 2, "{events:?}");
    ensure!(events.iter().all(|e| e["type"] == "DELETE"));
    let (_, v) = get_json(&http, &c.member(2).url("/v1/kv/l/?prefix=true")).await?;
    ensure!(v["count"] == 0, "{v}");
    let (status, _) = get_json(&http, &c.member(2).url(&format!("/v1/lease/{id}"))).await?;
    ensure!(status == 404);
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn compaction_answers_410_for_old_reads_and_watches() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let mut last = 0;
    for i in 0..5 {
        last = put(&http, &c.member(1).url("/v1/kv/c"), &i.to_string()).await?["header"]
            ["revision"]
            .as_i64()
            .context("rev")?;
    }
    let resp = http
        .post(c.member(2).url("/v1/compact"))
        .json(&json!({"revision": last - 1}))
        .send()
        .await?;
    ensure!(resp.status() == 200, "compact: {}", resp.status());
    let (status, v) = get_json(
        &http,
        &c.member(3).url(&format!("/v1/kv/c?revision={}", last - 3)),
    )
    .await?;
    ensure!(
        status == 410 && v["error"] == "compacted" && v["compact_revision"] == last - 1,
        "{status} {v}"
    );
    let resp = http
        .get(
            c.member(3)
                .url(&format!("/v1/watch/c?start_revision={}", last - 3)),
        )
        .send()
        .await?;
    ensure!(
        resp.status() == 410,
        "watch below compaction: {}",
        resp.status()
    );
    // At and above the compact revision, history still answers.
    let (status, v) = get_json(
        &http,
        &c.member(3).url(&format!("/v1/kv/c?revision={}", last - 1)),
    )
    .await?;
    ensure!(
        status == 200 && value_of(&v).as_deref() == Some("3"),
        "{status} {v}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn transaction_is_atomic_and_one_revision() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let base = put(&http, &c.member(1).url("/v1/kv/t/x"), "0").await?;
    let start = base["header"]["revision"].as_i64().context("rev")? + 1;
    let txn = json!({
        "compare": [{"key": "t/x", "target": "value", "result": "=", "value": "0"}],
        "success": [
            {"put": {"key": "t/x", "value": "1"}},
            {"put": {"key": "t/y", "value": "1"}},
            {"range": {"key": "t/", "prefix": true}}
        ],
        "failure": [{"range": {"key": "t/x"}}]
    });
    let resp: Value = http
        .post(c.member(2).url("/v1/txn"))
        .json(&txn)
        .send()
        .await?
        .json()
        .await?;
    ensure!(resp["succeeded"] == true, "{resp}");
    ensure!(resp["header"]["revision"] == start, "one revision: {resp}");
    ensure!(
        resp["responses"][2]["range"]["count"] == 2,
        "range sees own writes: {resp}"
    );
    // The same transaction again fails its compare and writes nothing.
    let again: Value = http
        .post(c.member(3).url("/v1/txn"))
        .json(&txn)
        .send()
        .await?
        .json()
        .await?;
    ensure!(
        again["succeeded"] == false && again["header"]["revision"] == start,
        "{again}"
    );
    let watch = http
        .get(
            c.member(3)
                .url(&format!("/v1/watch/t/?prefix=true&start_revision={start}")),
        )
        .send()
        .await?;
    let msgs = read_sse(watch, 1, Duration::from_secs(10)).await?;
    ensure!(
        msgs[0].0 == start && msgs[0].1["events"].as_array().map(Vec::len) == Some(2),
        "{msgs:?}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn bad_input_gets_a_4xx_json_error_and_changes_nothing() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let m = c.member(1);
    let before = get_json(&http, &m.url("/v1/kv/%00?range_end=%00&count_only=true"))
        .await?
        .1["header"]["revision"]
        .clone();
    let big = "x".repeat(2 * 1024 * 1024);
    let cases: Vec<(reqwest::RequestBuilder, u16, &str)> = vec![
        (http.put(m.url("/v1/kv/")).body("v"), 400, "empty key"),
        (http.put(m.url(&format!("/v1/kv/{}", "k".repeat(5000)))).body("v"), 413, "key too large"),
        (http.put(m.url("/v1/kv/big")).body(big.clone()), 413, "value too large"),
        (http.put(m.url("/v1/kv/a?lease=999999")).body("v"), 404, "unknown lease"),
        (http.put(m.url("/v1/kv/a?lease=abc")).body("v"), 400, "lease not a number"),
        (http.get(m.url("/v1/kv/a?revision=-1")), 400, "negative revision"),
        (http.get(m.url("/v1/kv/a?revision=999999")), 400, "future revision"),
        (http.get(m.url("/v1/kv/a?limit=-5")), 400, "negative limit"),
        (http.post(m.url("/v1/txn")).header("content-type", "application/json").body("{not json"), 400, "malformed json"),
        (http.post(m.url("/v1/txn")).json(&json!({"compare": [], "bogus": 1})), 400, "unknown field"),
        (http.post(m.url("/v1/txn")).json(&json!({"compare": [{"key": "a", "target": "colour", "result": "=", "value": 1}]})), 400, "unknown compare target"),
        (http.post(m.url("/v1/txn")).json(&json!({"compare": [{"key": "a", "target": "version", "result": "~", "value": 1}]})), 400, "unknown compare result"),
        (http.post(m.url("/v1/txn")).json(&json!({"success": (0..129).map(|i| json!({"put": {"key": format!("k{i}"), "value": "v"}})).collect::<Vec<_>>()})), 400, "too many ops"),
        (http.post(m.url("/v1/lease")).json(&json!({"ttl": -1})), 400, "negative ttl"),
        (http.post(m.url("/v1/lease/12345/keepalive")), 404, "keepalive unknown lease"),
        (http.delete(m.url("/v1/lease/12345")), 404, "revoke unknown lease"),
        (http.post(m.url("/v1/compact")).json(&json!({"revision": -3})), 400, "negative compact"),
        (http.get(m.url("/v1/nothing-here")), 404, "unknown route"),
    ];
    for (req, want, what) in cases {
        let resp = req.send().await?;
        let status = resp.status().as_u16();
        let text = resp.text().await?;
        let body: Value = serde_json::from_str(&text)
            .with_context(|| format!("{what}: body is not JSON: {text}"))?;
        ensure!(
            status == want,
            "{what}: expected {want}, got {status}: {body}"
        );
        ensure!(
            body["error"].is_string() && body["message"].is_string(),
            "{what}: {body}"
        );
    }
    let after = get_json(&http, &m.url("/v1/kv/%00?range_end=%00&count_only=true"))
        .await?
        .1["header"]["revision"]
        .clone();
    ensure!(
        before == after,
        "bad input changed the store: {before} -> {after}"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn a_member_joins_as_learner_becomes_voter_and_can_be_removed() -> Result<()> {
    let mut c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    for i in 0..20 {
        put(&http, &c.member(1).url(&format!("/v1/kv/j/{i}")), "v").await?;
    }
    let (id, peer) = start_joiner(&mut c, &http).await?;
    let resp = http
        .post(c.member(2).url("/v1/cluster/members"))
        .json(&json!({"id": id, "peer_addr": peer}))
        .send()
        .await?;
    let status = resp.status();
    let body: Value = resp.json().await?;
    ensure!(status == 200, "add member: {status} {body}\n{}", c.log(id));
    let members = body["members"].as_array().context("members")?;
    ensure!(
        members.iter().any(|m| m["id"] == id && m["voter"] == true),
        "{body}"
    );
    // The new member has the data and serves linearizable reads.
    let (status, v) = get_json(
        &http,
        &c.member(id).url("/v1/kv/j/?prefix=true&count_only=true"),
    )
    .await
    .with_context(|| c.log(id))?;
    ensure!(status == 200 && v["count"] == 20, "{status} {v}");
    // Adding it again is refused; so is removing a stranger.
    let again = http
        .post(c.member(1).url("/v1/cluster/members"))
        .json(&json!({"id": id, "peer_addr": peer}))
        .send()
        .await?;
    ensure!(again.status() == 400, "{}", again.status());
    let stranger = http
        .delete(c.member(1).url("/v1/cluster/members/99"))
        .send()
        .await?;
    ensure!(stranger.status() == 404, "{}", stranger.status());
    // Remove it: the others carry on without it.
    let resp = http
        .delete(c.member(1).url(&format!("/v1/cluster/members/{id}")))
        .send()
        .await?;
    ensure!(resp.status() == 200, "remove: {}", resp.status());
    let (_, cluster) = get_json(&http, &c.member(1).url("/v1/cluster")).await?;
    ensure!(
        cluster["members"].as_array().map(Vec::len) == Some(3),
        "{cluster}"
    );
    c.kill(id);
    put(&http, &c.member(3).url("/v1/kv/j/after"), "v").await?;

    // Added with `learner: true`, the next one stays a learner until promoted.
    let (id, peer) = start_joiner(&mut c, &http).await?;
    let (status, body) = post_json(
        &http,
        &c.member(3).url("/v1/cluster/members"),
        &json!({"id": id, "peer_addr": peer, "learner": true}),
    )
    .await?;
    ensure!(status == 200, "add learner: {status} {body}\n{}", c.log(id));
    let members = body["members"].as_array().context("members")?;
    ensure!(
        members.iter().any(|m| m["id"] == id && m["voter"] == false),
        "{body}"
    );
    let promoted = wait_until(
        Duration::from_secs(20),
        "the learner to be promoted",
        || {
            let http = http.clone();
            let c = &c;
            async move {
                let (status, v) = promote(&http, c, 2, &id.to_string()).await.ok()?;
                let not_ready =
                    "etcdserver: can only promote a learner member which is in sync with leader";
                match status {
                    400 if v["message"] == not_ready => None,
                    _ => Some((status, v)),
                }
            }
        },
    )
    .await?;
    ensure!(promoted.0 == 200, "promote: {promoted:?}\n{}", c.log(id));
    let members = promoted.1["members"].as_array().context("members")?;
    ensure!(
        members.iter().any(|m| m["id"] == id && m["voter"] == true),
        "{promoted:?}"
    );
    let (status, v) = get_json(
        &http,
        &c.member(id).url("/v1/kv/j/?prefix=true&count_only=true"),
    )
    .await?;
    ensure!(status == 200 && v["count"] == 21, "{status} {v}");
    Ok(())
}

/// Starts the next member with `--join` and waits until it listens; returns its id and
/// peer address.
async fn start_joiner(c: &mut StoreCluster, http: &reqwest::Client) -> Result<(u64, String)> {
    let id = c.spawn_joiner()?;
    let joiner = c.member(id).url("/v1/cluster");
    wait_until(Duration::from_secs(20), "the new member to listen", || {
        let http = http.clone();
        let url = joiner.clone();
        async move { http.get(&url).send().await.ok().map(|_| ()) }
    })
    .await
    .with_context(|| c.log(id))?;
    Ok((id, format!("127.0.0.1:{}", c.member(id).peer_port)))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_watcher_that_does_not_read_catches_up_without_losing_events() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let base = put(&http, &c.member(1).url("/v1/kv/slow/base"), "0").await?;
    let start = base["header"]["revision"].as_i64().context("rev")? + 1;
    // Opened, then not read while far more revisions than its buffer arrive.
    let resp = http
        .get(c.member(2).url(&format!(
            "/v1/watch/slow/?prefix=true&start_revision={start}"
        )))
        .send()
        .await?;
    ensure!(resp.status() == 200);
    let value = "v".repeat(2048);
    let n = 1500;
    let mut tasks = Vec::new();
    for w in 0..8 {
        let http = http.clone();
        let url = c.member(1 + w % 3).url("");
        let value = value.clone();
        tasks.push(tokio::spawn(async move {
            for i in (w..n).step_by(8) {
                put(&http, &format!("{url}/v1/kv/slow/{i}"), &value).await?;
            }
            anyhow::Ok(())
        }));
    }
    for t in tasks {
        t.await??;
    }
    let msgs = read_sse(resp, n as usize, Duration::from_secs(60)).await?;
    let revs: Vec<i64> = msgs.iter().map(|(id, _)| *id).collect();
    let expected: Vec<i64> = (start..start + n as i64).collect();
    ensure!(
        revs == expected,
        "{} messages, first gap near {:?}",
        revs.len(),
        revs.windows(2).find(|w| w[1] != w[0] + 1)
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn last_event_id_resumes_and_progress_notifications_carry_the_revision() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let mut revs = Vec::new();
    for i in 0..5 {
        let r = put(&http, &c.member(1).url(&format!("/v1/kv/le/{i}")), "v").await?;
        revs.push(r["header"]["revision"].as_i64().context("rev")?);
    }
    // Resume after the second write: exactly the last three arrive.
    let resp = http
        .get(c.member(3).url("/v1/watch/le/?prefix=true"))
        .header("Last-Event-ID", revs[1].to_string())
        .send()
        .await?;
    let msgs = read_sse(resp, 3, Duration::from_secs(10)).await?;
    ensure!(
        msgs.iter().map(|(id, _)| *id).collect::<Vec<_>>() == revs[2..],
        "{msgs:?}"
    );
    // An idle watcher asking for progress learns the current revision.
    let resp = http
        .get(
            c.member(2)
                .url("/v1/watch/idle/?prefix=true&progress_notify=true"),
        )
        .send()
        .await?;
    let frames = common::read_frames(resp, 1, Duration::from_secs(20), |f| {
        f.data.contains("progress_notify")
    })
    .await?;
    let progress: Value = serde_json::from_str(&frames[0].data)?;
    ensure!(
        progress["header"]["revision"].as_i64() >= revs.last().copied(),
        "{progress}"
    );
    Ok(())
}

/// Values at the size limit, written concurrently (so they batch), replicate to every
/// member: no AppendEntries may grow too big to travel within a heartbeat.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn values_at_the_size_limit_replicate_to_every_member() -> Result<()> {
    const LIMIT: usize = 3 * 512 * 1024;
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let writes = (0..12).map(|i| {
        let http = http.clone();
        let url = c.member(1 + i % 3).url(&format!("/v1/kv/large/{i:02}"));
        let value = char::from(b'a' + i as u8).to_string().repeat(LIMIT);
        async move { put(&http, &url, &value).await.map(|b| (i, b)) }
    });
    let mut last = 0;
    for r in futures::future::join_all(writes).await {
        let (_, body) = r?;
        last = last.max(body["header"]["revision"].as_i64().unwrap_or(0));
    }
    for m in 1..=3u64 {
        let url = c
            .member(m)
            .url("/v1/kv/large/?prefix=true&serializable=true");
        let (_, v) = wait_until(Duration::from_secs(30), "the member to catch up", || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let (s, v) = get_json(&http, &url).await.ok()?;
                (s == 200 && v["header"]["revision"].as_i64()? >= last).then_some((s, v))
            }
        })
        .await?;
        let kvs = v["kvs"].as_array().context("kvs")?;
        ensure!(
            kvs.len() == 12,
            "member {m} holds {} large values",
            kvs.len()
        );
        for kv in kvs {
            let value = kv["value"].as_str().unwrap_or_default();
            ensure!(
                value.len() == LIMIT,
                "member {m}: a value of {}",
                value.len()
            );
        }
    }
    Ok(())
}

async fn post_json(http: &reqwest::Client, url: &str, body: &Value) -> Result<(u16, Value)> {
    let resp = http.post(url).json(body).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// `POST /v1/cluster/members/{id}/promote` through `member`.
async fn promote(
    http: &reqwest::Client,
    c: &StoreCluster,
    member: u64,
    id: &str,
) -> Result<(u16, Value)> {
    let url = c
        .member(member)
        .url(&format!("/v1/cluster/members/{id}/promote"));
    let resp = http.post(url).send().await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await?))
}

/// Member `id` as `member`'s `/v1/cluster` shows it.
async fn member_entry(
    http: &reqwest::Client,
    c: &StoreCluster,
    member: u64,
    id: u64,
) -> Option<Value> {
    let (_, v) = get_json(http, &c.member(member).url("/v1/cluster"))
        .await
        .ok()?;
    v["members"]
        .as_array()?
        .iter()
        .find(|m| m["id"] == id)
        .cloned()
}

/// A follower of `leader` among `ids`.
fn a_follower(ids: &[u64], leader: u64) -> Result<u64> {
    ids.iter()
        .copied()
        .find(|i| *i != leader)
        .context("no follower")
}

/// The bug this guards against: adding a member nobody runs made it a voter at once (4
/// voters, 3 needed), so one more dead member stopped every write while `/health` said true.
#[tokio::test(flavor = "multi_thread")]
async fn an_unreachable_member_stays_a_learner_and_one_kill_keeps_the_quorum() -> Result<()> {
    let mut c = StoreCluster::start_with(3, &["--request-timeout-secs", "2"]).await?;
    let http = reqwest::Client::new();
    let leader = c.wait_leader(&[1, 2, 3]).await?;
    put(&http, &c.member(leader).url("/v1/kv/u/before"), "v").await?;
    // Nothing listens at this address (a free port nobody binds).
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    let via = a_follower(&[1, 2, 3], leader)?;
    let (status, body) = post_json(
        &http,
        &c.member(via).url("/v1/cluster/members"),
        &json!({"id": 4, "peer_addr": nowhere}),
    )
    .await?;
    ensure!(
        status == 503,
        "adding an unreachable member: {status} {body}"
    );
    let message = body["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("member 4 was added as a learner")
            && message.contains("has not caught up")
            && message.contains("POST /v1/cluster/members/4/promote"),
        "{body}"
    );
    // Every member shows it, as a learner.
    for id in 1..=3 {
        let m = wait_until(
            Duration::from_secs(10),
            "member 4 in the membership",
            || member_entry(&http, &c, id, 4),
        )
        .await?;
        ensure!(
            m["voter"] == false && m["peer_addr"] == nowhere,
            "member {id}: {m}"
        );
    }
    // One real member dies: two of three voters are left, a quorum.
    let victim = a_follower(&[1, 2, 3], leader)?;
    c.kill(victim);
    let survivors: Vec<u64> = (1..=3).filter(|i| *i != victim).collect();
    for id in &survivors {
        put(
            &http,
            &c.member(*id).url(&format!("/v1/kv/u/after-{id}")),
            "v",
        )
        .await?;
        let (status, health) = get_json(&http, &c.member(*id).url("/health")).await?;
        ensure!(
            status == 200 && health["health"] == "true",
            "member {id}: {status} {health}"
        );
    }
    // The learner can go again.
    let resp = http
        .delete(c.member(leader).url("/v1/cluster/members/4"))
        .send()
        .await?;
    ensure!(
        resp.status() == 200,
        "removing the learner: {}",
        resp.status()
    );
    ensure!(member_entry(&http, &c, leader, 4).await.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn promote_refuses_voters_unknown_ids_and_learners_not_in_sync() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let leader = c.wait_leader(&[1, 2, 3]).await?;
    let follower = a_follower(&[1, 2, 3], leader)?;
    let nowhere = format!("127.0.0.1:{}", common::free_port());
    // `learner: true` adds it and answers at once.
    let (status, body) = post_json(
        &http,
        &c.member(follower).url("/v1/cluster/members"),
        &json!({"id": 4, "peer_addr": nowhere, "learner": true}),
    )
    .await?;
    ensure!(status == 200, "adding a learner: {status} {body}");
    let listed = body["members"].as_array().context("members")?;
    ensure!(
        listed.iter().any(|m| m["id"] == 4 && m["voter"] == false),
        "{body}"
    );
    for via in [leader, follower] {
        let (status, v) = promote(&http, &c, via, "4").await?;
        ensure!(
            status == 400
                && v["message"]
                    == "etcdserver: can only promote a learner member which is in sync with leader",
            "promoting a learner that never answered, via {via}: {status} {v}"
        );
        let (status, v) = promote(&http, &c, via, &leader.to_string()).await?;
        ensure!(
            status == 400 && v["message"] == "etcdserver: can only promote a learner member",
            "promoting a voter, via {via}: {status} {v}"
        );
        let (status, v) = promote(&http, &c, via, "99").await?;
        ensure!(
            status == 404 && v["message"] == "member 99 not found",
            "promoting a stranger, via {via}: {status} {v}"
        );
        let (status, v) = promote(&http, &c, via, "x").await?;
        ensure!(status == 400, "promoting `x`: {status} {v}");
    }
    ensure!(
        member_entry(&http, &c, leader, 4)
            .await
            .context("member 4")?["voter"]
            == false
    );
    // A wrong `learner` and an unknown field are refused before anything happens.
    for bad in [
        json!({"id": 5, "peer_addr": nowhere, "learner": "yes"}),
        json!({"id": 5, "peer_addr": nowhere, "voter": true}),
    ] {
        let (status, v) =
            post_json(&http, &c.member(leader).url("/v1/cluster/members"), &bad).await?;
        ensure!(status == 400, "{bad}: {status} {v}");
    }
    ensure!(member_entry(&http, &c, leader, 5).await.is_none());
    Ok(())
}

#[tokio::test(flavor = "multi_thread")]
async fn health_answers_503_when_the_leader_loses_its_quorum() -> Result<()> {
    let mut c = StoreCluster::start(3).await?;
    let http = reqwest::Client::new();
    let leader = c.wait_leader(&[1, 2, 3]).await?;
    let (status, v) = get_json(&http, &c.member(leader).url("/health")).await?;
    ensure!(status == 200 && v["health"] == "true", "{status} {v}");
    // Like every answer, it carries the header.
    ensure!(v["header"]["member_id"] == leader, "no header: {v}");
    let followers: Vec<u64> = (1..=3).filter(|i| *i != leader).collect();
    for f in &followers {
        c.kill(*f);
    }
    // The leader is still the leader (nobody is left to elect another), but cannot commit.
    let url = c.member(leader).url("/health");
    let v = wait_until(
        Duration::from_secs(20),
        "the leader's /health to answer 503",
        || {
            let (http, url) = (http.clone(), url.clone());
            async move {
                let (status, v) = get_json(&http, &url).await.ok()?;
                (status == 503).then_some(v)
            }
        },
    )
    .await?;
    let message = v["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("no quorum")
            && message.contains(&format!(
                "unreachable voters: {}, {}",
                followers[0], followers[1]
            )),
        "{v}"
    );
    // One follower back: a quorum again, and healthy again.
    c.spawn(followers[0])?;
    wait_until(Duration::from_secs(30), "/health to recover", || {
        let (http, url) = (http.clone(), url.clone());
        async move {
            let (status, _) = get_json(&http, &url).await.ok()?;
            (status == 200).then_some(())
        }
    })
    .await?;
    let f = c.member(followers[0]).url("/health");
    wait_until(Duration::from_secs(30), "the follower's /health", || {
        let (http, f) = (http.clone(), f.clone());
        async move {
            let (status, _) = get_json(&http, &f).await.ok()?;
            (status == 200).then_some(())
        }
    })
    .await?;
    Ok(())
}

/// A real etcd, for a client configured with a wrong endpoint. None (and the test is
/// skipped) when etcd is not installed, except under CI, where `scripts/test.sh` installs it.
fn start_etcd(dir: &std::path::Path) -> Result<Option<(miniku_harness::Process, String)>> {
    if std::process::Command::new("etcd")
        .arg("--version")
        .output()
        .is_err()
    {
        ensure!(
            std::env::var("CI").as_deref() != Ok("true"),
            "CI=true but etcd is not installed"
        );
        println!("etcd is not installed: skipped");
        return Ok(None);
    }
    let client = miniku_harness::free_addr();
    let peer = miniku_harness::free_addr();
    let process = miniku_harness::Process::spawn(
        std::process::Command::new("etcd")
            .arg("--data-dir")
            .arg(dir.join("etcd"))
            .arg(format!("--listen-client-urls=http://{client}"))
            .arg(format!("--advertise-client-urls=http://{client}"))
            .arg(format!("--listen-peer-urls=http://{peer}"))
            .arg(format!("--initial-advertise-peer-urls=http://{peer}"))
            .arg(format!("--initial-cluster=default=http://{peer}")),
        &dir.join("etcd.log"),
    )?;
    Ok(Some((process, format!("http://{client}"))))
}

#[tokio::test(flavor = "multi_thread")]
async fn a_client_whose_first_endpoint_is_a_real_etcd_works_through_the_others() -> Result<()> {
    let c = StoreCluster::start(3).await?;
    let Some((etcd, etcd_url)) = start_etcd(c.tmp.path())? else {
        return Ok(());
    };
    common::wait_answers(&format!("{etcd_url}/health"), "etcd").await?;
    // etcd answers `404 page not found` on the store's paths: that is not the store's answer.
    let mut endpoints = vec![etcd_url.clone()];
    endpoints.extend(c.endpoints());
    let client = StoreClient::new(endpoints)?.with_timeout(Duration::from_secs(10));
    let put = client.put(b"foreign/a", b"1", Default::default()).await?;
    let mut watch = client.watch(
        b"foreign/",
        WatchOptions {
            prefix: true,
            start_revision: put.header.revision,
            ..Default::default()
        },
    );
    let got = client.get(b"foreign/a", Default::default()).await?;
    ensure!(
        got.kvs.first().map(|kv| kv.value.as_bytes()) == Some(b"1".as_slice()),
        "read back {got:?}"
    );
    let m = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            match watch.next().await {
                Some(Ok(m)) if !m.events.is_empty() => return Ok(m),
                Some(Ok(_)) => continue,
                Some(Err(e)) => return Err(anyhow::anyhow!("watch: {e}")),
                None => return Err(anyhow::anyhow!("the watch ended")),
            }
        }
    })
    .await??;
    ensure!(
        m.events[0].kv.key.as_bytes() == b"foreign/a",
        "watched {m:?}"
    );
    // Given etcd alone, the client says what it met instead of decoding etcd's page.
    let only_etcd = StoreClient::new(vec![etcd_url])?.with_timeout(Duration::from_secs(1));
    let err = only_etcd
        .get(b"foreign/a", Default::default())
        .await
        .expect_err("etcd is not a store member");
    ensure!(
        err.to_string().contains("not a Miniku store member"),
        "error: {err}"
    );
    drop(etcd);
    Ok(())
}
