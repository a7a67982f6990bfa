//! A member whose disk fills up: the cluster refuses writes that add data with a clear
//! error (507, `no_space`, naming the member) while reads, deletes and compaction still work;
//! it takes writes again once space returns, and nothing acknowledged is lost or corrupted,
//! also across a `kill -9` of that member. And a member whose disk fills with no reserve
//! left (so a Raft append really fails) stops, answers 503, and rejoins by itself with
//! intact data when space returns.
//!
//! Member 3's data directory lives on a small tmpfs mounted by the test (these tests run as
//! root, as CI does: they fail, rather than skip, when the mount is refused).

mod common;

use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::{bail, ensure, Context, Result};
use common::{wait_until, StoreCluster};
use serde_json::Value;

const MIB: u64 = 1024 * 1024;
const VALUE_BYTES: usize = 256 * 1024;

/// A tmpfs of a fixed size, unmounted (lazily) when dropped.
struct Tmpfs {
    dir: tempfile::TempDir,
}

impl Tmpfs {
    fn mount(size_mib: u64) -> Result<Tmpfs> {
        let dir = tempfile::tempdir()?;
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size_mib}m"), "tmpfs"])
            .arg(dir.path())
            .output()
            .context("running mount")?;
        ensure!(
            out.status.success(),
            "cannot mount a tmpfs (these tests need root, as CI has): {}",
            String::from_utf8_lossy(&out.stderr)
        );
        Ok(Tmpfs { dir })
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    fn free(&self) -> Result<u64> {
        Ok(fs2::available_space(self.path())?)
    }

    /// Writes a file of zeros until only `leave` bytes are free (0: until the disk is
    /// full).
    fn fill(&self, leave: u64) -> Result<PathBuf> {
        use std::io::Write;
        let path = self.path().join("filler");
        let mut f = std::fs::File::create(&path)?;
        let chunk = vec![0u8; MIB as usize];
        loop {
            let free = self.free()?;
            if free <= leave {
                break;
            }
            let n = (free - leave).min(MIB) as usize;
            match f.write_all(&chunk[..n]) {
                Ok(()) => {}
                Err(e) if e.raw_os_error() == Some(28) => break, // ENOSPC
                Err(e) => return Err(e.into()),
            }
        }
        let _ = f.sync_all();
        Ok(path)
    }
}

impl Drop for Tmpfs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(self.dir.path())
            .status();
    }
}

/// Three members; member 3's data directory is on `fs`.
async fn cluster_with_member3_on(fs: &Tmpfs, extra: &[&str]) -> Result<StoreCluster> {
    let tmp = tempfile::tempdir()?;
    std::os::unix::fs::symlink(fs.path(), tmp.path().join("m3"))?;
    StoreCluster::start_in(tmp, 3, extra, None, None).await
}

fn value_for(i: usize) -> String {
    let seed = format!("{i:08x}");
    seed.repeat(VALUE_BYTES / seed.len())
}

async fn put(http: &reqwest::Client, url: &str, value: String) -> Result<(u16, Value)> {
    let resp = http
        .put(url)
        .body(value)
        .timeout(Duration::from_secs(15))
        .send()
        .await?;
    let status = resp.status().as_u16();
    let body: Value = resp.json().await.context("the answer is not JSON")?;
    Ok((status, body))
}

async fn get_json(http: &reqwest::Client, url: &str) -> Result<(u16, Value)> {
    let resp = http
        .get(url)
        .timeout(Duration::from_secs(10))
        .send()
        .await?;
    let status = resp.status().as_u16();
    Ok((status, resp.json().await.context("the answer is not JSON")?))
}

/// Alarms as `[member ids]` seen by `member`.
async fn alarms(http: &reqwest::Client, c: &StoreCluster, member: u64) -> Option<Vec<u64>> {
    let (_, v) = get_json(http, &c.member(member).url("/v1/alarms"))
        .await
        .ok()?;
    v["alarms"]
        .as_array()?
        .iter()
        .map(|a| a["member_id"].as_u64())
        .collect()
}

