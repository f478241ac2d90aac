//! Free loopback ports for the processes a test starts.
use std::collections::HashSet;
use std::net::{IpAddr, TcpListener};
use std::sync::Mutex;

use anyhow::{Context, Result};

static HANDED_OUT: Mutex<Option<HashSet<u16>>> = Mutex::new(None);

/// A loopback TCP port that was free a moment ago and was not handed out before by this process
/// (the kernel may reuse a port it just gave us, which would start two servers on one port).
pub fn free_port() -> Result<u16> {
    for _ in 0..64 {
        let port = TcpListener::bind("127.0.0.1:0")
            .and_then(|l| l.local_addr())
            .context("binding 127.0.0.1:0 to find a free port: is loopback up?")?
            .port();
        let mut guard = HANDED_OUT.lock().unwrap_or_else(|e| e.into_inner());
        if guard.get_or_insert_with(HashSet::new).insert(port) {
            return Ok(port);
        }
    }
    anyhow::bail!("no free loopback port after 64 tries")
}

/// A port [`free_port`] hands out that is also free on each of `ips` (other loopback addresses,
/// for servers that share one port on different addresses).
pub fn free_port_on(ips: &[IpAddr]) -> Result<u16> {
    for _ in 0..64 {
        let port = free_port()?;
        if ips.iter().all(|ip| TcpListener::bind((*ip, port)).is_ok()) {
            return Ok(port);
        }
    }
    anyhow::bail!("no port free on 127.0.0.1 and {ips:?} after 64 tries")
}
