//! A route's HTTP/2 connection to its upstream, shared by all its exchanges.
//!
//! hyper-util's pooled client could carry these exchanges too, but on every exchange it
//! hashes the pool key, checks a connection out of the pool and puts it back. hyper's own
//! `client::conn::http2` needs no pool, but hands every request through a channel to the
//! connection's task and spawns one more task per request to wait for the response. A
//! route has exactly one upstream and HTTP/2 multiplexes, so the exchange itself drives its
//! stream on the [`h2`] connection (the crate under hyper's HTTP/2): it clones the
//! connection's sender under a short lock, opens the stream, and awaits the response head
//! in its own task. Only a request with a body to send gets a task of its own, which pumps
//! the body into the stream under HTTP/2 flow control.
//!
//! The connection is opened by the route's [`Connector`] on the first exchange (one
//! exchange connects while the others wait for it), replaced when it closes, and let go
//! after the route's `upstream_idle_timeout` without a new exchange; open streams finish
//! first, as HTTP/2's graceful close lets them. When every open connection carries as many
//! streams as the upstream allows (its `SETTINGS_MAX_CONCURRENT_STREAMS`), one more is
//! opened, so an exchange does not wait in a queue behind long downloads; past
//! [`MAX_CONNECTIONS`], exchanges wait for a stream to come free on any of them. When the
//! upstream answers ALPN with HTTP/1.1 (or speaks plain HTTP), the connection is handed to
//! the pooled HTTP/1.1 connections ([`crate::pooled`]), which serve the route from then on.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http::{Request, Response, Uri};
use http_body::{Body, Frame};
use hyper_util::client::legacy::connect::Connection;
use hyper_util::rt::TokioIo;
use tokio::sync::{Notify, oneshot};
use tokio::time::Instant;
use tower_service::Service;

use crate::body::RequestBody;
use crate::error::{BoxError, GatewayError, UpstreamFailure};
use crate::upstream::{ConnectError, Connector, MAX_RESPONSE_HEAD};

/// At most this many HTTP/2 connections per route. Once every one carries as many streams
/// as the upstream allows, further exchanges wait until a stream comes free on any of them,
/// so an upstream that allows few streams (or none) is not met with a connection per
/// exchange.
pub const MAX_CONNECTIONS: usize = 32;

// The connection's settings are hyper's HTTP/2 client defaults, which the gateway used
// before it drove `h2` itself: large receive windows so one stream can fill a fast link,
// bounded send buffering, no server push.
const CONNECTION_WINDOW: u32 = 5 * 1024 * 1024;
const STREAM_WINDOW: u32 = 2 * 1024 * 1024;
const MAX_FRAME_SIZE: u32 = 16 * 1024;
const MAX_SEND_BUFFER: usize = 1024 * 1024;
const INITIAL_MAX_SEND_STREAMS: usize = 100;
const MAX_LOCAL_ERROR_RESETS: usize = 1024;

/// The route's HTTP/2 connections, opened when needed.
pub struct Multiplexed {
    shared: Arc<Shared>,
}

struct Shared {
    connector: Connector,
    /// `scheme://authority` of the upstream, what the connector dials.
    target: Uri,
    state: Mutex<State>,
    /// Held while a connection is being opened, so a burst of exchanges opens only as
    /// many as it needs.
    connecting: tokio::sync::Mutex<()>,
    /// Told when a stream comes free or a connection goes, for exchanges waiting while
    /// [`MAX_CONNECTIONS`] connections are full.
    freed: Arc<Notify>,
    /// A connection with no new exchange for this long is let go (`upstream_idle_timeout`).
    idle_timeout: Duration,
}

type Sender = SendRequest<Bytes>;

#[derive(Default)]
struct State {
    /// Open connections, oldest first: an exchange goes on the first with a stream to
    /// spare.
    connections: Vec<Conn>,
    /// Connections opened so far; numbers them, so that word about one never touches
    /// another.
    opened: u64,
    /// The upstream chose HTTP/1.1: exchanges go to the pooled connections.
    http1: bool,
    /// Connection attempts that failed, and how the last one failed.
    failures: u64,
    last_failure: Option<UpstreamFailure>,
}

/// One open connection.
struct Conn {
    sender: Sender,
    id: u64,
    last_used: Instant,
    /// Streams the gateway has open on it, counted by [`StreamSlot`]s.
    streams: Arc<Streams>,
}

/// The streams open on one connection.
struct Streams {
    open: AtomicUsize,
    /// The route's [`Shared::freed`].
    freed: Arc<Notify>,
}

impl Conn {
    /// Whether the upstream allows one more stream on it now.
    fn has_room(&self) -> bool {
        self.streams.open.load(Ordering::Relaxed) < self.sender.current_max_send_streams()
    }
}

