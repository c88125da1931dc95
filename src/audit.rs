//! The audit trail: one FHIR R4 AuditEvent per exchange (and one per refused TLS
//! handshake), one JSON line each, chained with an HMAC so that a changed, removed,
//! inserted or reordered line is detected (`fhirgate audit verify`).
//!
//! * **Shape** — after IHE Basic Audit Log Patterns (BALP) for RESTful activity: type
//!   `rest`, subtype the FHIR interaction, action C/R/U/D/E, UTC `recorded` with
//!   milliseconds, the client and the gateway as agents, the public and private paths, the
//!   route and the request id as entities.
//! * **Never a token** — a bearer or DPoP token appears only as a keyed fingerprint
//!   (HMAC-SHA-256, truncated), so sessions can be correlated without the token.
//! * **Tamper evidence** — each line ends with `"chain":"HEX"` where
//!   `chain = HMAC(key, previous chain || the line's canonical bytes)`; the canonical bytes
//!   are the line without its chain field. A restart continues from the file's last line.
//! * **Nothing lost** — records go through a queue to a writer thread; new exchanges wait
//!   while the queue is full rather than records being dropped; shutdown writes and syncs
//!   everything queued. When the sink cannot be written, new exchanges are refused with 503
//!   (`on_failure = "refuse"`, the default) until it recovers.

use std::fs::{File, OpenOptions};
use std::io::{self, Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, mpsc};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use base64::Engine as _;
use hmac::{Hmac, KeyInit, Mac};
use serde_json::{Value, json};
use sha2::Sha256;

use crate::config::{AuditConfig, AuditSink, FileRef, FsyncPolicy, OnAuditFailure};
use crate::exchange::Outcome;

type HmacSha256 = Hmac<Sha256>;

/// Records waiting to be written before new exchanges are made to wait.
const QUEUE_CAPACITY: usize = 4096;
/// `fsync = "interval"`: the longest a written record stays unsynced.
const SYNC_INTERVAL: Duration = Duration::from_millis(100);
/// How often a failed sink is retried.
const RETRY_INTERVAL: Duration = Duration::from_secs(1);
/// The chain value before the first record.
const GENESIS: [u8; 32] = [0; 32];
/// What precedes the chain value at the end of every line.
const CHAIN_FIELD: &str = ",\"chain\":\"";

/// Why the audit trail could not start.
#[derive(Debug, thiserror::Error)]
pub enum AuditError {
    #[error("{}: audit.key_file: {}: cannot read the key: {source}", config.display(), path.display())]
    ReadKey {
        config: PathBuf,
        path: PathBuf,
        source: io::Error,
    },
    #[error("{}: audit.key_file: {}: the key has {len} bytes; it needs at least 32 (create one with `head -c 32 /dev/urandom > audit.key`)", config.display(), path.display())]
    ShortKey {
        config: PathBuf,
        path: PathBuf,
        len: usize,
    },
    #[error("audit.path: {}: cannot open for appending: {source}", path.display())]
    Open { path: PathBuf, source: io::Error },
    #[error("audit.path: {}: cannot read the last record to continue the chain: {source}", path.display())]
    Tail { path: PathBuf, source: io::Error },
}

/// The secret that keys the chain and token fingerprints.
#[derive(Clone)]
pub struct AuditKey(Arc<[u8]>);

impl std::fmt::Debug for AuditKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("AuditKey(…)") // never the key
    }
}

impl AuditKey {
    /// The key file's raw bytes; at least 32 of them.
    pub fn load(config_file: &Path, file: &FileRef) -> Result<AuditKey, AuditError> {
        let bytes = std::fs::read(&file.path).map_err(|source| AuditError::ReadKey {
            config: config_file.to_path_buf(),
            path: file.path.clone(),
            source,
        })?;
        Self::from_bytes(bytes).map_err(|len| AuditError::ShortKey {
            config: config_file.to_path_buf(),
            path: file.path.clone(),
            len,
        })
    }

    /// A key from raw bytes, or the length when it is too short.
    pub fn from_bytes(bytes: Vec<u8>) -> Result<AuditKey, usize> {
        if bytes.len() < 32 {
            return Err(bytes.len());
        }
        Ok(AuditKey(bytes.into()))
    }

