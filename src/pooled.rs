//! A route's pooled HTTP/1.1 keep-alive connections to its upstream, each driven by the
//! exchange that uses it.
//!
//! hyper-util's pooled client drives every connection from a task of its own: an exchange
//! passes its request through a channel to that task, and gets its response head and every
//! body chunk back through channels, so each step of an exchange is a hop between two tasks
//! (and the pool key is hashed on every checkout). Here the exchange takes an idle
//! connection (or opens one with the route's [`Connector`]) and polls hyper's
//! `client::conn::http1` connection itself: while it waits for the response head, then
//! from the response body ([`PooledBody`]) while the body passes. The response is read and
//! passed on to the client in one go, and a burst of exchanges does not wait for a
//! separate task to run between reading and writing.
//!
//! A connection goes back to the pool when its response body has been passed on to its
//! end and hyper is ready for the next request on it; otherwise (the client left, the
//! upstream still wants an upload it answered early) it is closed. Idle connections are
//! taken most recently used first; one the upstream closed while it was idle is noticed
//! when it is next taken, and one idle for `upstream_idle_timeout` is closed. At most
//! `upstream_max_idle` connections wait in the pool; one more closes the least recently
//! used, as nginx's `keepalive` does, so a burst does not leave its whole peak of
//! connections (their TLS state, buffers and file descriptors) open after it.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker, ready};
use std::time::Duration;

use bytes::Bytes;
use http::header::HOST;
use http::uri::Authority;
use http::{HeaderValue, Request, Response, Uri};
use http_body::{Body, Frame, SizeHint};
use hyper::body::Incoming;
use hyper::client::conn::http1;
use tokio::time::Instant;
use tower_service::Service;

use crate::body::RequestBody;
use crate::error::{BoxError, GatewayError, UpstreamFailure};
use crate::upstream::{Connector, MAX_RESPONSE_HEAD, UpstreamStream};

/// The route's HTTP/1.1 connections.
pub struct Pooled {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// `scheme://authority` of the upstream, what the connector dials.
    target: Uri,
    /// The `Host` every request carries: the upstream's authority, without a default port.
    host: HeaderValue,
    idle: Mutex<IdleList>,
    /// An idle connection is closed after this long (`upstream_idle_timeout`).
    idle_timeout: Duration,
    /// Idle connections kept at most (`upstream_max_idle`).
    max_idle: usize,
}

#[derive(Default)]
struct IdleList {
    /// Oldest first: connections are taken from the back and put back at the back; the
    /// least recently used is at the front.
    connections: VecDeque<Idle>,
    /// A task is waiting to close connections whose idle time runs out.
    reaping: bool,
}

struct Idle {
    conn: Conn,
    since: Instant,
}

/// hyper's HTTP/1.1 client connection over an upstream stream. Boxed once when it is
/// opened: it holds its read and write buffers' state, which every exchange's future and
/// response would otherwise carry, and copy with each move.
type Connection = Box<http1::Connection<UpstreamStream, RequestBody>>;

/// One connection: hyper's sending half and the connection it drives.
struct Conn {
    sender: http1::SendRequest<RequestBody>,
    connection: Connection,
}

impl Conn {
    /// Drives the connection once and says whether it takes a request now. A connection
    /// the upstream closed while idle ends here (hyper reads the end of the stream).
    fn settle(&mut self, cx: &mut Context<'_>) -> bool {
        if Pin::new(&mut *self.connection).poll(cx).is_ready() {
            return false;
        }
        matches!(self.sender.poll_ready(cx), Poll::Ready(Ok(())))
    }
}

impl Pooled {
    /// Nothing is opened until the first exchange.
    pub fn new(
        connector: Connector,
        target: Uri,
        authority: &Authority,
        idle_timeout: Duration,
        max_idle: usize,
    ) -> Pooled {
        let default_port = match target.scheme_str() {
            Some("https") => 443,
            _ => 80,
        };
        let host = match authority.port_u16() {
            Some(port) if port == default_port => authority.host(),
            _ => authority.as_str(),
        };
        Pooled {
            shared: Arc::new(Shared {
                connector,
                host: HeaderValue::from_str(host).expect("an authority is a valid header value"),
                target,
                idle: Mutex::default(),
                idle_timeout,
                max_idle,
            }),
        }
    }

