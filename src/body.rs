//! Body wrappers for the two directions of an exchange. Both stream frame by frame, so
//! hyper's flow control is the backpressure: nothing is ever collected whole.
//!
//! * [`RequestBody`] carries the client's body upstream, counts it and says when it ended
//!   (the upstream response deadline starts then).
//! * [`ResponseBody`] carries the destination's body (or a gateway-made OperationOutcome)
//!   to the client, counts it, and owns the [`ExchangeRecord`] that reports the exchange
//!   when the body is finished or dropped.
//! * [`UpstreamBody`] is the destination's body as it arrives: from a pooled connection or
//!   from a stream of the shared HTTP/2 connection.

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::Either;
use hyper::body::Incoming;
use tokio::sync::oneshot;
use tokio::time::Sleep;

use crate::error::BoxError;
use crate::exchange::{ExchangeRecord, Outcome};
use crate::multiplexed::StreamBody;
use crate::pooled::PooledBody;

/// What the request body wrapper observed, shared with the exchange.
#[derive(Debug, Default)]
pub struct RequestBodyState {
    /// Bytes of the request body read from the client.
    pub received: AtomicU64,
    /// The body went over the route's `max_request_body_bytes` and was cut off (413).
    pub too_large: AtomicBool,
    /// The client stopped sending for `body_idle_timeout` and the body was cut off (408).
    pub idle: AtomicBool,
    /// The client's body was malformed or broke off (bad chunk framing, reset stream): the
    /// upstream request failed because of the client, not the upstream (400).
    pub broken: AtomicBool,
}

/// The client's request body on its way upstream.
pub struct RequestBody {
    inner: Incoming,
    state: Arc<RequestBodyState>,
    /// The route's body size limit.
    limit: Option<u64>,
    /// Fires when the client has sent nothing for `idle_timeout`; reset by every frame.
    idle: Option<Pin<Box<Sleep>>>,
    idle_timeout: Duration,
    /// Fired once when the body has been read to its end.
    ended: Option<oneshot::Sender<()>>,
}

impl RequestBody {
    /// Wraps `inner`; the receiver resolves when the body has been read completely.
    pub fn new(
        inner: Incoming,
        state: Arc<RequestBodyState>,
        limit: Option<u64>,
        idle_timeout: Duration,
    ) -> (RequestBody, oneshot::Receiver<()>) {
        let (tx, rx) = oneshot::channel();
        let empty = inner.is_end_stream();
        let mut body = RequestBody {
            inner,
            state,
            limit,
            // No timer for a body that is empty from the start (GET, Content-Length: 0).
            idle: (!empty).then(|| Box::pin(tokio::time::sleep(idle_timeout))),
            idle_timeout,
            ended: Some(tx),
        };
        // hyper never polls a body that is empty from the start.
        if empty {
            body.signal_end();
        }
        (body, rx)
    }

    fn signal_end(&mut self) {
        self.idle = None;
        if let Some(tx) = self.ended.take() {
            let _ = tx.send(());
        }
    }
}

