//! Free loopback ports for servers under test. A port is only checked free, not held: the
//! server binds it later. Binding port 0 and dropping the listener would hand out a port of
//! the kernel's ephemeral range, which any outgoing connection may take before the server
//! binds it; these ports are below that range, and never the same one twice in a process.

use std::net::TcpListener;
use std::sync::atomic::{AtomicU32, Ordering};

/// The lowest port handed out.
const LOW: u32 = 20_000;
/// How many ports are handed out, from [`LOW`]: all below the ephemeral range (32768 and up).
const SPAN: u32 = 12_000;

/// A free TCP port on 127.0.0.1, below the kernel's ephemeral range (32768 and up) so that
/// no outgoing connection can take it between this check and the server's bind, and never
/// the same one twice in a process (processes start at different places, by their pid).
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    let _ = NEXT.compare_exchange(
        0,
        std::process::id() * 7919 % SPAN + 1,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    loop {
        let port = (LOW + NEXT.fetch_add(1, Ordering::SeqCst) % SPAN) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
}

/// `127.0.0.1:PORT` with a [`free_port`].
pub fn free_addr() -> String {
    format!("127.0.0.1:{}", free_port())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..50).map(|_| free_port()).collect();
        assert!(ports.iter().all(|p| (20_000..32_000).contains(p)));
        let mut unique = ports.clone();
        unique.sort();
        unique.dedup();
        assert_eq!(unique.len(), ports.len());
    }
}