    fn mac(&self) -> HmacSha256 {
        <HmacSha256 as KeyInit>::new_from_slice(&self.0).expect("HMAC takes keys of any length")
    }

    /// `HMAC(key, previous || canonical)`.
    pub fn chain(&self, previous: &[u8; 32], canonical: &[u8]) -> [u8; 32] {
        let mut mac = self.mac();
        mac.update(previous);
        mac.update(canonical);
        mac.finalize().into_bytes().into()
    }

    /// A keyed fingerprint of a token: correlates sessions, reveals nothing of the token.
    pub fn fingerprint(&self, token: &[u8]) -> String {
        let mut mac = self.mac();
        mac.update(b"fhirgate token fingerprint\0");
        mac.update(token);
        hex(&mac.finalize().into_bytes()[..12])
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn unhex32(text: &str) -> Option<[u8; 32]> {
    if text.len() != 64 {
        return None;
    }
    let mut out = [0u8; 32];
    for (i, chunk) in text.as_bytes().chunks(2).enumerate() {
        out[i] = u8::from_str_radix(std::str::from_utf8(chunk).ok()?, 16).ok()?;
    }
    Some(out)
}

/// What the proxy knows about one exchange, for its AuditEvent.
#[derive(Debug)]
pub struct ExchangeAudit {
    /// Start and end, Unix milliseconds.
    pub started_ms: i64,
    pub ended_ms: i64,
    pub method: String,
    pub public_path: String,
    /// The path sent upstream; `None` when the gateway answered itself.
    pub private_path: Option<String>,
    /// The path below the route's public base, which names the FHIR interaction.
    pub below_base: Option<String>,
    /// Present only with `record_query = true`.
    pub query: Option<String>,
    pub route: Option<String>,
    pub request_id: String,
    pub status: u16,
    pub bytes_in: u64,
    pub bytes_out: u64,
    pub peer: std::net::IpAddr,
    pub outcome: Outcome,
    /// `responded`, or why the gateway answered itself.
    pub upstream: &'static str,
    pub token_fingerprint: Option<String>,
}

/// A refused TLS handshake: attacks and misconfigured clients become visible.
#[derive(Debug)]
pub struct SecurityAudit {
    pub at_ms: i64,
    pub peer: std::net::SocketAddr,
    pub listener: String,
    pub sni: Option<String>,
    pub reason: String,
}

enum Message {
    Exchange(Box<ExchangeAudit>),
    Security(Box<SecurityAudit>),
    Reopen,
    Close,
}

/// The handle the gateway records through. Cheap to clone.
#[derive(Clone)]
pub struct Auditor {
    inner: Arc<Shared>,
}

struct Shared {
    tx: Mutex<mpsc::Sender<Message>>,
    key: AuditKey,
    source: String,
    record_query: bool,
    on_failure: OnAuditFailure,
    /// Records sent but not yet written.
    depth: AtomicUsize,
    /// False while the sink cannot be written.
    healthy: AtomicBool,
    /// Set by `close`: a failing sink is not retried for ever at exit.
    closing: AtomicBool,
    drained: tokio::sync::Notify,
    writer: Mutex<Option<JoinHandle<()>>>,
}

impl std::fmt::Debug for Auditor {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Auditor")
            .field("source", &self.inner.source)
            .finish_non_exhaustive()
    }
}

impl Auditor {
    /// Opens the sink (continuing the chain of an existing file) and starts the writer.
    pub fn start(config_file: &Path, config: &AuditConfig) -> Result<Auditor, AuditError> {
        let key = AuditKey::load(config_file, &config.key_file)?;
        let sink = Sink::open(&config.sink)?;
        let previous = match &config.sink {
            AuditSink::File(path) => last_chain(path).map_err(|source| AuditError::Tail {
                path: path.clone(),
                source,
            })?,
            AuditSink::Stdout => GENESIS,
        };
        let (tx, rx) = mpsc::channel();
        let shared = Arc::new(Shared {
            tx: Mutex::new(tx),
            key: key.clone(),
            source: config.source.clone(),
            record_query: config.record_query,
            on_failure: config.on_failure,
            depth: AtomicUsize::new(0),
            healthy: AtomicBool::new(true),
            closing: AtomicBool::new(false),
            drained: tokio::sync::Notify::new(),
            writer: Mutex::new(None),
        });
        let writer = Writer {
            rx,
            sink,
            key,
            previous,
            fsync: config.fsync,
            shared: shared.clone(),
            target: config.sink.clone(),
        };
        let handle = std::thread::Builder::new()
            .name("fhirgate-audit".into())
            .spawn(move || writer.run())
            .map_err(|source| AuditError::Open {
                path: PathBuf::from("(writer thread)"),
                source,
            })?;
        *shared.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(handle);
        Ok(Auditor { inner: shared })
    }

