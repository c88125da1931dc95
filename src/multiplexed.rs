//! A route's one HTTP/2 connection to its upstream, shared by all its exchanges.
//!
//! hyper-util's pooled client could carry these exchanges too, but on every exchange it
//! hashes the pool key, checks a connection out of the pool and puts it back: about 4 % of
//! the instructions of a small exchange. A route has exactly one upstream and HTTP/2
//! multiplexes, so one connection, driven through hyper's own `client::conn::http2`, needs
//! no pool: an exchange clones the connection's sender under a short lock.
//!
//! The connection is opened by the route's [`Connector`] on the first exchange (one
//! exchange connects while the others wait for it), replaced when it closes, and let go
//! after [`IDLE_TIMEOUT`] without a new exchange; open streams finish first, as HTTP/2's
//! graceful close lets them. When the upstream answers ALPN with HTTP/1.1 (or speaks
//! plain HTTP), the connection is handed to the pooled client, which serves the route from
//! then on.

use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use http::{Request, Response, Uri};
use hyper::body::Incoming;
use hyper::client::conn::http2::{self, SendRequest};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::RequestBody;
use crate::error::{GatewayError, UpstreamFailure};
use crate::upstream::{ConnectError, Connector};

/// How long the connection is kept without a new exchange (as hyper-util's pool keeps an
/// idle connection).
pub const IDLE_TIMEOUT: Duration = Duration::from_secs(90);

/// The route's HTTP/2 connection, opened when first needed.
pub struct Multiplexed {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// `scheme://authority` of the upstream, what the connector dials.
    target: Uri,
    state: Mutex<State>,
    /// Held while a connection is being opened, so a burst of exchanges opens one.
    connecting: tokio::sync::Mutex<()>,
}

type Sender = SendRequest<RequestBody>;

#[derive(Default)]
struct State {
    sender: Option<Sender>,
    /// Tells the current connection from the ones before it.
    generation: u64,
    last_used: Option<Instant>,
    /// The upstream chose HTTP/1.1: exchanges go to the pooled client.
    http1: bool,
    /// Connection attempts that failed, and how the last one failed.
    failures: u64,
    last_failure: Option<UpstreamFailure>,
}

/// What an exchange finds when it asks for the connection.
enum Found {
    /// The open HTTP/2 connection; `reused` when it was there before this exchange asked.
    Http2 {
        sender: Sender,
        generation: u64,
        reused: bool,
    },
    /// The upstream chose HTTP/1.1: the pooled client serves the route.
    Http1,
}

/// Where an exchange went.
pub enum Sent {
    /// Over the HTTP/2 connection: the response head, or why there is none.
    Done(Result<Response<Incoming>, GatewayError>),
    /// Not sent: the upstream speaks HTTP/1.1, so the pooled client must carry it.
    Http1(Request<RequestBody>),
}

impl Multiplexed {
    /// Nothing is opened until the first exchange.
    pub fn new(connector: Connector, target: Uri) -> Multiplexed {
        Multiplexed {
            shared: Arc::new(Shared {
                connector,
                target,
                state: Mutex::default(),
                connecting: tokio::sync::Mutex::new(()),
            }),
        }
    }

    /// Sends `request` and waits for the response head. A request the connection refused
    /// before sending any of it (the upstream was closing the connection) is sent once more
    /// on a new connection, as hyper-util's client does.
    pub async fn send(&self, mut request: Request<RequestBody>) -> Sent {
        let mut retried = false;
        loop {
            let (mut sender, generation, reused) = match self.shared.sender().await {
                Ok(Found::Http2 {
                    sender,
                    generation,
                    reused,
                }) => (sender, generation, reused),
                Ok(Found::Http1) => return Sent::Http1(request),
                Err(error) => {
                    return Sent::Done(Err(GatewayError::Upstream {
                        kind: error.kind,
                        source: error.into(),
                    }));
                }
            };
            match sender.try_send_request(request).await {
                Ok(response) => return Sent::Done(Ok(response)),
                Err(mut error) => match error.take_message() {
                    Some(unsent) if reused && !retried => {
                        self.shared.retire(generation);
                        request = unsent;
                        retried = true;
                    }
                    _ => {
                        return Sent::Done(Err(GatewayError::Upstream {
                            kind: UpstreamFailure::Broken,
                            source: error.into_error().into(),
                        }));
                    }
                },
            }
        }
    }
}