/// One stream counted open on its connection until dropped: with the response body once
/// there is one, with the exchange otherwise.
pub struct StreamSlot(Arc<Streams>);

impl StreamSlot {
    fn take(streams: &Arc<Streams>) -> StreamSlot {
        streams.open.fetch_add(1, Ordering::Relaxed);
        StreamSlot(streams.clone())
    }
}

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::Relaxed);
        self.0.freed.notify_one();
    }
}

/// What an exchange sees when it looks at the route's connections.
enum Current {
    Found(Found),
    /// A connection must be opened.
    Missing,
    /// Every connection carries as many streams as the upstream allows, and
    /// [`MAX_CONNECTIONS`] are open.
    Full,
}

/// What an exchange finds when it asks for a connection.
enum Found {
    /// An HTTP/2 connection with a stream for this exchange; `reused` when it was open
    /// before this exchange asked.
    Http2 {
        sender: Sender,
        id: u64,
        reused: bool,
        slot: StreamSlot,
    },
    /// The upstream chose HTTP/1.1: the pooled connections serve the route.
    Http1,
}

/// Where an exchange went.
pub enum Sent {
    /// Over the HTTP/2 connection: the response head, or why there is none.
    Done(Result<Response<StreamBody>, GatewayError>),
    /// Not sent: the upstream speaks HTTP/1.1, so a pooled connection must carry it.
    Http1(Request<RequestBody>),
}

impl Multiplexed {
    /// Nothing is opened until the first exchange; a connection with no new exchange for
    /// `idle_timeout` is closed gracefully.
    pub fn new(connector: Connector, target: Uri, idle_timeout: Duration) -> Multiplexed {
        Multiplexed {
            shared: Arc::new(Shared {
                connector,
                target,
                state: Mutex::default(),
                connecting: tokio::sync::Mutex::new(()),
                freed: Arc::new(Notify::new()),
                idle_timeout,
            }),
        }
    }

    /// Sends `request` and waits for the response head. A request the connection refused
    /// before sending any of it (the upstream was closing the connection) is sent once more
    /// on a new connection, as hyper-util's client does.
    pub async fn send(&self, request: Request<RequestBody>) -> Sent {
        let mut retried = false;
        loop {
            let (sender, id, reused, slot) = match self.shared.sender().await {
                Ok(Found::Http2 {
                    sender,
                    id,
                    reused,
                    slot,
                }) => (sender, id, reused, slot),
                Ok(Found::Http1) => return Sent::Http1(request),
                Err(error) => {
                    return Sent::Done(Err(GatewayError::Upstream {
                        kind: error.kind,
                        source: error.into(),
                    }));
                }
            };
            // Ready fails, with the request still unsent, once the connection has closed or
            // the upstream has said GOAWAY.
            match sender.ready().await {
                Ok(sender) => return Sent::Done(exchange(sender, request, slot).await),
                Err(_) if reused && !retried => {
                    self.shared.retire(id);
                    retried = true;
                }
                Err(error) => return Sent::Done(Err(broken(error))),
            }
        }
    }
}

/// Opens the exchange's stream and waits for the response head. A request body is pumped
/// by a task of its own, since it may still be arriving when the response has come.
async fn exchange(
    mut sender: Sender,
    request: Request<RequestBody>,
    slot: StreamSlot,
) -> Result<Response<StreamBody>, GatewayError> {
    let (parts, body) = request.into_parts();
    let head = Request::from_parts(parts, ());
    let end_of_stream = body.is_end_stream();
    let (response, stream) = sender.send_request(head, end_of_stream).map_err(broken)?;
    let mut cancel = None;
    if !end_of_stream {
        let (tx, rx) = oneshot::channel();
        cancel = Some(CancelPump(Some(tx)));
        tokio::spawn(pump(body, stream, rx));
    }
    let response = response.await.map_err(broken)?;
    // Once the response has come the body goes on by itself: the upstream may still want it.
    if let Some(cancel) = cancel {
        cancel.disarm();
    }
    Ok(response.map(|recv| StreamBody {
        recv,
        data_done: false,
        _slot: slot,
    }))
}

fn broken(error: h2::Error) -> GatewayError {
    GatewayError::Upstream {
        kind: UpstreamFailure::Broken,
        source: error.into(),
    }
}

/// Resets the stream of a request body still being pumped when the exchange gives up
/// before the response head has come (a deadline passed, the client left): hyper's server
/// would go on reading the client's body, and the upstream would get it to its end.
struct CancelPump(Option<oneshot::Sender<()>>);

impl CancelPump {
    fn disarm(mut self) {
        self.0 = None;
    }
}

impl Drop for CancelPump {
    fn drop(&mut self) {
        if let Some(tx) = self.0.take() {
            let _ = tx.send(());
        }
    }
}

