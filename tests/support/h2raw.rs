//! Hand-made HTTP/2 frames over TLS (RFC 9113), for the attacks a well-behaved client (the
//! `h2` crate, hyper) refuses to send: frames written without waiting for replies, streams
//! opened over the advertised limit, CONTINUATION floods, content-length that disagrees with
//! the DATA frames, header values with CR/LF/NUL.
//!
//! Writing:
//! * [`PREFACE`] and the frame builders ([`settings`], [`headers`], [`continuation`],
//!   [`data`], [`rst_stream`], [`ping`], [`window_update`]) each return the wire bytes of one
//!   frame, so a test can batch thousands of them into one write.
//! * Header blocks are HPACK (RFC 7541) "literal header field without indexing — new name"
//!   (first byte `0x00`, then the name's length as a 7-bit-prefix integer without Huffman,
//!   the name, the value's length the same way, the value): [`literal`] and
//!   [`request_block`]. This never touches the server's dynamic table and carries any bytes,
//!   including the ones the `http` crate refuses (CR, LF, NUL, upper case).
//!
//! Reading: [`FrameReader`] parses frame headers and payloads; [`Frame`] tells GOAWAY,
//! RST_STREAM, SETTINGS and a response's `:status` apart.
//!
//! About `:status`: a response's HEADERS payload is HPACK-encoded by the server. hyper's
//! `h2` encoder puts `:status` first; a 200 is then usually the single static-table index byte
//! `0x88` (204 = `0x89`, 206 = `0x8a`, 304 = `0x8b`, 400 = `0x8c`, 404 = `0x8d`, 500 =
//! `0x8e`); any other status is a literal with the static name index 8 and a value that is
//! usually Huffman-coded (digits only, decoded here). Once a literal is added to the
//! server's dynamic table, a later response may refer to it by a dynamic index, which this
//! reader cannot resolve; [`RawH2::open`] therefore announces `SETTINGS_HEADER_TABLE_SIZE = 0`
//! so the server's encoder keeps no dynamic table and every `:status` stays decodable.

use std::time::Duration;

use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, ReadHalf, WriteHalf};
use tokio::net::TcpStream;
use tokio_rustls::client::TlsStream;

use super::{Client, PUBLIC_HOST};

/// The client connection preface (RFC 9113 §3.4).
pub const PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

// Frame types (RFC 9113 §6).
pub const DATA: u8 = 0x0;
pub const HEADERS: u8 = 0x1;
pub const RST_STREAM: u8 = 0x3;
pub const SETTINGS: u8 = 0x4;
pub const PING: u8 = 0x6;
pub const GOAWAY: u8 = 0x7;
pub const WINDOW_UPDATE: u8 = 0x8;
pub const CONTINUATION: u8 = 0x9;

// Flags.
pub const END_STREAM: u8 = 0x1;
pub const ACK: u8 = 0x1;
pub const END_HEADERS: u8 = 0x4;
pub const PADDED: u8 = 0x8;
pub const PRIORITY: u8 = 0x20;

// SETTINGS identifiers.
pub const SETTINGS_HEADER_TABLE_SIZE: u16 = 0x1;
pub const SETTINGS_ENABLE_PUSH: u16 = 0x2;
pub const SETTINGS_MAX_CONCURRENT_STREAMS: u16 = 0x3;
pub const SETTINGS_INITIAL_WINDOW_SIZE: u16 = 0x4;
pub const SETTINGS_MAX_FRAME_SIZE: u16 = 0x5;
pub const SETTINGS_MAX_HEADER_LIST_SIZE: u16 = 0x6;

// Error codes (RFC 9113 §7).
pub const NO_ERROR: u32 = 0x0;
pub const PROTOCOL_ERROR: u32 = 0x1;
pub const INTERNAL_ERROR: u32 = 0x2;
pub const FLOW_CONTROL_ERROR: u32 = 0x3;
pub const STREAM_CLOSED: u32 = 0x5;
pub const FRAME_SIZE_ERROR: u32 = 0x6;
pub const REFUSED_STREAM: u32 = 0x7;
pub const CANCEL: u32 = 0x8;
pub const COMPRESSION_ERROR: u32 = 0x9;
pub const ENHANCE_YOUR_CALM: u32 = 0xb;

