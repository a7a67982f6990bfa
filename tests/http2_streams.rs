//! Watchers per connection: one HTTP/2 connection carries at most 1,000 requests (watch
//! streams included) at once. With 1,000 watches open on one connection a 1,001st is not
//! served; once one of them ends, it is.

mod common;

use std::time::Duration;

use anyhow::{ensure, Context, Result};
use bytes::Bytes;
use common::StoreCluster;
use http_body_util::Empty;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpStream;

const STREAMS: usize = 1000;

#[tokio::test(flavor = "multi_thread")]
async fn one_http2_connection_carries_at_most_1000_watch_streams() -> Result<()> {
    let store = StoreCluster::start(1).await?;
    let endpoint = store.member(1).endpoint();
    let tcp = TcpStream::connect(&endpoint).await?;
    let (sender, conn) =
        hyper::client::conn::http2::handshake(TokioExecutor::new(), TokioIo::new(tcp))
            .await
            .context("HTTP/2 handshake (prior knowledge)")?;
    tokio::spawn(conn);
    let watch = move |key: String| {
        let mut sender = sender.clone();
        let uri = format!("http://{endpoint}/v1/watch/{key}");
        async move {
            let req = hyper::Request::get(uri).body(Empty::<Bytes>::new())?;
            anyhow::Ok(sender.send_request(req).await?)
        }
    };

    let mut open = Vec::new();
    for i in 0..STREAMS {
        let resp = watch(format!("h2/{i}")).await?;
        ensure!(resp.status() == 200, "watch {i}: {}", resp.status());
        open.push(resp);
    }
    // The 1,001st waits for a free stream (or is refused); it is never served alongside.
    let mut extra = tokio::spawn(watch("h2/extra".into()));
    match tokio::time::timeout(Duration::from_secs(2), &mut extra).await {
        Err(_) => {} // still waiting: the limit holds it back
        Ok(joined) => {
            let r = joined?;
            ensure!(
                r.is_err(),
                "a stream beyond {STREAMS} was served on one connection: {:?}",
                r.map(|resp| resp.status())
            );
            extra = tokio::spawn(watch("h2/extra".into()));
        }
    }
    // Ending one watch (its stream is reset) lets the waiting one through.
    open.pop();
    let resp = tokio::time::timeout(Duration::from_secs(10), extra)
        .await
        .context("the waiting stream was not served after one ended")???;
    ensure!(resp.status() == 200, "the waiting watch: {}", resp.status());
    Ok(())
}
