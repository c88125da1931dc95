//! Closing a client connection without losing the end of what was sent on it.
//!
//! A process that closes a TCP socket with input still unread, or that receives input after
//! closing it, makes the kernel answer with a reset instead of an orderly FIN, and the
//! reset throws away whatever the kernel had not yet delivered to the client: the tail of
//! a download still queued in the socket. Clients routinely send after the gateway's last
//! read: an HTTP/2 client gives flow-control window back (WINDOW_UPDATE) while it reads a
//! large response, so a download in flight when the gateway drains loses its end; an
//! HTTP/1.1 client may already be sending a pipelined request, or the rest of an upload
//! that was answered early.
//!
//! So the gateway gets the socket back from hyper ([`Reclaimable`]) once the HTTP
//! connection is over, closes it for writing (the FIN goes after the last byte), and reads
//! and drops whatever the client still sends ([`close`]) until the client closes its side
//! too, it stays quiet for [`QUIET`], or [`MAX`] has passed. This is nginx's "lingering
//! close", with nginx's default times. Only a connection that ended cleanly lingers; one
//! that ended in a timeout (a slowloris client, a dead peer), a protocol error or a reset
//! is closed at once, so a hostile client cannot hold a socket this way.

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::oneshot;

/// How long the client may stay silent before the socket is closed (nginx's
/// `lingering_timeout`). A client that has read everything closes at once; one still
/// reading sends its next window update well within this.
pub const QUIET: Duration = Duration::from_secs(5);

/// The longest a closing socket is kept, however much the client still sends (nginx's
/// `lingering_time`): a client that keeps uploading into a closed exchange is cut off.
pub const MAX: Duration = Duration::from_secs(30);

/// A client socket that goes back to whoever made it when it is dropped, instead of being
/// closed: hyper owns the connection's I/O while it serves HTTP and drops it when done.
#[derive(Debug)]
pub struct Reclaimable {
    /// Always `Some` until dropped.
    stream: Option<TcpStream>,
    back: Option<oneshot::Sender<TcpStream>>,
}

impl Reclaimable {
    /// Wraps `stream`; the receiver gets it back once the wrapper is dropped.
    pub fn new(stream: TcpStream) -> (Reclaimable, oneshot::Receiver<TcpStream>) {
        let (back, reclaimed) = oneshot::channel();
        let wrapper = Reclaimable {
            stream: Some(stream),
            back: Some(back),
        };
        (wrapper, reclaimed)
    }

    fn stream(&mut self) -> Pin<&mut TcpStream> {
        Pin::new(
            self.stream
                .as_mut()
                .expect("the stream is only taken when dropped"),
        )
    }
}

impl Drop for Reclaimable {
    fn drop(&mut self) {
        if let (Some(stream), Some(back)) = (self.stream.take(), self.back.take()) {
            // If nobody waits for it any more, it is simply closed.
            let _ = back.send(stream);
        }
    }
}

impl AsyncRead for Reclaimable {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_read(cx, buf)
    }
}

impl AsyncWrite for Reclaimable {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream().poll_write(cx, buf)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        self.get_mut().stream().poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.stream.as_ref().is_some_and(|s| s.is_write_vectored())
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        self.get_mut().stream().poll_shutdown(cx)
    }
}

/// Closes a client socket the HTTP connection is done with: FIN after the last byte, then
/// whatever the client still sends is read and dropped until it closes too, is quiet for
/// [`QUIET`], or [`MAX`] has passed.
pub async fn close(mut stream: TcpStream) {
    // Usually done already (hyper shuts the TLS stream down, which shuts the socket down
    // for writing); if the connection ended in an error, this sends the FIN.
    if stream.shutdown().await.is_err() {
        // Not connected any more (the client reset it): nothing can be lost.
        return;
    }
    let _ = tokio::time::timeout(MAX, discard_until_closed(&stream)).await;
}

/// Reads and drops until the client closes, the connection fails, or it is quiet for
/// [`QUIET`].
async fn discard_until_closed(stream: &TcpStream) {
    loop {
        match tokio::time::timeout(QUIET, stream.readable()).await {
            Ok(Ok(())) => {}
            Ok(Err(_)) | Err(_) => return,
        }
        // Not held across an await, so the connection's task does not carry it.
        let mut sink = [0u8; 4096];
        loop {
            match stream.try_read(&mut sink) {
                Ok(0) => return,
                Ok(_) => {}
                Err(error) if error.kind() == io::ErrorKind::WouldBlock => break,
                Err(_) => return,
            }
        }
    }
}