    /// Whether query strings go into the record.
    pub fn records_query(&self) -> bool {
        self.inner.record_query
    }

    /// The keyed fingerprint of a token.
    pub fn fingerprint(&self, token: &[u8]) -> String {
        self.inner.key.fingerprint(token)
    }

    /// Records waiting to be written.
    pub fn queue_depth(&self) -> usize {
        self.inner.depth.load(Ordering::Relaxed)
    }

    /// Whether the sink is being written.
    pub fn is_healthy(&self) -> bool {
        self.inner.healthy.load(Ordering::Relaxed)
    }

    /// Called before an exchange starts: `false` means refuse it (the sink is failing and
    /// the policy is `refuse`). Waits while the queue is full, so records are never dropped.
    pub async fn admit(&self) -> bool {
        if !self.is_healthy() && self.inner.on_failure == OnAuditFailure::Refuse {
            return false;
        }
        while self.queue_depth() >= QUEUE_CAPACITY {
            // Bounded wait per round, so a missed wake-up costs at most 10 ms.
            let _ = tokio::time::timeout(Duration::from_millis(10), self.inner.drained.notified())
                .await;
        }
        true
    }

    fn send(&self, message: Message) {
        let counted = matches!(message, Message::Exchange(_) | Message::Security(_));
        if counted {
            self.inner.depth.fetch_add(1, Ordering::Relaxed);
        }
        let sent = self
            .inner
            .tx
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .send(message);
        if sent.is_err() && counted {
            self.inner.depth.fetch_sub(1, Ordering::Relaxed);
            tracing::error!(target: "fhirgate::audit", "audit record after the writer stopped; not written");
        }
    }

    /// Queues the record of an exchange. Never blocks, never drops.
    pub fn exchange(&self, mut record: ExchangeAudit) {
        if !self.inner.record_query {
            record.query = None;
        }
        self.send(Message::Exchange(Box::new(record)));
    }

    /// Queues the record of a refused TLS handshake.
    pub fn security(&self, record: SecurityAudit) {
        self.send(Message::Security(Box::new(record)));
    }

    /// Reopens the file (after logrotate moved it), continuing the chain.
    pub fn reopen(&self) {
        self.send(Message::Reopen);
    }

    /// Writes and syncs everything queued, then stops the writer. Later records are refused.
    pub async fn close(&self) {
        self.inner.closing.store(true, Ordering::Relaxed);
        self.send(Message::Close);
        let handle = self
            .inner
            .writer
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .take();
        if let Some(handle) = handle {
            let _ = tokio::task::spawn_blocking(move || handle.join()).await;
        }
    }
}

/// An open audit destination.
enum Sink {
    File(File),
    Stdout,
}

impl Sink {
    fn open(target: &AuditSink) -> Result<Sink, AuditError> {
        match target {
            AuditSink::Stdout => Ok(Sink::Stdout),
            AuditSink::File(path) => {
                open_append(path)
                    .map(Sink::File)
                    .map_err(|source| AuditError::Open {
                        path: path.clone(),
                        source,
                    })
            }
        }
    }

    fn write_all(&mut self, bytes: &[u8]) -> io::Result<()> {
        match self {
            Sink::File(f) => f.write_all(bytes),
            Sink::Stdout => {
                let mut out = io::stdout().lock();
                out.write_all(bytes)?;
                out.flush()
            }
        }
    }