impl Shared {
    /// The open connection, or a new one if there is none.
    async fn sender(self: &Arc<Self>) -> Result<Found, ConnectError> {
        match self.current() {
            Some(found) => Ok(found),
            // Boxed: connecting holds large futures (TLS handshake, HTTP/2 preface) that
            // would otherwise enlarge, and be copied with, every exchange's future.
            None => Box::pin(self.connect()).await,
        }
    }

    /// Opens a connection, unless another exchange did while this one waited its turn.
    /// Exchanges that waited for an attempt that failed fail with it: trying again one
    /// after another would keep the last of a burst waiting for a `connect_timeout` per
    /// exchange ahead of it.
    async fn connect(self: &Arc<Self>) -> Result<Found, ConnectError> {
        let failures_before = self.state().failures;
        let _connecting = self.connecting.lock().await;
        // Another exchange may have opened one while this one waited.
        if let Some(found) = self.current() {
            return Ok(found);
        }
        if let Some(kind) = self.failed_since(failures_before) {
            return Err(ConnectError {
                kind,
                source: "the connection attempt this exchange waited for failed".into(),
            });
        }
        let result = self.open().await;
        if let Err(error) = &result {
            let mut state = self.state();
            state.failures += 1;
            state.last_failure = Some(error.kind);
        }
        result
    }

    /// How the last attempt failed, if one failed after `failures_before` were counted.
    fn failed_since(&self, failures_before: u64) -> Option<UpstreamFailure> {
        let state = self.state();
        state
            .last_failure
            .filter(|_| state.failures != failures_before)
    }

    /// One connection attempt: TCP, TLS, then the HTTP/2 preface.
    async fn open(self: &Arc<Self>) -> Result<Found, ConnectError> {
        let stream = self.connector.clone().call(self.target.clone()).await?;
        if !stream.connected().is_negotiated_h2() {
            self.connector.park(stream);
            self.state().http1 = true;
            return Ok(Found::Http1);
        }
        let (sender, connection) = http2::Builder::new(TokioExecutor::new())
            .timer(TokioTimer::new())
            .handshake(stream)
            .await
            .map_err(|e| ConnectError {
                kind: UpstreamFailure::Broken,
                source: e.into(),
            })?;
        let generation = {
            let mut state = self.state();
            state.generation += 1;
            state.sender = Some(sender.clone());
            state.last_used = Some(Instant::now());
            state.generation
        };
        tokio::spawn(drive(connection, Arc::downgrade(self), generation));
        Ok(Found::Http2 {
            sender,
            generation,
            reused: false,
        })
    }

    /// What serves the route now; `None` when a connection must be opened.
    fn current(&self) -> Option<Found> {
        let mut state = self.state();
        if state.http1 {
            return Some(Found::Http1);
        }
        let sender = state.sender.as_ref().filter(|s| !s.is_closed())?.clone();
        state.last_used = Some(Instant::now());
        Some(Found::Http2 {
            sender,
            generation: state.generation,
            reused: true,
        })
    }

    /// Stops handing out the connection of `generation`: it refused a request, so it is
    /// closing.
    fn retire(&self, generation: u64) {
        let mut state = self.state();
        if state.generation == generation {
            state.sender = None;
        }
    }

    /// Lets the connection of `generation` go if no exchange started on it for
    /// [`IDLE_TIMEOUT`]. Dropping the last sender closes it gracefully.
    fn retire_if_idle(&self, generation: u64) {
        let mut state = self.state();
        if state.generation == generation
            && state
                .last_used
                .is_some_and(|used| used.elapsed() >= IDLE_TIMEOUT)
        {
            state.sender = None;
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drives one connection until it closes, letting it go once it has been idle too long.
async fn drive<F: Future>(connection: F, shared: Weak<Shared>, generation: u64) {
    let mut connection = std::pin::pin!(connection);
    loop {
        tokio::select! {
            _ = &mut connection => return,
            () = tokio::time::sleep(IDLE_TIMEOUT) => {
                if let Some(shared) = shared.upgrade() {
                    shared.retire_if_idle(generation);
                }
            }
        }
    }
}
