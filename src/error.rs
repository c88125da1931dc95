//! Errors the gateway makes itself, and their one mapping to a status and a FHIR
//! `OperationOutcome`.
//!
//! The [`GatewayError`] keeps its cause chain (`#[source]`) for the log; the client gets a
//! fixed, generic text and the request id, never a host, address, port, path or internal
//! error text (FHIR security: "no information leaks when errors occur").

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// A boxed error that can cross threads: the cause of an upstream or internal failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that makes the gateway answer a request itself.
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("no route for this host and path")]
    NoRoute,
    #[error("path contains a dot-segment")]
    DotSegment,
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    #[error("TLS server name and request host disagree")]
    MisdirectedRequest,
    #[error("upstream failure ({})", kind.label())]
    Upstream {
        kind: UpstreamFailure,
        #[source]
        source: BoxError,
    },
    #[error("gateway overloaded")]
    Overloaded,
    #[error("gateway shutting down")]
    ShuttingDown,
    #[error("the audit trail cannot be written")]
    AuditUnavailable,
    #[error("request header section too large")]
    HeaderTooLarge,
    #[error("request target too long")]
    UriTooLong,
    #[error("request body larger than the route allows")]
    PayloadTooLarge,
    #[error("request body stopped arriving")]
    RequestTimeout,
    #[error("rate limit exceeded")]
    RateLimited { retry_after_secs: u64 },
    #[error("internal error")]
    Internal(#[source] BoxError),
}

/// How reaching the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Connection refused, host unreachable, name not resolved.
    Refused,
    /// TLS handshake failed: certificate not valid for the private name, expired, unknown CA…
    Tls,
    /// The connection broke or the upstream sent an invalid response.
    Broken,
    /// TCP connect + TLS handshake exceeded `connect_timeout`.
    ConnectTimeout,
    /// No response headers within `response_timeout` of the end of the request body.
    ResponseTimeout,
}

impl UpstreamFailure {
    /// The `kind` label of `fhirgate_upstream_failures_total`.
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Refused => "refused",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Broken => "broken",
            UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout => "timeout",
        }
    }
}

/// Body format of a gateway-made OperationOutcome.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum OutcomeFormat {
    Json,
    Xml,
}

impl GatewayError {
    /// The status of the contract's error table (the IG: 404 destination unknown, 504 timeout,
    /// 500 system error; RFC 9110 for the rest).
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::DotSegment | GatewayError::Malformed(_) => StatusCode::BAD_REQUEST,
            GatewayError::MisdirectedRequest => StatusCode::MISDIRECTED_REQUEST,
            GatewayError::Upstream { kind, .. } => match kind {
                UpstreamFailure::Refused | UpstreamFailure::Tls | UpstreamFailure::Broken => {
                    StatusCode::BAD_GATEWAY
                }
                UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout => {
                    StatusCode::GATEWAY_TIMEOUT
                }
            },
            GatewayError::Overloaded
            | GatewayError::ShuttingDown
            | GatewayError::AuditUnavailable => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The FHIR R4 IssueType code (<http://hl7.org/fhir/R4/valueset-issue-type.html>).
    pub fn issue_code(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "not-found",
            GatewayError::DotSegment | GatewayError::Malformed(_) => "invalid",
            // The request is fine, but was sent on a connection made for another name.
            GatewayError::MisdirectedRequest => "invalid",
            GatewayError::Upstream { kind, .. } => match kind {
                UpstreamFailure::Refused | UpstreamFailure::Broken => "transient",
                // The destination could not prove its identity: a security problem.
                UpstreamFailure::Tls => "security",
                UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout => "timeout",
            },
            GatewayError::Overloaded
            | GatewayError::ShuttingDown
            | GatewayError::AuditUnavailable => "transient",
            GatewayError::HeaderTooLarge | GatewayError::UriTooLong => "too-long",
            GatewayError::PayloadTooLarge => "too-costly",
            GatewayError::RequestTimeout => "timeout",
            GatewayError::RateLimited { .. } => "throttled",
            GatewayError::Internal(_) => "exception",
        }
    }

