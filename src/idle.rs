//! Idle keep-alive detection for one client connection, the same for HTTP/1.1 and HTTP/2.
//!
//! A connection is idle while no exchange is in flight on it. Every exchange holds an
//! [`InFlight`] guard from its request head until its response body ends (or the client
//! goes away); when the last guard drops, the idle clock restarts. [`Activity::idle_for`]
//! resolves once the connection has been idle for the whole timeout, and the server then
//! closes it gracefully (HTTP/2 GOAWAY, HTTP/1.1 close between requests).
//!
//! hyper's own HTTP/2 keep-alive pings find dead peers; this finds live but silent ones,
//! which otherwise hold a connection slot for ever.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

/// Exchanges in flight on one connection, and when the last one ended.
#[derive(Debug)]
pub struct Activity {
    in_flight: AtomicUsize,
    /// When the connection last became idle (or was opened).
    idle_since: std::sync::Mutex<Instant>,
    /// Woken when the last exchange in flight ends.
    became_idle: Notify,
}

impl Activity {
    pub fn new() -> Arc<Activity> {
        Arc::new(Activity {
            in_flight: AtomicUsize::new(0),
            idle_since: std::sync::Mutex::new(Instant::now()),
            became_idle: Notify::new(),
        })
    }

    /// Marks an exchange as started; the connection is busy until the guard drops.
    pub fn begin(self: &Arc<Self>) -> InFlight {
        self.in_flight.fetch_add(1, Ordering::AcqRel);
        InFlight(self.clone())
    }

    /// Resolves once no exchange has been in flight for `timeout`.
    pub async fn idle_for(&self, timeout: Duration) {
        loop {
            // Registered before the check, so an exchange ending in between is not missed.
            let became_idle = self.became_idle.notified();
            if self.in_flight.load(Ordering::Acquire) > 0 {
                became_idle.await;
                continue;
            }
            let deadline = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + timeout;
            if Instant::now() >= deadline {
                return;
            }
            // An exchange may start and end meanwhile; the loop re-checks from its end.
            tokio::time::sleep_until(deadline).await;
            if self.in_flight.load(Ordering::Acquire) == 0
                && *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) + timeout
                    <= Instant::now()
            {
                return;
            }
        }
    }
}

/// One exchange in flight on a connection (see [`Activity::begin`]).
#[derive(Debug)]
pub struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        let activity = &self.0;
        // The clock is reset before the count reaches zero, so a waiter that sees zero
        // also sees the new start of idleness.
        *activity
            .idle_since
            .lock()
            .unwrap_or_else(|p| p.into_inner()) = Instant::now();
        if activity.in_flight.fetch_sub(1, Ordering::AcqRel) == 1 {
            activity.became_idle.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn idle_only_after_the_last_exchange_ends_and_the_timeout_passes() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        let started = Instant::now();
        let exchange = activity.begin();
        let waiter = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(timeout).await }
        });
        // Busy for 30 s: never idle meanwhile, however long the timeout is exceeded.
        tokio::time::sleep(Duration::from_secs(30)).await;
        assert!(!waiter.is_finished());
        drop(exchange);
        waiter.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(40));
    }

    #[tokio::test(start_paused = true)]
    async fn an_exchange_restarts_the_idle_clock() {
        let activity = Activity::new();
        let timeout = Duration::from_secs(10);
        let started = Instant::now();
        let waiter = tokio::spawn({
            let activity = activity.clone();
            async move { activity.idle_for(timeout).await }
        });
        tokio::time::sleep(Duration::from_secs(6)).await;
        drop(activity.begin()); // a quick exchange at 6 s
        waiter.await.unwrap();
        assert_eq!(started.elapsed(), Duration::from_secs(16));
    }
}