    /// Sends `request` (its URI absolute) and waits for the response head. A request a
    /// reused connection gave back unsent (the upstream had closed it) goes once more on a
    /// new connection, as hyper-util's client does.
    pub async fn send(
        &self,
        request: Request<RequestBody>,
    ) -> Result<Response<PooledBody>, GatewayError> {
        let (mut parts, body) = request.into_parts();
        // HTTP/1.1 to an origin server: the request target in origin form, the authority in Host.
        parts.uri = match parts.uri.path_and_query() {
            Some(path_and_query) => Uri::from(path_and_query.clone()),
            None => Uri::from_static("/"),
        };
        parts.headers.insert(HOST, self.shared.host.clone());
        let mut request = Request::from_parts(parts, body);
        let mut retried = false;
        loop {
            let (conn, reused) = match self.shared.take_idle().await {
                Some(conn) => (conn, true),
                // Boxed: connecting holds large futures (the TLS handshake) that would
                // otherwise enlarge, and be copied with, every exchange's future.
                None => (Box::pin(self.shared.connect()).await?, false),
            };
            match exchange(conn, request, &self.shared).await {
                Ok(response) => return Ok(response),
                Err(Refused::Unsent(unsent)) if reused && !retried => {
                    request = *unsent;
                    retried = true;
                }
                Err(Refused::Unsent(_)) => {
                    return Err(broken("the upstream closed the connection".into()));
                }
                Err(Refused::Failed(error)) => return Err(broken(error.into())),
            }
        }
    }
}

fn broken(source: BoxError) -> GatewayError {
    GatewayError::Upstream {
        kind: UpstreamFailure::Broken,
        source,
    }
}

/// Why an exchange has no response.
enum Refused {
    /// The connection closed before the request was sent; here it is back (boxed: this is
    /// rare, and the result of every exchange would otherwise be as large as a request).
    Unsent(Box<Request<RequestBody>>),
    Failed(hyper::Error),
}

/// Sends the request on `conn` and drives the connection until the response head has come;
/// the response body drives it from then on.
async fn exchange(
    conn: Conn,
    request: Request<RequestBody>,
    pool: &Arc<Shared>,
) -> Result<Response<PooledBody>, Refused> {
    let Conn {
        mut sender,
        connection,
    } = conn;
    let mut connection = Some(connection);
    let mut response = std::pin::pin!(sender.try_send_request(request));
    let result =
        std::future::poll_fn(|cx| poll_with(&mut connection, cx, |cx| response.as_mut().poll(cx)))
            .await;
    match result {
        Ok(response) => Ok(response.map(|incoming| PooledBody {
            incoming,
            ended: false,
            sender: Some(sender),
            connection,
            pool: Arc::downgrade(pool),
        })),
        Err(mut error) => match error.take_message() {
            Some(request) => Err(Refused::Unsent(Box::new(request))),
            None => Err(Refused::Failed(error.into_error())),
        },
    }
}