/// The name of an error code, for messages.
pub fn reason_name(code: u32) -> &'static str {
    match code {
        0x0 => "NO_ERROR",
        0x1 => "PROTOCOL_ERROR",
        0x2 => "INTERNAL_ERROR",
        0x3 => "FLOW_CONTROL_ERROR",
        0x4 => "SETTINGS_TIMEOUT",
        0x5 => "STREAM_CLOSED",
        0x6 => "FRAME_SIZE_ERROR",
        0x7 => "REFUSED_STREAM",
        0x8 => "CANCEL",
        0x9 => "COMPRESSION_ERROR",
        0xa => "CONNECT_ERROR",
        0xb => "ENHANCE_YOUR_CALM",
        0xc => "INADEQUATE_SECURITY",
        0xd => "HTTP_1_1_REQUIRED",
        _ => "(unknown)",
    }
}

/// One frame's wire bytes: the 9-byte header (24-bit length, type, flags, 31-bit stream id)
/// and the payload.
pub fn frame(kind: u8, flags: u8, stream: u32, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(9 + payload.len());
    push_frame(&mut out, kind, flags, stream, payload);
    out
}

/// Appends one frame to `out` (for batching many frames into one write).
pub fn push_frame(out: &mut Vec<u8>, kind: u8, flags: u8, stream: u32, payload: &[u8]) {
    let len = payload.len();
    assert!(len < 1 << 24, "frame payload too long");
    out.extend_from_slice(&[(len >> 16) as u8, (len >> 8) as u8, len as u8, kind, flags]);
    out.extend_from_slice(&(stream & 0x7fff_ffff).to_be_bytes());
    out.extend_from_slice(payload);
}

pub fn settings(values: &[(u16, u32)]) -> Vec<u8> {
    let mut payload = Vec::with_capacity(values.len() * 6);
    for (id, value) in values {
        payload.extend_from_slice(&id.to_be_bytes());
        payload.extend_from_slice(&value.to_be_bytes());
    }
    frame(SETTINGS, 0, 0, &payload)
}

pub fn settings_ack() -> Vec<u8> {
    frame(SETTINGS, ACK, 0, &[])
}

pub fn ping(opaque: [u8; 8]) -> Vec<u8> {
    frame(PING, 0, 0, &opaque)
}

pub fn rst_stream(stream: u32, code: u32) -> Vec<u8> {
    frame(RST_STREAM, 0, stream, &code.to_be_bytes())
}

pub fn window_update(stream: u32, increment: u32) -> Vec<u8> {
    frame(WINDOW_UPDATE, 0, stream, &increment.to_be_bytes())
}

pub fn data(stream: u32, end_stream: bool, bytes: &[u8]) -> Vec<u8> {
    frame(DATA, if end_stream { END_STREAM } else { 0 }, stream, bytes)
}

/// A HEADERS frame carrying `block` (a header block fragment).
pub fn headers(stream: u32, end_stream: bool, end_headers: bool, block: &[u8]) -> Vec<u8> {
    let flags = if end_stream { END_STREAM } else { 0 } | if end_headers { END_HEADERS } else { 0 };
    frame(HEADERS, flags, stream, block)
}

pub fn continuation(stream: u32, end_headers: bool, block: &[u8]) -> Vec<u8> {
    frame(
        CONTINUATION,
        if end_headers { END_HEADERS } else { 0 },
        stream,
        block,
    )
}

/// An HPACK integer (RFC 7541 §5.1) with an `prefix_bits`-bit prefix; `first` carries the
/// representation's leading bits.
pub fn hpack_int(out: &mut Vec<u8>, first: u8, prefix_bits: u8, mut value: usize) {
    let max = (1usize << prefix_bits) - 1;
    if value < max {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max as u8);
    value -= max;
    while value >= 128 {
        out.push((value % 128) as u8 | 0x80);
        value /= 128;
    }
    out.push(value as u8);
}

/// Appends "literal header field without indexing — new name" (RFC 7541 §6.2.2): `0x00`,
/// name length (7-bit prefix, H = 0), name, value length (7-bit prefix, H = 0), value.
pub fn push_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    hpack_int(out, 0x00, 7, name.len());
    out.extend_from_slice(name);
    hpack_int(out, 0x00, 7, value.len());
    out.extend_from_slice(value);
}