/// Sends the client's body into the stream, frame by frame: each frame waits until the
/// upstream's flow-control window has room, so a slow upstream slows the client down
/// instead of filling memory. A body that fails (cut off by a limit, broken by the client)
/// resets the stream, so the upstream never takes it as complete.
async fn pump(
    mut body: RequestBody,
    mut stream: SendStream<Bytes>,
    mut cancel: oneshot::Receiver<()>,
) {
    let mut cancel_open = true;
    let outcome = std::future::poll_fn(|cx| {
        // Checked first, so no frame that arrives after the exchange gave up is sent.
        if cancel_open {
            match Pin::new(&mut cancel).poll(cx) {
                Poll::Ready(Ok(())) => return Poll::Ready(Err(h2::Reason::CANCEL)),
                Poll::Ready(Err(_)) => cancel_open = false,
                Poll::Pending => {}
            }
        }
        poll_pump(&mut body, &mut stream, cx)
    })
    .await;
    if let Err(reason) = outcome {
        stream.send_reset(reason);
    }
}

/// One step of [`pump`]: `Ready(Ok)` when the body has been sent to its end, `Ready(Err)`
/// with the reason to reset the stream, `Pending` while waiting for the body or for room.
fn poll_pump(
    body: &mut RequestBody,
    stream: &mut SendStream<Bytes>,
    cx: &mut Context<'_>,
) -> Poll<Result<(), h2::Reason>> {
    loop {
        // Room for at least one byte before the next frame is read: h2 takes the whole
        // frame and sends it as the window opens.
        stream.reserve_capacity(1);
        if stream.capacity() == 0 {
            loop {
                match ready!(stream.poll_capacity(cx)) {
                    Some(Ok(0)) => {}
                    Some(Ok(_)) => break,
                    // The stream was reset or the connection lost: nothing more to send.
                    Some(Err(_)) | None => return Poll::Ready(Ok(())),
                }
            }
        } else if stream.poll_reset(cx).is_ready() {
            // The upstream no longer wants the body (it answered early, or gave up).
            return Poll::Ready(Ok(()));
        }
        let frame = match ready!(Pin::new(&mut *body).poll_frame(cx)) {
            Some(Ok(frame)) => frame,
            Some(Err(_)) => return Poll::Ready(Err(h2::Reason::CANCEL)),
            None => {
                stream.reserve_capacity(0);
                return Poll::Ready(
                    stream
                        .send_data(Bytes::new(), true)
                        .map_err(|_| h2::Reason::CANCEL),
                );
            }
        };
        match frame.into_data() {
            Ok(data) => {
                let end = body.is_end_stream();
                if stream.send_data(data, end).is_err() {
                    return Poll::Ready(Ok(()));
                }
                if end {
                    return Poll::Ready(Ok(()));
                }
            }
            Err(frame) => {
                stream.reserve_capacity(0);
                if let Ok(trailers) = frame.into_trailers() {
                    let _ = stream.send_trailers(trailers);
                }
                return Poll::Ready(Ok(()));
            }
        }
    }
}

/// The response body of a stream on the shared connection, passed on frame by frame. Each
/// frame's bytes are given back to the upstream's window as soon as they are passed on, so
/// the window, not the gateway's memory, holds the upstream back when the client is slow.
pub struct StreamBody {
    recv: RecvStream,
    data_done: bool,
    _slot: StreamSlot,
}

impl Body for StreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if !this.data_done {
            match ready!(this.recv.poll_data(cx)) {
                Some(Ok(data)) => {
                    let _ = this.recv.flow_control().release_capacity(data.len());
                    return Poll::Ready(Some(Ok(Frame::data(data))));
                }
                Some(Err(error)) => return Poll::Ready(Some(Err(error.into()))),
                None => this.data_done = true,
            }
        }
        match ready!(this.recv.poll_trailers(cx)) {
            Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
            Ok(None) => Poll::Ready(None),
            Err(error) => Poll::Ready(Some(Err(error.into()))),
        }
    }

    fn is_end_stream(&self) -> bool {
        self.recv.is_end_stream()
    }
}

impl Shared {
    /// A connection with a stream to spare, or a new one if there is none.
    async fn sender(self: &Arc<Self>) -> Result<Found, ConnectError> {
        match self.current() {
            Current::Found(found) => Ok(found),
            // Boxed: connecting holds large futures (TLS handshake, HTTP/2 preface) that
            // would otherwise enlarge, and be copied with, every exchange's future.
            Current::Missing | Current::Full => Box::pin(self.connect_or_wait()).await,
        }
    }