/// Polls `output` (something the connection produces: the response head, a body frame)
/// together with the connection that produces it. `output` is looked at first without
/// registering for a wake-up, then the connection is driven, then `output` is looked at
/// for real: what the connection produced in this same poll is taken at once, instead of
/// waking this task to look again. A connection that ends is dropped, which resolves
/// whatever still waited on it.
fn poll_with<T>(
    connection: &mut Option<Connection>,
    cx: &mut Context<'_>,
    mut output: impl FnMut(&mut Context<'_>) -> Poll<T>,
) -> Poll<T> {
    if let Some(conn) = connection {
        if let Poll::Ready(out) = output(&mut Context::from_waker(Waker::noop())) {
            return Poll::Ready(out);
        }
        if Pin::new(&mut **conn).poll(cx).is_ready() {
            *connection = None;
        }
    }
    output(cx)
}

impl Shared {
    /// The most recently used idle connection that takes a request now; connections that
    /// do not (closed by the upstream, idle too long) are closed on the way.
    async fn take_idle(&self) -> Option<Conn> {
        loop {
            let mut conn = {
                let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
                let candidate = idle.connections.pop_back()?;
                if candidate.since.elapsed() >= self.idle_timeout {
                    // Every older one has run out too.
                    let expired = std::mem::take(&mut idle.connections);
                    drop(idle);
                    drop(expired);
                    return None;
                }
                candidate.conn
            };
            if std::future::poll_fn(|cx| Poll::Ready(conn.settle(cx))).await {
                return Some(conn);
            }
        }
    }

    /// Opens a connection (TCP, TLS, then HTTP/1.1 over it).
    async fn connect(&self) -> Result<Conn, GatewayError> {
        let io = self
            .connector
            .clone()
            .call(self.target.clone())
            .await
            .map_err(|error| GatewayError::Upstream {
                kind: error.kind,
                source: error.into(),
            })?;
        // Reads of one TLS record's size instead of hyper's default, which doubles its read
        // buffer up to ~400 KiB while a large body arrives quickly: each chunk of the body
        // is then passed on while it is still in the CPU's cache (a download costs ~10 %
        // less CPU), and a connection holds 16 KiB instead of up to 400 KiB (peak memory
        // under 16 streams of 1 MB: 30 → 16 MiB). The buffer also bounds the response head.
        let (sender, connection) = http1::Builder::new()
            .read_buf_exact_size(Some(MAX_RESPONSE_HEAD))
            .handshake(io)
            .await
            .map_err(|e| broken(e.into()))?;
        Ok(Conn {
            sender,
            connection: Box::new(connection),
        })
    }

    /// Puts `conn` back for the next exchange and makes sure it is closed if none comes
    /// within `idle_timeout`. With `max_idle` connections already waiting, the least
    /// recently used is closed instead.
    fn put_back(self: &Arc<Self>, conn: Conn) {
        let mut idle = self.idle.lock().unwrap_or_else(|p| p.into_inner());
        idle.connections.push_back(Idle {
            conn,
            since: Instant::now(),
        });
        let surplus = if idle.connections.len() > self.max_idle {
            idle.connections.pop_front()
        } else {
            None
        };
        if !idle.reaping
            && !idle.connections.is_empty()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            idle.reaping = true;
            runtime.spawn(reap(Arc::downgrade(self)));
        }
        // Closed outside the lock.
        drop(idle);
        drop(surplus);
    }
}

/// Closes idle connections as their idle time runs out, until none is left; ends with the
/// route.
async fn reap(shared: Weak<Shared>) {
    loop {
        let next = {
            let Some(shared) = shared.upgrade() else {
                return;
            };
            let mut idle = shared.idle.lock().unwrap_or_else(|p| p.into_inner());
            let now = Instant::now();
            // Oldest first, so the expired ones are a prefix.
            let expired = idle
                .connections
                .partition_point(|c| now.duration_since(c.since) >= shared.idle_timeout);
            let closing: Vec<Idle> = idle.connections.drain(..expired).collect();
            let next = match idle.connections.front() {
                Some(oldest) => oldest.since + shared.idle_timeout,
                None => {
                    idle.reaping = false;
                    return;
                }
            };
            drop(idle);
            drop(closing);
            next
        };
        tokio::time::sleep_until(next).await;
    }
}

/// A response body from a pooled connection. Polling it drives the connection, which
/// reads the body from the upstream; at its end the connection goes back to the pool.
pub struct PooledBody {
    incoming: Incoming,
    /// The body has been read to its end. hyper's own `is_end_stream` says so of a body of
    /// announced length only, never of a chunked one.
    ended: bool,
    /// Taken when the connection goes back to the pool.
    sender: Option<http1::SendRequest<RequestBody>>,
    /// `None` once the connection has ended.
    connection: Option<Connection>,
    pool: Weak<Shared>,
}

impl Body for PooledBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let incoming = &mut this.incoming;
        let frame = ready!(poll_with(&mut this.connection, cx, |cx| {
            Pin::new(&mut *incoming).poll_frame(cx)
        }));
        this.ended |= frame.is_none();
        Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.incoming.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.incoming.size_hint()
    }
}

impl Drop for PooledBody {
    fn drop(&mut self) {
        // Reusable only when the whole response was read and hyper already waits for the
        // next request (a request body still being sent keeps it busy); any other
        // connection is closed by dropping it.
        if let Some(connection) = self.connection.take()
            && let Some(sender) = self.sender.take()
            && (self.ended || self.incoming.is_end_stream())
            && sender.is_ready()
            && let Some(pool) = self.pool.upgrade()
        {
            pool.put_back(Conn { sender, connection });
        }
    }
}