pub fn literal(name: &[u8], value: &[u8]) -> Vec<u8> {
    let mut out = Vec::new();
    push_literal(&mut out, name, value);
    out
}

/// A request's header block: `:method`, `:scheme https`, `:authority` [`PUBLIC_HOST`],
/// `:path`, then `extra` fields, all as literals without indexing.
pub fn request_block(method: &str, path: &str, extra: &[(&[u8], &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    push_literal(&mut out, b":method", method.as_bytes());
    push_literal(&mut out, b":scheme", b"https");
    push_literal(&mut out, b":authority", PUBLIC_HOST.as_bytes());
    push_literal(&mut out, b":path", path.as_bytes());
    for (name, value) in extra {
        push_literal(&mut out, name, value);
    }
    out
}

/// One frame as received.
#[derive(Debug, Clone)]
pub struct Frame {
    pub kind: u8,
    pub flags: u8,
    pub stream: u32,
    pub payload: Vec<u8>,
}

impl Frame {
    /// `(last_stream_id, error_code)` of a GOAWAY.
    pub fn goaway(&self) -> Option<(u32, u32)> {
        (self.kind == GOAWAY && self.payload.len() >= 8).then(|| {
            (
                u32::from_be_bytes(self.payload[0..4].try_into().unwrap()) & 0x7fff_ffff,
                u32::from_be_bytes(self.payload[4..8].try_into().unwrap()),
            )
        })
    }

    /// A GOAWAY's debug data, as text.
    pub fn goaway_debug(&self) -> String {
        if self.kind == GOAWAY && self.payload.len() > 8 {
            String::from_utf8_lossy(&self.payload[8..]).into_owned()
        } else {
            String::new()
        }
    }

    /// The error code of a RST_STREAM.
    pub fn rst_code(&self) -> Option<u32> {
        (self.kind == RST_STREAM && self.payload.len() == 4)
            .then(|| u32::from_be_bytes(self.payload[..4].try_into().unwrap()))
    }

    /// The parameters of a (non-ACK) SETTINGS frame.
    pub fn settings(&self) -> Option<Vec<(u16, u32)>> {
        (self.kind == SETTINGS && self.flags & ACK == 0).then(|| {
            self.payload
                .chunks_exact(6)
                .map(|c| {
                    (
                        u16::from_be_bytes([c[0], c[1]]),
                        u32::from_be_bytes([c[2], c[3], c[4], c[5]]),
                    )
                })
                .collect()
        })
    }

    pub fn end_stream(&self) -> bool {
        (self.kind == DATA || self.kind == HEADERS) && self.flags & END_STREAM != 0
    }

    /// The `:status` of a response HEADERS frame, when it is the first field of the block
    /// and encoded as a static index or a literal (see the module documentation).
    pub fn status(&self) -> Option<u16> {
        if self.kind != HEADERS {
            return None;
        }
        let mut block = &self.payload[..];
        if self.flags & PADDED != 0 {
            let pad = *block.first()? as usize;
            block = block.get(1..block.len().checked_sub(pad)?)?;
        }
        if self.flags & PRIORITY != 0 {
            block = block.get(5..)?;
        }
        decode_status(block)
    }

    pub fn describe(&self) -> String {
        match self.kind {
            GOAWAY => {
                let (last, code) = self.goaway().unwrap_or((0, u32::MAX));
                format!(
                    "GOAWAY(last_stream={last}, {}, {:?})",
                    reason_name(code),
                    self.goaway_debug()
                )
            }
            RST_STREAM => format!(
                "RST_STREAM(stream={}, {})",
                self.stream,
                reason_name(self.rst_code().unwrap_or(u32::MAX))
            ),
            HEADERS => format!(
                "HEADERS(stream={}, status={:?}, end_stream={})",
                self.stream,
                self.status(),
                self.end_stream()
            ),
            kind => format!(
                "frame(type={kind}, flags={:#x}, stream={}, {} bytes)",
                self.flags,
                self.stream,
                self.payload.len()
            ),
        }
    }
}

/// `:status` from the start of a response header block.
fn decode_status(mut block: &[u8]) -> Option<u16> {
    // Dynamic table size updates (001xxxxx) may come first.
    while let Some(&b) = block.first() {
        if b & 0xe0 != 0x20 {
            break;
        }
        let (_, used) = read_int(block, 5)?;
        block = &block[used..];
    }
    let first = *block.first()?;
    if first & 0x80 != 0 {
        let (index, _) = read_int(block, 7)?;
        return match index {
            8 => Some(200),
            9 => Some(204),
            10 => Some(206),
            11 => Some(304),
            12 => Some(400),
            13 => Some(404),
            14 => Some(500),
            _ => None,
        };
    }
    // A literal: with incremental indexing (01xxxxxx, 6-bit index) or without / never
    // indexed (0000xxxx / 0001xxxx, 4-bit index); the name must be static index 8..14.
    let prefix = if first & 0xc0 == 0x40 { 6 } else { 4 };
    let (index, used) = read_int(block, prefix)?;
    if !(8..=14).contains(&index) {
        return None;
    }
    let rest = &block[used..];
    let huffman = *rest.first()? & 0x80 != 0;
    let (len, used) = read_int(rest, 7)?;
    let value = rest.get(used..used + len)?;
    let text = if huffman {
        huffman_digits(value)?
    } else {
        String::from_utf8(value.to_vec()).ok()?
    };
    text.parse().ok()
}

/// An HPACK integer with a `prefix_bits`-bit prefix: `(value, bytes used)`.
fn read_int(bytes: &[u8], prefix_bits: u8) -> Option<(usize, usize)> {
    let max = (1usize << prefix_bits) - 1;
    let mut value = (*bytes.first()? as usize) & max;
    if value < max {
        return Some((value, 1));
    }
    let mut shift = 0;
    for (i, b) in bytes.iter().enumerate().skip(1) {
        value += ((b & 0x7f) as usize) << shift;
        if b & 0x80 == 0 {
            return Some((value, i + 1));
        }
        shift += 7;
        if shift > 28 {
            return None;
        }
    }
    None
}

/// Decodes a Huffman-coded string made only of the digits 0-9 (RFC 7541 Appendix B:
/// '0' 00000, '1' 00001, '2' 00010, '3'..'9' 011001..011111), with all-ones padding.
fn huffman_digits(bytes: &[u8]) -> Option<String> {
    let bits: Vec<u8> = bytes
        .iter()
        .flat_map(|b| (0..8).rev().map(move |i| (b >> i) & 1))
        .collect();
    let mut out = String::new();
    let mut i = 0;
    let take = |i: usize, n: usize| -> Option<u32> {
        let s = bits.get(i..i + n)?;
        Some(s.iter().fold(0u32, |acc, b| acc << 1 | *b as u32))
    };
    while i < bits.len() {
        // Padding: fewer than 8 remaining bits, all ones.
        if bits.len() - i < 8 && bits[i..].iter().all(|b| *b == 1) {
            break;
        }
        if let Some(c @ 0..=2) = take(i, 5) {
            out.push(char::from(b'0' + c as u8));
            i += 5;
            continue;
        }
        match take(i, 6)? {
            c @ 0b011001..=0b011111 => {
                out.push(char::from(b'3' + (c - 0b011001) as u8));
                i += 6;
            }
            _ => return None,
        }
    }
    Some(out)
}

/// Reads frames from one side of a connection.
pub struct FrameReader<R> {
    io: R,
    buf: Vec<u8>,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(io: R) -> Self {
        FrameReader {
            io,
            buf: Vec::new(),
        }
    }

    /// The next frame; `None` when the connection ended (closed, reset or TLS error).
    pub async fn next(&mut self) -> Option<Frame> {
        loop {
            if self.buf.len() >= 9 {
                let len = (self.buf[0] as usize) << 16
                    | (self.buf[1] as usize) << 8
                    | self.buf[2] as usize;
                if self.buf.len() >= 9 + len {
                    let frame = Frame {
                        kind: self.buf[3],
                        flags: self.buf[4],
                        stream: u32::from_be_bytes(self.buf[5..9].try_into().unwrap())
                            & 0x7fff_ffff,
                        payload: self.buf[9..9 + len].to_vec(),
                    };
                    self.buf.drain(..9 + len);
                    return Some(frame);
                }
            }
            let mut chunk = [0u8; 16384];
            match self.io.read(&mut chunk).await {
                Ok(0) | Err(_) => return None,
                Ok(n) => self.buf.extend_from_slice(&chunk[..n]),
            }
        }
    }

    /// The next frame, or `None` if the connection ended or nothing came within `wait`.
    pub async fn next_within(&mut self, wait: Duration) -> Option<Frame> {
        tokio::time::timeout(wait, self.next()).await.ok().flatten()
    }
}

/// What one connection showed, gathered by [`FrameReader::collect_until_closed`].
#[derive(Debug, Default, Clone)]
pub struct Seen {
    pub goaway: Option<(u32, u32)>,
    pub goaway_debug: String,
    /// `(stream, error code)` of every RST_STREAM.
    pub resets: Vec<(u32, u32)>,
    /// `(stream, :status if decodable)` of every response HEADERS.
    pub responses: Vec<(u32, Option<u16>)>,
    /// The connection ended (EOF or error), as opposed to the wait running out.
    pub closed: bool,
    pub frames: usize,
}

impl Seen {
    pub fn record(&mut self, frame: &Frame) {
        self.frames += 1;
        if let Some(g) = frame.goaway() {
            self.goaway = Some(g);
            self.goaway_debug = frame.goaway_debug();
        }
        if let Some(code) = frame.rst_code() {
            self.resets.push((frame.stream, code));
        }
        if frame.kind == HEADERS {
            self.responses.push((frame.stream, frame.status()));
        }
    }

    pub fn describe(&self) -> String {
        format!(
            "goaway={:?} {:?}, {} resets ({:?}…), {} responses ({:?}…), closed={}, {} frames",
            self.goaway.map(|(l, c)| (l, reason_name(c))),
            self.goaway_debug,
            self.resets.len(),
            self.resets
                .iter()
                .take(5)
                .map(|(s, c)| (*s, reason_name(*c)))
                .collect::<Vec<_>>(),
            self.responses.len(),
            self.responses.iter().take(5).collect::<Vec<_>>(),
            self.closed,
            self.frames
        )
    }
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    /// Reads and records frames until the connection ends or `quiet` passes without a frame
    /// (or `total` has passed overall).
    pub async fn collect_until_closed(&mut self, quiet: Duration, total: Duration) -> Seen {
        let mut seen = Seen::default();
        let deadline = tokio::time::Instant::now() + total;
        loop {
            match tokio::time::timeout_at(deadline, tokio::time::timeout(quiet, self.next())).await
            {
                Ok(Ok(Some(frame))) => seen.record(&frame),
                Ok(Ok(None)) => {
                    seen.closed = true;
                    return seen;
                }
                Ok(Err(_)) | Err(_) => return seen,
            }
        }
    }
}

/// A raw HTTP/2 connection over TLS (ALPN `h2`) to the gateway, split so that a test can
/// keep writing while a task reads.
pub struct RawH2 {
    pub reader: FrameReader<ReadHalf<TlsStream<TcpStream>>>,
    pub writer: WriteHalf<TlsStream<TcpStream>>,
    /// The server's first SETTINGS.
    pub server_settings: Vec<(u16, u32)>,
}

impl RawH2 {
    /// TLS with ALPN `h2`, the preface, our SETTINGS (`HEADER_TABLE_SIZE = 0`,
    /// `ENABLE_PUSH = 0`, `INITIAL_WINDOW_SIZE` 1 MiB) and a connection WINDOW_UPDATE; then
    /// reads up to the server's SETTINGS and acknowledges them.
    pub async fn open(client: &Client) -> RawH2 {
        let tls = client
            .tls(Some(PUBLIC_HOST), &[b"h2"])
            .await
            .expect("TLS handshake with the gateway");
        Self::over(tls).await
    }

    /// Like [`RawH2::open`], over a TLS connection the test made (ALPN `h2`).
    pub async fn over(tls: TlsStream<TcpStream>) -> RawH2 {
        assert_eq!(
            tls.get_ref().1.alpn_protocol(),
            Some(&b"h2"[..]),
            "the gateway did not choose h2"
        );
        let (read, mut writer) = tokio::io::split(tls);
        let mut hello = PREFACE.to_vec();
        hello.extend(settings(&[
            (SETTINGS_HEADER_TABLE_SIZE, 0),
            (SETTINGS_ENABLE_PUSH, 0),
            (SETTINGS_INITIAL_WINDOW_SIZE, 1 << 20),
        ]));
        hello.extend(window_update(0, 1 << 24));
        writer.write_all(&hello).await.expect("writing the preface");
        writer.flush().await.unwrap();
        let mut reader = FrameReader::new(read);
        let server_settings = loop {
            let frame = super::bounded("the server's SETTINGS", reader.next())
                .await
                .expect("the gateway closed before its SETTINGS");
            if let Some(s) = frame.settings() {
                break s;
            }
        };
        writer.write_all(&settings_ack()).await.unwrap();
        writer.flush().await.unwrap();
        RawH2 {
            reader,
            writer,
            server_settings,
        }
    }

    /// A value of the server's SETTINGS, if it sent one.
    pub fn server_setting(&self, id: u16) -> Option<u32> {
        self.server_settings
            .iter()
            .rev()
            .find(|(i, _)| *i == id)
            .map(|(_, v)| *v)
    }

    /// Writes `bytes` and flushes; `false` if the connection is gone.
    pub async fn send(&mut self, bytes: &[u8]) -> bool {
        self.writer.write_all(bytes).await.is_ok() && self.writer.flush().await.is_ok()
    }
}

/// Writes `bytes` and flushes on any writer; `false` if the connection is gone.
pub async fn write_all<W: AsyncWrite + Unpin>(w: &mut W, bytes: &[u8]) -> bool {
    w.write_all(bytes).await.is_ok() && w.flush().await.is_ok()
}

/// How one stream (and its connection) ended, as the client saw it.
#[derive(Debug, Default, Clone)]
pub struct StreamOutcome {
    /// `:status` of the response HEADERS, if one came and was decodable.
    pub status: Option<u16>,
    /// A response HEADERS came (decodable or not).
    pub responded: bool,
    /// The error code of a RST_STREAM on the stream.
    pub reset: Option<u32>,
    /// `(last_stream_id, error_code)` of a GOAWAY.
    pub goaway: Option<(u32, u32)>,
    /// The connection ended before the stream did.
    pub closed: bool,
    /// The stream ended normally (END_STREAM received).
    pub ended: bool,
    pub frames: Vec<String>,
}

impl StreamOutcome {
    /// The stream was refused: reset, 4xx/5xx answer, GOAWAY or connection closed, and no
    /// 2xx answer.
    pub fn refused(&self) -> bool {
        !self.status.is_some_and(|s| (200..300).contains(&s))
            && (self.reset.is_some()
                || self.status.is_some_and(|s| s >= 400)
                || self.goaway.is_some()
                || self.closed)
    }
}

impl RawH2 {
    /// Reads (bounded by [`super::TIMEOUT`]) until `stream` is reset or ends, or the
    /// connection goes away.
    pub async fn until_stream_ends(&mut self, stream: u32) -> StreamOutcome {
        let mut out = StreamOutcome::default();
        let reader = &mut self.reader;
        let read = async {
            loop {
                let Some(frame) = reader.next().await else {
                    out.closed = true;
                    return;
                };
                out.frames.push(frame.describe());
                if let Some(g) = frame.goaway() {
                    out.goaway = Some(g);
                    // Streams up to last_stream_id may still finish; others never will.
                    if g.0 < stream {
                        return;
                    }
                }
                if frame.stream != stream {
                    continue;
                }
                if let Some(code) = frame.rst_code() {
                    out.reset = Some(code);
                    return;
                }
                if frame.kind == HEADERS && !out.responded {
                    out.responded = true;
                    out.status = frame.status();
                }
                if frame.end_stream() {
                    out.ended = true;
                    return;
                }
            }
        };
        if tokio::time::timeout(super::TIMEOUT, read).await.is_err() {
            panic!(
                "stream {stream} neither ended nor was reset within {:?}: {:?}",
                super::TIMEOUT,
                out.frames
            );
        }
        out
    }
}