    /// Opens a connection when one is missing; waits for a stream when every connection
    /// is full and no more may be opened.
    async fn connect_or_wait(self: &Arc<Self>) -> Result<Found, ConnectError> {
        loop {
            let freed = self.freed.notified();
            let mut freed = std::pin::pin!(freed);
            // Registered before looking, so a stream freed in between is not missed.
            freed.as_mut().enable();
            match self.current() {
                Current::Found(found) => return Ok(found),
                Current::Missing => {
                    if let Some(found) = self.connect().await? {
                        return Ok(found);
                    }
                }
                Current::Full => freed.await,
            }
        }
    }

    /// Opens a connection, unless another exchange did while this one waited its turn (or
    /// a stream came free); `None` when the last allowed one was opened meanwhile and is
    /// full.
    ///
    /// Exchanges that waited for an attempt that failed fail with it: trying again one
    /// after another would keep the last of a burst waiting for a `connect_timeout` per
    /// exchange ahead of it.
    async fn connect(self: &Arc<Self>) -> Result<Option<Found>, ConnectError> {
        let failures_before = self.state().failures;
        let _connecting = self.connecting.lock().await;
        // Another exchange may have opened one while this one waited.
        match self.current() {
            Current::Found(found) => return Ok(Some(found)),
            Current::Full => return Ok(None),
            Current::Missing => {}
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
        result.map(Some)
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
        let (sender, connection) = h2::client::Builder::new()
            .initial_connection_window_size(CONNECTION_WINDOW)
            .initial_window_size(STREAM_WINDOW)
            .max_frame_size(MAX_FRAME_SIZE)
            .max_header_list_size(MAX_RESPONSE_HEAD as u32)
            .max_send_buffer_size(MAX_SEND_BUFFER)
            .initial_max_send_streams(INITIAL_MAX_SEND_STREAMS)
            .max_local_error_reset_streams(Some(MAX_LOCAL_ERROR_RESETS))
            .enable_push(false)
            .handshake::<_, Bytes>(TokioIo::new(stream))
            .await
            .map_err(|e| ConnectError {
                kind: UpstreamFailure::Broken,
                source: e.into(),
            })?;
        let streams = Arc::new(Streams {
            open: AtomicUsize::new(0),
            freed: self.freed.clone(),
        });
        let slot = StreamSlot::take(&streams);
        let id = {
            let mut state = self.state();
            state.opened += 1;
            let id = state.opened;
            state.connections.push(Conn {
                sender: sender.clone(),
                id,
                last_used: Instant::now(),
                streams,
            });
            id
        };
        let first_check = Instant::now() + self.idle_timeout;
        tokio::spawn(drive(connection, Arc::downgrade(self), id, first_check));
        Ok(Found::Http2 {
            sender,
            id,
            reused: false,
            slot,
        })
    }

    /// What serves the route now.
    fn current(&self) -> Current {
        let mut state = self.state();
        if state.http1 {
            return Current::Found(Found::Http1);
        }
        let full = state.connections.len() >= MAX_CONNECTIONS;
        let Some(conn) = state.connections.iter_mut().find(|c| c.has_room()) else {
            return if full {
                Current::Full
            } else {
                Current::Missing
            };
        };
        conn.last_used = Instant::now();
        Current::Found(Found::Http2 {
            sender: conn.sender.clone(),
            id: conn.id,
            reused: true,
            slot: StreamSlot::take(&conn.streams),
        })
    }

    /// Stops handing out connection `id`: it refused a request or ended.
    fn retire(&self, id: u64) {
        self.state().connections.retain(|c| c.id != id);
        // Exchanges waiting while every connection was full may open one in its place.
        self.freed.notify_waiters();
    }

    /// Lets connection `id` go if no exchange started on it for the idle timeout; otherwise
    /// says when to look again.
    fn retire_if_idle(&self, id: u64) -> Option<Instant> {
        let mut state = self.state();
        let index = state.connections.iter().position(|c| c.id == id)?;
        let next_check = state.connections[index].last_used + self.idle_timeout;
        if next_check > Instant::now() {
            return Some(next_check);
        }
        state.connections.remove(index);
        None
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        // The state stays consistent whatever panicked while holding it.
        self.state
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

/// Drives one connection until it closes, letting it go once it has been idle too long.
async fn drive<F: Future>(connection: F, shared: Weak<Shared>, id: u64, first_check: Instant) {
    let mut connection = std::pin::pin!(connection);
    let mut check = first_check;
    loop {
        tokio::select! {
            _ = &mut connection => break,
            () = tokio::time::sleep_until(check) => {
                match shared.upgrade().and_then(|shared| shared.retire_if_idle(id)) {
                    Some(next) => check = next,
                    // Let go: driven only until its last stream ends.
                    None => {
                        connection.as_mut().await;
                        break;
                    }
                }
            }
        }
    }
    // Closed (by the upstream, or after its last stream once let go): the next exchange
    // opens a new one.
    if let Some(shared) = shared.upgrade() {
        shared.retire(id);
    }
}