    fn sync(&mut self) -> io::Result<()> {
        match self {
            Sink::File(f) => f.sync_data(),
            Sink::Stdout => Ok(()),
        }
    }
}

fn open_append(path: &Path) -> io::Result<File> {
    let mut options = OpenOptions::new();
    options.create(true).append(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt;
        // Audit records are for the operator's eyes only.
        options.mode(0o600);
    }
    options.open(path)
}

/// The chain value of the last complete record in `path`, or the genesis value.
fn last_chain(path: &Path) -> io::Result<[u8; 32]> {
    let mut file = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(GENESIS),
        Err(e) => return Err(e),
    };
    let metadata = file.metadata()?;
    if !metadata.is_file() {
        // A pipe or device (/dev/stdout, a FIFO to a collector) has no past to continue.
        return Ok(GENESIS);
    }
    // Records are a few KiB; the last 1 MiB surely holds the last complete one.
    const TAIL: u64 = 1 << 20;
    file.seek(SeekFrom::Start(metadata.len().saturating_sub(TAIL)))?;
    let mut tail = Vec::new();
    file.take(TAIL).read_to_end(&mut tail)?;
    let text = String::from_utf8_lossy(&tail);
    Ok(text
        .lines()
        .rev()
        .find_map(|line| split_chain(line).map(|(_, chain)| chain))
        .unwrap_or(GENESIS))
}

/// Splits a line into its canonical bytes and chain value.
fn split_chain(line: &str) -> Option<(String, [u8; 32])> {
    let at = line.rfind(CHAIN_FIELD)?;
    let hex_part = line[at + CHAIN_FIELD.len()..].strip_suffix("\"}")?;
    let chain = unhex32(hex_part)?;
    Some((format!("{}}}", &line[..at]), chain))
}

/// The writer thread: the only place that touches the sink.
struct Writer {
    rx: mpsc::Receiver<Message>,
    sink: Sink,
    key: AuditKey,
    previous: [u8; 32],
    fsync: FsyncPolicy,
    shared: Arc<Shared>,
    target: AuditSink,
}

impl Writer {
    fn run(mut self) {
        let mut last_sync = Instant::now();
        let mut unsynced = false;
        loop {
            let message = match self.rx.recv_timeout(SYNC_INTERVAL) {
                Ok(message) => message,
                Err(mpsc::RecvTimeoutError::Timeout) => {
                    if unsynced {
                        self.sync();
                        unsynced = false;
                        last_sync = Instant::now();
                    }
                    continue;
                }
                Err(mpsc::RecvTimeoutError::Disconnected) => break,
            };
            let mut batch = Vec::new();
            let mut closing = false;
            let mut next = Some(message);
            while let Some(message) = next.take() {
                match message {
                    Message::Exchange(record) => {
                        batch.push(exchange_event(&record, &self.shared.source))
                    }
                    Message::Security(record) => {
                        batch.push(security_event(&record, &self.shared.source))
                    }
                    Message::Reopen => {
                        self.write_batch(&mut batch);
                        self.reopen();
                    }
                    Message::Close => closing = true,
                }
                if batch.len() < 256 {
                    next = self.rx.try_recv().ok();
                }
            }
            let written = batch.len();
            self.write_batch(&mut batch);
            unsynced |= written > 0;
            if unsynced
                && (self.fsync == FsyncPolicy::Always
                    || last_sync.elapsed() >= SYNC_INTERVAL
                    || closing)
            {
                self.sync();
                unsynced = false;
                last_sync = Instant::now();
            }
            if closing {
                break;
            }
        }
        self.sync();
    }

