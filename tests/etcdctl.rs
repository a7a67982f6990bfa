//! The real `etcdctl` 3.4 (Debian's etcd-client) against real store processes, through
//! `scripts/test-etcdctl.sh`: every command it covers must print what it prints against a
//! real etcd (the script was checked against etcd 3.4.23). Once without credentials, once
//! against members started with `--token-file`.

mod common;

use std::process::Command;

use anyhow::Result;
use common::{run_check_script, StoreCluster};

fn run_script(store: &StoreCluster, token_file: Option<&std::path::Path>) -> Result<()> {
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/test-etcdctl.sh");
    let mut cmd = Command::new("bash");
    cmd.arg(script)
        .arg(store.endpoints().join(","))
        .env("EXPECT_SNAPSHOT_ERROR", "1");
    if let Some(f) = token_file {
        cmd.arg("--token-file").arg(f);
    }
    run_check_script(&mut cmd, "etcdctl", "")?;
    Ok(())
}

#[tokio::test]
async fn etcdctl_commands_answer_as_against_etcd() -> Result<()> {
    let store = StoreCluster::start(3).await?;
    run_script(&store, None)
}

#[tokio::test]
async fn etcdctl_with_a_token_authenticates_and_strangers_are_refused() -> Result<()> {
    let token = "etcdctl-test-client-token-0123456789";
    let store = StoreCluster::start_secured(3, token, "etcdctl-test-peer-secret-0123456").await?;
    let file = store.tmp.path().join("client.token");
    run_script(&store, Some(&file))
}
