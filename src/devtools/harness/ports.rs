//! Loopback ports for servers that must be told their port up front (a cluster's routes, a
//! router's intake).
//!
//! A port is checked by binding it and released before the server binds it, so something else
//! could take it in between. The classic `bind 127.0.0.1:0` hands out a port from the kernel's
//! ephemeral range, which is exactly where every outgoing connection's local port and every
//! `nats-server -p -1` come from: with tests in parallel, a released port is regularly taken by
//! a client socket before the router listens on it ("Address already in use"). So ports are
//! picked at random *below* the ephemeral range, where only explicit binds go, and checked by
//! binding; `bind :0` remains the fallback when that range is too small.

use std::net::TcpListener;
use std::ops::Range;

use super::HarnessError;

/// Where candidates are drawn from: above the registered well-known services, below the
/// ephemeral range (`/proc/sys/net/ipv4/ip_local_port_range`, Linux default 32768-60999).
fn candidate_range() -> Option<Range<u16>> {
    const LOW: u16 = 10_000;
    let ephemeral_low = std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|s| s.split_whitespace().next()?.parse::<u16>().ok())
        .unwrap_or(32_768);
    // Fewer than a few thousand candidates would make collisions between parallel tests likely.
    (ephemeral_low > LOW + 4_000).then_some(LOW..ephemeral_low)
}

fn bind_one(range: &Option<Range<u16>>) -> Result<TcpListener, HarnessError> {
    if let Some(r) = range {
        for _ in 0..64 {
            let port = rand::random_range(r.clone());
            if let Ok(l) = TcpListener::bind(("127.0.0.1", port)) {
                return Ok(l);
            }
        }
    }
    TcpListener::bind("127.0.0.1:0").map_err(HarnessError::NoPort)
}

/// A loopback port free right now.
pub fn free_port() -> Result<u16, HarnessError> {
    let range = candidate_range();
    bind_one(&range)?
        .local_addr()
        .map(|a| a.port())
        .map_err(HarnessError::NoPort)
}

/// `n` distinct loopback ports. Every listener is held until all are picked, so no port is
/// handed out twice.
pub fn free_ports(n: usize) -> Result<Vec<u16>, HarnessError> {
    let range = candidate_range();
    let listeners = (0..n)
        .map(|_| bind_one(&range))
        .collect::<Result<Vec<_>, _>>()?;
    listeners
        .iter()
        .map(|l| l.local_addr().map(|a| a.port()))
        .collect::<Result<Vec<_>, _>>()
        .map_err(HarnessError::NoPort)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn free_ports_are_distinct_bindable_and_outside_the_ephemeral_range() {
        let ports = free_ports(6).unwrap();
        let mut sorted = ports.clone();
        sorted.sort_unstable();
        sorted.dedup();
        assert_eq!(sorted.len(), 6, "{ports:?}");
        if let Some(r) = candidate_range() {
            assert!(ports.iter().all(|p| r.contains(p)), "{ports:?} in {r:?}");
        }
        for p in ports {
            TcpListener::bind(("127.0.0.1", p)).unwrap();
        }
        assert_ne!(free_port().unwrap(), 0);
    }
}