    /// Chains and writes the records; on failure keeps retrying (refuse) or logs them
    /// (log-and-continue). Never returns with records dropped under `refuse`.
    fn write_batch(&mut self, batch: &mut Vec<Value>) {
        if batch.is_empty() {
            return;
        }
        let mut bytes = Vec::with_capacity(batch.len() * 1024);
        let mut chain = self.previous;
        for event in batch.iter() {
            let canonical = serde_json::to_string(event).expect("an AuditEvent is valid JSON");
            chain = self.key.chain(&chain, canonical.as_bytes());
            bytes.extend_from_slice(&canonical.as_bytes()[..canonical.len() - 1]);
            bytes.extend_from_slice(CHAIN_FIELD.as_bytes());
            bytes.extend_from_slice(hex(&chain).as_bytes());
            bytes.extend_from_slice(b"\"}\n");
        }
        let count = batch.len();
        loop {
            match self.sink.write_all(&bytes) {
                Ok(()) => {
                    self.previous = chain;
                    if !self.shared.healthy.swap(true, Ordering::Relaxed) {
                        tracing::warn!(target: "fhirgate::audit", "audit sink writable again; exchanges accepted");
                    }
                    break;
                }
                Err(error) => {
                    if self.shared.healthy.swap(false, Ordering::Relaxed) {
                        tracing::error!(target: "fhirgate::audit", %error,
                        "AUDIT SINK CANNOT BE WRITTEN: {}",
                        match self.shared.on_failure {
                            OnAuditFailure::Refuse => "new exchanges are refused with 503 until it recovers",
                            OnAuditFailure::LogAndContinue => "records go to this log instead",
                        });
                    }
                    let closing = self.shared.closing.load(Ordering::Relaxed);
                    if self.shared.on_failure == OnAuditFailure::LogAndContinue || closing {
                        for line in String::from_utf8_lossy(&bytes).lines() {
                            tracing::warn!(target: "fhirgate::audit", record = line, "audit record not written to the sink");
                        }
                        self.previous = chain;
                        break;
                    }
                    std::thread::sleep(RETRY_INTERVAL);
                    self.reopen();
                }
            }
        }
        batch.clear();
        self.shared.depth.fetch_sub(count, Ordering::Relaxed);
        self.shared.drained.notify_waiters();
    }

    fn reopen(&mut self) {
        match Sink::open(&self.target) {
            Ok(sink) => self.sink = sink,
            Err(error) => {
                tracing::error!(target: "fhirgate::audit", error = %error, "cannot reopen the audit sink")
            }
        }
    }

    fn sync(&mut self) {
        if let Err(error) = self.sink.sync() {
            tracing::error!(target: "fhirgate::audit", %error, "cannot sync the audit sink");
        }
    }
}

/// Unix milliseconds as RFC 3339 UTC with millisecond precision.
fn instant_text(ms: i64) -> String {
    let seconds = crate::clock::rfc3339(ms.div_euclid(1000));
    format!(
        "{}.{:03}Z",
        seconds.trim_end_matches('Z'),
        ms.rem_euclid(1000)
    )
}

/// The FHIR RESTful interaction of a request, from its method and the path below the
/// route's base (FHIR R4 http.html), and its BALP action code.
pub fn interaction(
    method: &str,
    path_below_base: &str,
    has_query: bool,
) -> (&'static str, &'static str) {
    let segments: Vec<&str> = path_below_base
        .split('/')
        .filter(|s| !s.is_empty())
        .collect();
    if segments.iter().any(|s| s.starts_with('$')) {
        return ("operation", "E");
    }
    let history = segments.iter().position(|s| *s == "_history");
    match (method, segments.as_slice(), history) {
        ("GET", ["metadata"], _) => ("capabilities", "E"),
        ("GET" | "HEAD", [_, _, "_history", _], Some(2)) => ("vread", "R"),
        ("GET" | "HEAD", _, Some(_)) => ("history", "E"),
        ("GET" | "HEAD", [] | ["_search"], _) | ("POST", ["_search"], _) => ("search-system", "E"),
        ("GET" | "HEAD", [_], _) | ("POST", [_, "_search"], _) => ("search-type", "E"),
        ("GET" | "HEAD", [_, _], _) => ("read", "R"),
        ("POST", [], _) => ("batch/transaction", "E"),
        ("POST", [_], _) => ("create", "C"),
        ("PUT", [_, _], _) => ("update", "U"),
        ("PUT", [_], _) if has_query => ("update", "U"),
        ("PATCH", _, _) => ("patch", "U"),
        ("DELETE", _, _) => ("delete", "D"),
        _ => ("operation", "E"),
    }
}

/// AuditEvent.outcome: 0 success, 4 minor failure, 8 serious failure, 12 major failure.
fn outcome_code(status: u16, outcome: Outcome) -> &'static str {
    match (outcome, status) {
        (Outcome::UpstreamBroke | Outcome::TimedOut, _) => "12",
        (Outcome::ClientAborted, _) => "4",
        (Outcome::Complete, 500..) => "8",
        (Outcome::Complete, 400..=499) => "4",
        (Outcome::Complete, _) => "0",
    }
}