impl Body for RequestBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(frame) => frame,
            Poll::Pending => {
                if let Some(idle) = &mut this.idle
                    && idle.as_mut().poll(cx).is_ready()
                {
                    this.state.idle.store(true, Ordering::Relaxed);
                    this.idle = None;
                    return Poll::Ready(Some(Err(
                        "the client stopped sending the request body".into()
                    )));
                }
                return Poll::Pending;
            }
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    let total = this
                        .state
                        .received
                        .fetch_add(data.len() as u64, Ordering::Relaxed)
                        + data.len() as u64;
                    if this.limit.is_some_and(|limit| total > limit) {
                        this.state.too_large.store(true, Ordering::Relaxed);
                        this.idle = None;
                        return Poll::Ready(Some(
                            Err("request body over the route's limit".into()),
                        ));
                    }
                }
                if let Some(idle) = &mut this.idle {
                    idle.as_mut()
                        .reset(tokio::time::Instant::now() + this.idle_timeout);
                }
                if this.inner.is_end_stream() {
                    this.signal_end();
                }
            }
            None => this.signal_end(),
            Some(Err(_)) => this.state.broken.store(true, Ordering::Relaxed),
        }
        Poll::Ready(frame.map(|f| f.map_err(BoxError::from)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The destination's response body, whichever way it came: `Left` from a pooled connection
/// (HTTP/1.1 upstreams, and every upstream of a route with `upstream_http2 = false`),
/// `Right` from a stream of the route's shared HTTP/2 connection.
pub type UpstreamBody = Either<PooledBody, StreamBody>;

/// What the client receives.
pub struct ResponseBody {
    source: Source,
    /// `max_exchange_duration`: fires while the body is still streaming.
    deadline: Option<Pin<Box<Sleep>>>,
    record: Box<ExchangeRecord>,
}

enum Source {
    /// The destination's body, passed through frame by frame (data and trailers).
    Upstream(UpstreamBody),
    /// A gateway-made OperationOutcome; `None` once sent.
    Full(Option<Bytes>),
}

impl ResponseBody {
    pub fn upstream(inner: UpstreamBody, record: Box<ExchangeRecord>) -> Self {
        Self::new(Source::Upstream(inner), record)
    }

    pub fn full(bytes: Bytes, record: Box<ExchangeRecord>) -> Self {
        Self::new(Source::Full(Some(bytes)), record)
    }

    fn new(source: Source, mut record: Box<ExchangeRecord>) -> Self {
        let empty = match &source {
            Source::Upstream(inner) => inner.is_end_stream(),
            Source::Full(bytes) => bytes.is_none(),
        };
        // hyper never polls a body that is empty from the start (204, 304, HEAD): it is
        // complete as soon as the response head is written.
        if empty {
            record.outcome = Outcome::Complete;
        }
        let deadline = match &source {
            Source::Upstream(_) => record
                .deadline
                .map(|at| Box::pin(tokio::time::sleep_until(at))),
            Source::Full(_) => None,
        };
        ResponseBody {
            source,
            deadline,
            record,
        }
    }
}

impl Body for ResponseBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let this = &mut *self;
        if let Some(deadline) = &mut this.deadline
            && deadline.as_mut().poll(cx).is_ready()
        {
            // Aborted like an upstream break: the client must not take it as complete.
            this.deadline = None;
            this.record.outcome = Outcome::TimedOut;
            return Poll::Ready(Some(Err(
                "the exchange exceeded max_exchange_duration".into()
            )));
        }
        let frame = match &mut this.source {
            Source::Upstream(inner) => match ready!(Pin::new(inner).poll_frame(cx)) {
                Some(Ok(frame)) => Some(Ok(frame)),
                Some(Err(e)) => {
                    // Returning the error makes hyper abort the client's response: the
                    // HTTP/1.1 connection closes before the final chunk, an HTTP/2 stream is
                    // reset. A truncated body must never look complete.
                    this.record.outcome = Outcome::UpstreamBroke;
                    return Poll::Ready(Some(Err(e)));
                }
                None => None,
            },
            Source::Full(bytes) => bytes.take().map(|b| Ok(Frame::data(b))),
        };
        match &frame {
            Some(Ok(f)) => {
                if let Some(data) = f.data_ref() {
                    this.record.bytes_out += data.len() as u64;
                }
                if this.is_end_stream() {
                    this.record.outcome = Outcome::Complete;
                }
            }
            None => this.record.outcome = Outcome::Complete,
            Some(Err(_)) => {}
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        match &self.source {
            Source::Upstream(inner) => inner.is_end_stream(),
            Source::Full(bytes) => bytes.is_none(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match &self.source {
            Source::Upstream(inner) => inner.size_hint(),
            Source::Full(Some(bytes)) => SizeHint::with_exact(bytes.len() as u64),
            Source::Full(None) => SizeHint::with_exact(0),
        }
    }
}