    /// Fixed text for the public. Never the Display or source chain, which may name private
    /// hosts, addresses or files.
    pub fn diagnostics(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "No FHIR destination is served at this host and path.",
            GatewayError::DotSegment => "The request path contains a '.' or '..' segment.",
            GatewayError::Malformed(what) => what,
            GatewayError::MisdirectedRequest => {
                "The request's host does not match the TLS server name of this connection; retry on a new connection."
            }
            GatewayError::Upstream { kind, .. } => match kind {
                UpstreamFailure::Refused => "The FHIR destination could not be reached.",
                UpstreamFailure::Tls => {
                    "The FHIR destination could not be reached securely (TLS verification failed)."
                }
                UpstreamFailure::Broken => {
                    "The FHIR destination's response was broken off or invalid."
                }
                UpstreamFailure::ConnectTimeout => {
                    "The FHIR destination did not accept a connection in time."
                }
                UpstreamFailure::ResponseTimeout => "The FHIR destination did not respond in time.",
            },
            GatewayError::Overloaded => "The gateway is overloaded; retry later.",
            GatewayError::ShuttingDown => "The gateway is shutting down; retry.",
            GatewayError::AuditUnavailable => {
                "The gateway cannot record this exchange in its audit trail; retry later."
            }
            GatewayError::HeaderTooLarge => "The request header section is too large.",
            GatewayError::UriTooLong => "The request target (path and query) is too long.",
            GatewayError::PayloadTooLarge => {
                "The request body is larger than this FHIR endpoint accepts."
            }
            GatewayError::RequestTimeout => "The request body stopped arriving.",
            GatewayError::RateLimited { .. } => {
                "Too many requests; retry after the indicated time."
            }
            GatewayError::Internal(_) => "The gateway failed to process the request.",
        }
    }

    /// The complete response: status, FHIR content type, `Retry-After` for 429, and an
    /// OperationOutcome whose diagnostics carry the request id.
    pub fn to_response(&self, request_id: &str, format: OutcomeFormat) -> Response<Bytes> {
        let diagnostics = format!("{} Request id: {request_id}", self.diagnostics());
        let (content_type, body) = match format {
            OutcomeFormat::Json => (
                "application/fhir+json; charset=utf-8",
                outcome_json(self.issue_code(), &diagnostics),
            ),
            OutcomeFormat::Xml => (
                "application/fhir+xml; charset=utf-8",
                outcome_xml(self.issue_code(), &diagnostics),
            ),
        };
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let GatewayError::RateLimited { retry_after_secs } = self {
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        response
    }
}