fn coding(system: &str, code: &str, display: &str) -> Value {
    json!({"system": system, "code": code, "display": display})
}

fn detail(kind: &str, value: impl ToString) -> Value {
    json!({"type": kind, "valueString": value.to_string()})
}

fn exchange_event(r: &ExchangeAudit, source: &str) -> Value {
    let below_base = r.below_base.as_deref().unwrap_or(&r.public_path);
    let (subtype, action) = interaction(&r.method, below_base, r.query.is_some());
    let mut details = vec![
        detail("request-id", &r.request_id),
        detail("method", &r.method),
        detail("status", r.status),
        detail("bytes-in", r.bytes_in),
        detail("bytes-out", r.bytes_out),
        detail("duration-ms", r.ended_ms - r.started_ms),
        detail("upstream", r.upstream),
        detail("end", r.outcome.label()),
    ];
    if let Some(fingerprint) = &r.token_fingerprint {
        details.push(detail("token-fingerprint", fingerprint));
    }
    let mut request = json!({
        "what": {"display": r.public_path},
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-entity-type", "2", "System Object"),
        "name": "public request",
        "detail": details,
    });
    if let Some(query) = &r.query {
        request["query"] = Value::String(base64::engine::general_purpose::STANDARD.encode(query));
    }
    let mut entities = vec![request];
    if let Some(private) = &r.private_path {
        entities.push(json!({"what": {"display": private}, "name": "forwarded request"}));
    }
    if let Some(route) = &r.route {
        entities.push(json!({"what": {"display": route}, "name": "route"}));
    }
    json!({
        "resourceType": "AuditEvent",
        "type": coding("http://terminology.hl7.org/CodeSystem/audit-event-type", "rest", "RESTful Operation"),
        "subtype": [coding("http://hl7.org/fhir/restful-interaction", subtype, subtype)],
        "action": action,
        "period": {"start": instant_text(r.started_ms), "end": instant_text(r.ended_ms)},
        "recorded": instant_text(r.ended_ms),
        "outcome": outcome_code(r.status, r.outcome),
        "outcomeDesc": format!("{} {}", r.status, r.outcome.label()),
        "agent": [
            {
                "type": {"coding": [coding("http://dicom.nema.org/resources/ontology/DCM", "110153", "Source Role ID")]},
                "who": {"display": r.peer.to_string()},
                "requestor": true,
                "network": {"address": r.peer.to_string(), "type": "2"},
            },
            {
                "type": {"coding": [coding("http://dicom.nema.org/resources/ontology/DCM", "110152", "Destination Role ID")]},
                "who": {"display": source},
                "requestor": false,
            },
        ],
        "source": {
            "observer": {"display": source},
            "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "6", "Security Server")],
        },
        "entity": entities,
    })
}

fn security_event(r: &SecurityAudit, source: &str) -> Value {
    json!({
        "resourceType": "AuditEvent",
        "type": coding("http://dicom.nema.org/resources/ontology/DCM", "110113", "Security Alert"),
        "action": "E",
        "recorded": instant_text(r.at_ms),
        "outcome": "4",
        "outcomeDesc": format!("TLS handshake refused: {}", r.reason),
        "agent": [{
            "type": {"coding": [coding("http://dicom.nema.org/resources/ontology/DCM", "110153", "Source Role ID")]},
            "who": {"display": r.peer.ip().to_string()},
            "requestor": true,
            "network": {"address": r.peer.ip().to_string(), "type": "2"},
        }],
        "source": {
            "observer": {"display": source},
            "type": [coding("http://terminology.hl7.org/CodeSystem/security-source-type", "6", "Security Server")],
        },
        "entity": [{
            "what": {"display": r.listener},
            "name": "listener",
            "detail": [
                detail("sni", r.sni.as_deref().unwrap_or("(none)")),
                detail("reason", &r.reason),
            ],
        }],
    })
}

/// What `fhirgate audit verify` found.
#[derive(Debug, PartialEq, Eq)]
pub enum Verdict {
    Ok {
        records: usize,
    },
    /// 1-based line where the chain breaks: that line was changed, or a line before it was
    /// removed, inserted or moved.
    Broken {
        line: usize,
        why: &'static str,
    },
}

