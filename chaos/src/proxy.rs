//! A TCP proxy on one directed link between two store members, which the harness can cut.
//!
//! A cut is a blackhole, not a reset: bytes are read and dropped, nothing is answered, and
//! new connections are accepted and then ignored, so the sender waits for its timeouts the
//! way it would behind a dead network. A connection that lived through a cut stays dead
//! after the heal (its stream lost bytes); the sender's next connection works.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::task::JoinHandle;

#[derive(Default)]
struct LinkState {
    cut: AtomicBool,
    /// Incremented at every cut; a connection opened before the latest cut is dead.
    cuts: AtomicU64,
}

impl LinkState {
    fn passes(&self, born_after_cuts: u64) -> bool {
        !self.cut.load(Ordering::SeqCst) && self.cuts.load(Ordering::SeqCst) == born_after_cuts
    }
}

/// One directed link's proxy; cutting and healing are cheap and idempotent.
pub struct LinkProxy {
    pub listen_addr: String,
    state: Arc<LinkState>,
    task: JoinHandle<()>,
}

impl LinkProxy {
    /// Listens on a free loopback port and forwards every connection to `target`.
    pub async fn start(target: String) -> std::io::Result<LinkProxy> {
        let listener = TcpListener::bind("127.0.0.1:0").await?;
        let listen_addr = listener.local_addr()?.to_string();
        let state = Arc::new(LinkState::default());
        let st = state.clone();
        let task = tokio::spawn(async move {
            while let Ok((inbound, _)) = listener.accept().await {
                let _ = inbound.set_nodelay(true);
                tokio::spawn(serve(inbound, target.clone(), st.clone()));
            }
        });
        Ok(LinkProxy {
            listen_addr,
            state,
            task,
        })
    }

    pub fn cut(&self) {
        self.state.cuts.fetch_add(1, Ordering::SeqCst);
        self.state.cut.store(true, Ordering::SeqCst);
    }

    pub fn heal(&self) {
        self.state.cut.store(false, Ordering::SeqCst);
    }

    pub fn is_cut(&self) -> bool {
        self.state.cut.load(Ordering::SeqCst)
    }
}

impl Drop for LinkProxy {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn serve(mut inbound: TcpStream, target: String, state: Arc<LinkState>) {
    let born = state.cuts.load(Ordering::SeqCst);
    if !state.passes(born) {
        return swallow(inbound).await;
    }
    let Ok(outbound) = TcpStream::connect(&target).await else {
        return; // The member is down: the sender sees the connection close.
    };
    let _ = outbound.set_nodelay(true);
    let (ri, wi) = inbound.split();
    let (ro, wo) = outbound.into_split();
    let up = pump(ri, wo, &state, born);
    let down = pump(ro, wi, &state, born);
    tokio::select! {
        _ = up => {}
        _ = down => {}
    }
    let _ = inbound.shutdown().await;
}

/// Reads and drops everything until the sender closes.
async fn swallow(mut s: TcpStream) {
    let mut buf = vec![0u8; 16 * 1024];
    while let Ok(n) = s.read(&mut buf).await {
        if n == 0 {
            break;
        }
    }
}

async fn pump<R, W>(mut r: R, mut w: W, state: &LinkState, born: u64)
where
    R: AsyncReadExt + Unpin,
    W: AsyncWriteExt + Unpin,
{
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match r.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if !state.passes(born) {
            continue; // Blackholed: drop the bytes, keep the sender waiting.
        }
        if w.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