fn outcome_json(code: &str, diagnostics: &str) -> String {
    let mut out = String::with_capacity(128 + diagnostics.len());
    out.push_str(r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":""#);
    out.push_str(code);
    out.push_str(r#"","diagnostics":""#);
    for c in diagnostics.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c => out.push(c),
        }
    }
    out.push_str(r#""}]}"#);
    out
}

fn outcome_xml(code: &str, diagnostics: &str) -> String {
    let mut out = String::with_capacity(192 + diagnostics.len());
    out.push_str(r#"<OperationOutcome xmlns="http://hl7.org/fhir"><issue><severity value="error"/><code value=""#);
    out.push_str(code);
    out.push_str(r#""/><diagnostics value=""#);
    for c in diagnostics.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            c => out.push(c),
        }
    }
    out.push_str(r#""/></issue></OperationOutcome>"#);
    out
}

/// XML when `_format` asks for it (FHIR RESTful API §3.1.0.1.7), else when `Accept` names an
/// XML type and no JSON type; JSON otherwise.
pub fn outcome_format(headers: &HeaderMap, query: Option<&str>) -> OutcomeFormat {
    if let Some(query) = query {
        for pair in query.split('&') {
            if let Some(value) = pair.strip_prefix("_format=") {
                return if value.to_ascii_lowercase().contains("xml") {
                    OutcomeFormat::Xml
                } else {
                    OutcomeFormat::Json
                };
            }
        }
    }
    let mut xml = false;
    let mut json = false;
    for accept in headers.get_all(ACCEPT) {
        let accept = accept.to_str().unwrap_or("").to_ascii_lowercase();
        xml |= accept.contains("xml");
        json |= accept.contains("json");
    }
    if xml && !json {
        OutcomeFormat::Xml
    } else {
        OutcomeFormat::Json
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn all() -> Vec<(GatewayError, u16, &'static str)> {
        let upstream = |kind| GatewayError::Upstream {
            kind,
            source: "connect 10.1.2.3:9443 dest.internal refused".into(),
        };
        vec![
            (GatewayError::NoRoute, 404, "not-found"),
            (GatewayError::DotSegment, 400, "invalid"),
            (GatewayError::Malformed("missing Host"), 400, "invalid"),
            (GatewayError::MisdirectedRequest, 421, "invalid"),
            (upstream(UpstreamFailure::Refused), 502, "transient"),
            (upstream(UpstreamFailure::Tls), 502, "security"),
            (upstream(UpstreamFailure::Broken), 502, "transient"),
            (upstream(UpstreamFailure::ConnectTimeout), 504, "timeout"),
            (upstream(UpstreamFailure::ResponseTimeout), 504, "timeout"),
            (GatewayError::Overloaded, 503, "transient"),
            (GatewayError::ShuttingDown, 503, "transient"),
            (GatewayError::AuditUnavailable, 503, "transient"),
            (GatewayError::HeaderTooLarge, 431, "too-long"),
            (GatewayError::UriTooLong, 414, "too-long"),
            (GatewayError::PayloadTooLarge, 413, "too-costly"),
            (GatewayError::RequestTimeout, 408, "timeout"),
            (
                GatewayError::RateLimited {
                    retry_after_secs: 3,
                },
                429,
                "throttled",
            ),
            (GatewayError::Internal("bug".into()), 500, "exception"),
        ]
    }

    #[test]
    fn every_error_has_its_status_and_issue_code() {
        for (error, status, code) in all() {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.issue_code(), code, "{error}");
        }
    }

    #[test]
    fn json_outcome_carries_request_id_and_nothing_private() {
        for (error, _, code) in all() {
            let response = error.to_response("req-42", OutcomeFormat::Json);
            let body = std::str::from_utf8(response.body()).unwrap();
            assert!(
                body.starts_with(r#"{"resourceType":"OperationOutcome""#),
                "{body}"
            );
            assert!(body.contains(&format!(r#""code":"{code}""#)), "{body}");
            assert!(body.contains("req-42"), "{body}");
            assert!(
                !body.contains("10.1.2.3")
                    && !body.contains("dest.internal")
                    && !body.contains("9443"),
                "{body}"
            );
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                "application/fhir+json; charset=utf-8"
            );
        }
    }

    #[test]
    fn xml_outcome_is_escaped() {
        let response = GatewayError::NoRoute.to_response("a<b&\"c", OutcomeFormat::Xml);
        let body = std::str::from_utf8(response.body()).unwrap();
        assert!(body.starts_with(r#"<OperationOutcome xmlns="http://hl7.org/fhir">"#));
        assert!(body.contains("a&lt;b&amp;&quot;c"), "{body}");
        assert!(body.contains(r#"<code value="not-found"/>"#));
    }

    #[test]
    fn json_escapes_quotes() {
        let body = outcome_json("invalid", "say \"hi\"\\\n");
        assert!(body.contains(r#"say \"hi\"\\\u000a"#), "{body}");
    }

    #[test]
    fn rate_limit_says_when_to_retry() {
        let response = GatewayError::RateLimited {
            retry_after_secs: 7,
        }
        .to_response("r", OutcomeFormat::Json);
        assert_eq!(response.headers()[RETRY_AFTER], "7");
    }

    #[test]
    fn format_from_query_and_accept() {
        let none = HeaderMap::new();
        assert_eq!(outcome_format(&none, None), OutcomeFormat::Json);
        assert_eq!(
            outcome_format(&none, Some("_format=xml")),
            OutcomeFormat::Xml
        );
        assert_eq!(
            outcome_format(&none, Some("a=1&_format=application/fhir%2Bxml")),
            OutcomeFormat::Xml
        );
        assert_eq!(
            outcome_format(&none, Some("_format=json")),
            OutcomeFormat::Json
        );
        let mut xml = HeaderMap::new();
        xml.insert(ACCEPT, HeaderValue::from_static("application/fhir+xml"));
        assert_eq!(outcome_format(&xml, None), OutcomeFormat::Xml);
        assert_eq!(
            outcome_format(&xml, Some("_format=json")),
            OutcomeFormat::Json
        );
        let mut both = HeaderMap::new();
        both.insert(
            ACCEPT,
            HeaderValue::from_static("application/fhir+json, application/fhir+xml;q=0.5"),
        );
        assert_eq!(outcome_format(&both, None), OutcomeFormat::Json);
    }
}