/// Recomputes the chain of an audit file. `previous` is the chain value the file starts
/// from (the genesis value, or the last value of the segment before a rotation).
pub fn verify(reader: impl io::BufRead, key: &AuditKey, previous: [u8; 32]) -> io::Result<Verdict> {
    let mut chain = previous;
    let mut records = 0;
    for (index, line) in reader.lines().enumerate() {
        let line = line?;
        let number = index + 1;
        let Some((canonical, stored)) = split_chain(&line) else {
            return Ok(Verdict::Broken {
                line: number,
                why: "not an audit record (no chain value)",
            });
        };
        let expected = key.chain(&chain, canonical.as_bytes());
        if expected != stored {
            return Ok(Verdict::Broken {
                line: number,
                why: "the chain does not match: this line was changed, or a line before it was removed, inserted or reordered",
            });
        }
        chain = stored;
        records += 1;
    }
    Ok(Verdict::Ok { records })
}

/// Parses a `--previous` value.
pub fn parse_chain(text: &str) -> Option<[u8; 32]> {
    unhex32(text.trim())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn interactions_follow_the_fhir_rest_api() {
        let cases = [
            ("GET", "/metadata", false, "capabilities", "E"),
            ("GET", "/Patient/1", false, "read", "R"),
            ("GET", "/Patient/1/_history/2", false, "vread", "R"),
            ("GET", "/Patient/1/_history", false, "history", "E"),
            ("GET", "/Patient", true, "search-type", "E"),
            ("POST", "/Patient/_search", false, "search-type", "E"),
            ("GET", "/", true, "search-system", "E"),
            ("POST", "/", false, "batch/transaction", "E"),
            ("POST", "/Patient", false, "create", "C"),
            ("PUT", "/Patient/1", false, "update", "U"),
            ("PUT", "/Patient", true, "update", "U"),
            ("PATCH", "/Patient/1", false, "patch", "U"),
            ("DELETE", "/Patient/1", false, "delete", "D"),
            ("GET", "/Patient/$export", false, "operation", "E"),
            ("POST", "/$process-message", false, "operation", "E"),
        ];
        for (method, path, query, subtype, action) in cases {
            assert_eq!(
                interaction(method, path, query),
                (subtype, action),
                "{method} {path}"
            );
        }
    }

    #[test]
    fn chain_detects_changes() {
        let key = AuditKey::from_bytes(vec![7; 32]).unwrap();
        let a = key.chain(&GENESIS, b"{\"a\":1}");
        let b = key.chain(&a, b"{\"b\":2}");
        let lines = format!(
            "{{\"a\":1{CHAIN_FIELD}{}\"}}\n{{\"b\":2{CHAIN_FIELD}{}\"}}\n",
            hex(&a),
            hex(&b)
        );
        assert_eq!(
            verify(lines.as_bytes(), &key, GENESIS).unwrap(),
            Verdict::Ok { records: 2 }
        );
        let changed = lines.replace("\"b\":2", "\"b\":3");
        assert!(matches!(
            verify(changed.as_bytes(), &key, GENESIS).unwrap(),
            Verdict::Broken { line: 2, .. }
        ));
        let other_key = AuditKey::from_bytes(vec![8; 32]).unwrap();
        assert!(matches!(
            verify(lines.as_bytes(), &other_key, GENESIS).unwrap(),
            Verdict::Broken { line: 1, .. }
        ));
    }

    #[test]
    fn short_keys_are_refused_and_fingerprints_hide_tokens() {
        assert_eq!(AuditKey::from_bytes(vec![1; 31]).unwrap_err(), 31);
        let key = AuditKey::from_bytes(vec![1; 32]).unwrap();
        let fp = key.fingerprint(b"SECRET-TOKEN");
        assert_eq!(fp.len(), 24);
        assert_eq!(fp, key.fingerprint(b"SECRET-TOKEN"));
        assert_ne!(fp, key.fingerprint(b"OTHER-TOKEN"));
        assert!(!fp.contains("SECRET"));
    }

    #[test]
    fn millisecond_timestamps() {
        assert_eq!(instant_text(1_795_417_199_123), "2026-11-23T06:59:59.123Z");
        assert_eq!(instant_text(5), "1970-01-01T00:00:00.005Z");
    }
}
