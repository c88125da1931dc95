//! Connection limits: a ceiling on open client connections, overall and per client address,
//! so one partner (or attacker) cannot take every connection the gateway can hold.
//!
//! A connection over a limit is closed at once, before any TLS work is spent on it;
//! connections already open are not affected.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Shared by every listener of a gateway.
#[derive(Debug)]
pub struct ConnectionLimits {
    /// One permit per open connection, across all listeners (`max_connections`).
    total: Arc<Semaphore>,
    /// Open connections by client address (`max_connections_per_ip`).
    per_ip: Mutex<HashMap<IpAddr, usize>>,
    max_per_ip: usize,
}

/// Held for as long as a connection is open; gives its places back when dropped.
#[derive(Debug)]
pub struct ConnectionPermit {
    _total: OwnedSemaphorePermit,
    limits: Arc<ConnectionLimits>,
    ip: IpAddr,
}

/// Which limit refused a connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    Total,
    PerIp,
}

impl ConnectionLimits {
    pub fn new(max_connections: usize, max_per_ip: usize) -> Arc<Self> {
        Arc::new(ConnectionLimits {
            total: Arc::new(Semaphore::new(max_connections.min(Semaphore::MAX_PERMITS))),
            per_ip: Mutex::new(HashMap::new()),
            max_per_ip,
        })
    }

    /// Takes a place for a new connection from `ip`, or says which limit is reached.
    pub fn admit(self: &Arc<Self>, ip: IpAddr) -> Result<ConnectionPermit, Refusal> {
        let total = self
            .total
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::Total)?;
        let mut per_ip = self.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        let open = per_ip.entry(ip).or_insert(0);
        if *open >= self.max_per_ip {
            return Err(Refusal::PerIp);
        }
        *open += 1;
        Ok(ConnectionPermit {
            _total: total,
            limits: self.clone(),
            ip,
        })
    }
}

impl Drop for ConnectionPermit {
    fn drop(&mut self) {
        let mut per_ip = self.limits.per_ip.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(open) = per_ip.get_mut(&self.ip) {
            *open -= 1;
            if *open == 0 {
                // Forget addresses with nothing open, so the map stays as small as the load.
                per_ip.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn limits_are_enforced_and_released() {
        let limits = ConnectionLimits::new(3, 2);
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        let b = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2));
        let a1 = limits.admit(a).unwrap();
        let _a2 = limits.admit(a).unwrap();
        assert_eq!(limits.admit(a).unwrap_err(), Refusal::PerIp);
        let _b1 = limits.admit(b).unwrap();
        assert_eq!(limits.admit(b).unwrap_err(), Refusal::Total);
        drop(a1);
        let _a3 = limits.admit(a).unwrap();
        assert_eq!(limits.per_ip.lock().unwrap()[&a], 2);
    }

    #[test]
    fn idle_addresses_are_forgotten() {
        let limits = ConnectionLimits::new(10, 10);
        let a = IpAddr::V4(Ipv4Addr::LOCALHOST);
        drop(limits.admit(a).unwrap());
        assert!(limits.per_ip.lock().unwrap().is_empty());
    }
}

/// A token bucket per client address (RFC 6585 §4: 429 with `Retry-After`). Off unless
/// `[limits] rate_limit_per_ip` is set; shared by all listeners and kept across reloads.
#[derive(Debug)]
pub struct RateLimiter {
    limit: crate::config::RateLimit,
    buckets: Mutex<HashMap<IpAddr, Bucket>>,
}

#[derive(Debug, Clone, Copy)]
struct Bucket {
    tokens: f64,
    updated: std::time::Instant,
}

/// Addresses tracked before idle (full) buckets are swept out.
const SWEEP_AT: usize = 10_000;

impl RateLimiter {
    pub fn new(limit: crate::config::RateLimit) -> Arc<Self> {
        Arc::new(RateLimiter {
            limit,
            buckets: Mutex::new(HashMap::new()),
        })
    }

    /// Takes one token for `ip`, or says in how many whole seconds one will be there.
    pub fn check(&self, ip: IpAddr) -> Result<(), u64> {
        let now = std::time::Instant::now();
        let mut buckets = self.buckets.lock().unwrap_or_else(|e| e.into_inner());
        if buckets.len() >= SWEEP_AT {
            let limit = self.limit;
            buckets.retain(|_, b| {
                b.tokens + now.duration_since(b.updated).as_secs_f64() * limit.per_second
                    < limit.burst
            });
        }
        let bucket = buckets.entry(ip).or_insert(Bucket {
            tokens: self.limit.burst,
            updated: now,
        });
        let refill = now.duration_since(bucket.updated).as_secs_f64() * self.limit.per_second;
        bucket.tokens = (bucket.tokens + refill).min(self.limit.burst);
        bucket.updated = now;
        if bucket.tokens >= 1.0 {
            bucket.tokens -= 1.0;
            Ok(())
        } else {
            let wait = (1.0 - bucket.tokens) / self.limit.per_second;
            Err(wait.ceil().max(1.0) as u64)
        }
    }
}

#[cfg(test)]
mod rate_tests {
    use super::*;
    use std::net::Ipv4Addr;

    #[test]
    fn burst_then_refusal_with_retry_after() {
        let limiter = RateLimiter::new(crate::config::RateLimit {
            per_second: 0.5,
            burst: 3.0,
        });
        let a = IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1));
        for _ in 0..3 {
            assert!(limiter.check(a).is_ok());
        }
        assert_eq!(limiter.check(a), Err(2));
        // Another address has its own bucket.
        assert!(
            limiter
                .check(IpAddr::V4(Ipv4Addr::new(192, 0, 2, 2)))
                .is_ok()
        );
    }
}