/// Waits until `member` has applied `revision`, then checks that it holds exactly `want`
/// (key index -> value) under `big/`.
async fn check_member_holds(
    http: &reqwest::Client,
    c: &StoreCluster,
    member: u64,
    revision: i64,
    want: &std::collections::BTreeMap<usize, String>,
) -> Result<()> {
    let m = c.member(member);
    wait_until(
        Duration::from_secs(60),
        "the member to catch up",
        || async {
            let (_, v) = get_json(http, &m.url("/v1/kv/none?serializable=true"))
                .await
                .ok()?;
            (v["header"]["revision"].as_i64()? >= revision).then_some(())
        },
    )
    .await?;
    for (i, value) in want {
        let (status, v) = get_json(
            http,
            &m.url(&format!("/v1/kv/big/{i:05}?serializable=true")),
        )
        .await?;
        ensure!(status == 200, "member {member}: big/{i:05}: {status} {v}");
        let got = v["kvs"][0]["value"].as_str().unwrap_or_default();
        ensure!(
            got == value,
            "member {member}: big/{i:05} holds {} bytes that differ from the {} acknowledged",
            got.len(),
            value.len()
        );
    }
    let (_, v) = get_json(
        http,
        &m.url("/v1/kv/big/?prefix=true&count_only=true&serializable=true"),
    )
    .await?;
    ensure!(
        v["count"].as_u64() == Some(want.len() as u64),
        "member {member} holds {} keys under big/, expected {}",
        v["count"],
        want.len()
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_raises_nospace_refuses_data_writes_and_recovers() -> Result<()> {
    let fs = Tmpfs::mount(160)?;
    let c = cluster_with_member3_on(&fs, &["--min-free-disk-mb", "32"]).await?;
    let http = reqwest::Client::new();
    ensure!(
        alarms(&http, &c, 1).await == Some(vec![]),
        "no alarm at the start"
    );

    // Leave 40 MiB: the first writes fit, then member 3 crosses its 32 MiB reserve.
    let filler = fs.fill(40 * MIB)?;
    let mut acked = std::collections::BTreeMap::new();
    let mut last_revision = 0;
    let mut refused = None;
    for i in 0..400 {
        let url = c.member(1).url(&format!("/v1/kv/big/{i:05}"));
        let (status, body) = put(&http, &url, value_for(i)).await?;
        match status {
            200 => {
                acked.insert(i, value_for(i));
                last_revision = body["header"]["revision"].as_i64().unwrap_or(0);
            }
            507 => {
                refused = Some(body);
                break;
            }
            _ => bail!("put {i}: {status} {body}\n{}", c.log(3)),
        }
    }
    let Some(refusal) = refused else {
        bail!(
            "400 writes of 256 KiB were all accepted with {} bytes free on member 3",
            fs.free()?
        );
    };
    eprintln!(
        "{} writes of 256 KiB taken, then 507 with {} MiB free on member 3",
        acked.len(),
        fs.free()? / MIB
    );
    ensure!(refusal["error"] == "no_space", "{refusal}");
    let message = refusal["message"].as_str().unwrap_or_default();
    ensure!(
        message.contains("NOSPACE") && message.contains('3'),
        "the error names the alarm and the member: {message}"
    );
    ensure!(!acked.is_empty(), "some writes fit before the reserve");
    // The member that answered 507 has applied the alarm; the others may be a moment behind.
    for m in 1..=3 {
        wait_until(
            Duration::from_secs(10),
            &format!("member {m} to report member 3's NOSPACE alarm"),
            || async { (alarms(&http, &c, m).await? == vec![3]).then_some(()) },
        )
        .await?;
    }

    // Every member refuses data writes; a transaction with a put and a lease grant too.
    let (status, body) = put(&http, &c.member(2).url("/v1/kv/other"), "x".into()).await?;
    ensure!(
        status == 507 && body["error"] == "no_space",
        "{status} {body}"
    );
    let txn = serde_json::json!({"success": [{"put": {"key": "t", "value": "v"}}]});
    let resp = http
        .post(c.member(1).url("/v1/txn"))
        .json(&txn)
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 507,
        "txn with a put: {}",
        resp.status()
    );
    let resp = http
        .post(c.member(1).url("/v1/lease"))
        .json(&serde_json::json!({"ttl": 60}))
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 507,
        "lease grant: {}",
        resp.status()
    );

    // Reads and deletes still work.
    let (status, v) = get_json(&http, &c.member(3).url("/v1/kv/big/00000")).await?;
    ensure!(
        status == 200 && v["kvs"][0]["value"] == value_for(0),
        "{status}"
    );
    let resp = http
        .delete(c.member(1).url("/v1/kv/big/00000"))
        .send()
        .await?;
    ensure!(resp.status().as_u16() == 200, "delete: {}", resp.status());
    acked.remove(&0);
    let (_, v) = get_json(&http, &c.member(1).url("/v1/kv/none")).await?;
    last_revision = v["header"]["revision"].as_i64().unwrap_or(last_revision);

    // Space returns: the alarm clears by itself and writes are taken again.
    std::fs::remove_file(&filler)?;
    wait_until(
        Duration::from_secs(30),
        "member 3 to clear its alarm",
        || async { (alarms(&http, &c, 1).await? == Vec::<u64>::new()).then_some(()) },
    )
    .await?;
    let next = acked.keys().last().copied().unwrap_or(0) + 1;
    let (status, body) = put(
        &http,
        &c.member(2).url(&format!("/v1/kv/big/{next:05}")),
        value_for(next),
    )
    .await?;
    ensure!(
        status == 200,
        "a write after space returned: {status} {body}"
    );
    acked.insert(next, value_for(next));
    last_revision = last_revision.max(body["header"]["revision"].as_i64().unwrap_or(0));

    // Nothing acknowledged was lost or damaged on the member that ran out of space, also
    // after a kill -9 and restart.
    let mut c = c;
    check_member_holds(&http, &c, 3, last_revision, &acked).await?;
    c.kill(3);
    c.spawn(3)?;
    c.wait_leader(&[1, 2, 3]).await?;
    check_member_holds(&http, &c, 3, last_revision, &acked).await?;
    check_member_holds(&http, &c, 1, last_revision, &acked).await?;

    // A member removed while its alarm is up does not keep the cluster read-only: the
    // removal clears its alarm, and its still-running process cannot raise it again.
    let _filler = fs.fill(16 * MIB)?;
    wait_until(
        Duration::from_secs(30),
        "member 3's alarm again",
        || async { (alarms(&http, &c, 1).await? == vec![3]).then_some(()) },
    )
    .await?;
    let resp = http
        .delete(c.member(1).url("/v1/cluster/members/3"))
        .send()
        .await?;
    ensure!(
        resp.status().as_u16() == 200,
        "removing member 3: {}",
        resp.status()
    );
    // The removal is committed when it is answered; member 1 may apply it a moment later.
    wait_until(
        Duration::from_secs(10),
        "the removed member's alarm to be cleared on member 1",
        || async { (alarms(&http, &c, 1).await? == Vec::<u64>::new()).then_some(()) },
    )
    .await?;
    for i in 0..20 {
        let (status, body) = put(
            &http,
            &c.member(2).url(&format!("/v1/kv/after/{i}")),
            "x".into(),
        )
        .await?;
        ensure!(
            status == 200,
            "a write after member 3 left: {status} {body}"
        );
    }
    ensure!(
        alarms(&http, &c, 2).await == Some(vec![]),
        "the removed member raised its alarm again"
    );
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_member_whose_disk_fills_without_reserve_stops_and_rejoins_when_space_returns(
) -> Result<()> {
    let fs = Tmpfs::mount(96)?;
    // No reserve: the disk really fills up under the member.
    let c = cluster_with_member3_on(&fs, &["--min-free-disk-mb", "0"]).await?;
    let http = reqwest::Client::new();
    let filler = fs.fill(0)?;

    // The majority (members 1 and 2) keeps taking writes; member 3 cannot append them.
    let mut acked = std::collections::BTreeMap::new();
    let mut last_revision = 0;
    // When member 3 leads, its failure costs an election: a 503 means nothing was
    // written, so the write is retried (as the store's client does).
    for i in 0..20 {
        let url = c.member(1).url(&format!("/v1/kv/big/{i:05}"));
        let body = wait_until(
            Duration::from_secs(30),
            "a write on the majority",
            || async {
                match put(&http, &url, value_for(i)).await.ok()? {
                    (200, body) => Some(body),
                    (503, _) => None,
                    (status, body) => panic!("put {i}: {status} {body}"),
                }
            },
        )
        .await?;
        acked.insert(i, value_for(i));
        last_revision = body["header"]["revision"].as_i64().unwrap_or(0);
    }

    // Member 3 says its storage failed, and refuses writes with that reason.
    let why = wait_until(
        Duration::from_secs(30),
        "member 3 to report its storage failure",
        || async {
            let (status, v) = get_json(&http, &c.member(3).url("/health")).await.ok()?;
            (status == 503).then_some(v)
        },
    )
    .await
    .map_err(|e| anyhow::anyhow!("{e}\n{}", c.log(3)))?;
    ensure!(
        why["message"]
            .as_str()
            .is_some_and(|m| m.contains("storage failed")),
        "{why}"
    );
    let (status, body) = put(&http, &c.member(3).url("/v1/kv/x"), "x".into()).await?;
    ensure!(
        status == 503
            && body["message"]
                .as_str()
                .is_some_and(|m| m.contains("storage failed")),
        "a write on the failed member: {status} {body}"
    );

    // Space returns: member 3 restarts itself, catches up, and holds every write intact.
    std::fs::remove_file(&filler)?;
    check_member_holds(&http, &c, 3, last_revision, &acked)
        .await
        .map_err(|e| anyhow::anyhow!("{e}\n{}", c.log(3)))?;
    let log = c.log(3);
    ensure!(
        log.contains("restarting this member"),
        "member 3 restarted itself"
    );
    let (status, body) = put(&http, &c.member(3).url("/v1/kv/after"), "ok".into()).await?;
    ensure!(
        status == 200,
        "a write through member 3 again: {status} {body}"
    );
    Ok(())
}
