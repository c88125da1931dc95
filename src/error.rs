//! Errors the gateway makes itself, and their one mapping to a status and a FHIR
//! `OperationOutcome`.
//!
//! The [`GatewayError`] keeps its cause chain (`#[source]`) for the log; the client gets a
//! fixed, generic text and the request id, never a host, address, port, path or internal
//! error text (FHIR security: "no information leaks when errors occur").

use std::fmt::Write;

use bytes::Bytes;
use http::header::{ACCEPT, CACHE_CONTROL, CONTENT_TYPE, RETRY_AFTER};
use http::{HeaderMap, HeaderValue, Response, StatusCode};

/// A boxed error that can cross threads: the cause of an upstream or internal failure.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Everything that makes the gateway answer a request itself. A response from the
/// destination, whatever its status, is never one of these and is never replaced.
///
/// The Display text (`#[error]`) and the source chain are for the log; the client only sees
/// [`GatewayError::diagnostics`].
#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    /// No route for the request's host and path: the IG's "destination cannot be resolved".
    #[error("no route for this host and path")]
    NoRoute,
    /// A `.` or `..` segment, which could escape a route's prefix at the destination.
    #[error("path contains a dot-segment")]
    DotSegment,
    /// A request the gateway cannot forward as it is. The text is fixed by the gateway's code
    /// (e.g. "missing Host") and safe to show: never request or upstream data.
    #[error("malformed request: {0}")]
    Malformed(&'static str),
    /// The TLS server name (SNI) and the request's host disagree.
    #[error("TLS server name and request host disagree")]
    MisdirectedRequest,
    /// Reaching the destination failed; `source` may name private hosts and addresses.
    #[error("upstream failure: {}", kind.describe())]
    Upstream {
        kind: UpstreamFailure,
        #[source]
        source: BoxError,
    },
    /// The connection limits are reached.
    #[error("gateway overloaded")]
    Overloaded,
    /// Draining after SIGTERM: exchanges in flight finish, new ones are refused.
    #[error("gateway shutting down")]
    ShuttingDown,
    /// The audit sink cannot be written and `on_failure = "refuse"`.
    #[error("the audit trail cannot be written")]
    AuditUnavailable,
    /// The request header section exceeds `max_header_bytes` or `max_headers`.
    #[error("request header section too large")]
    HeaderTooLarge,
    /// The request target exceeds `max_uri_bytes`.
    #[error("request target too long")]
    UriTooLong,
    /// The request body exceeds the route's `max_request_body_bytes`.
    #[error("request body larger than the route allows")]
    PayloadTooLarge,
    /// The request body sent nothing for `body_idle_timeout`.
    #[error("request body stopped arriving")]
    RequestTimeout,
    /// The client address's token bucket is empty.
    #[error("rate limit exceeded, retry after {retry_after_secs} s")]
    RateLimited { retry_after_secs: u64 },
    /// The route's `max_concurrent_exchanges` are all in flight.
    #[error("route at its concurrent exchange cap")]
    RouteBusy,
    /// The exchange ran past `max_exchange_duration` before the response head arrived.
    #[error("exchange exceeded max_exchange_duration")]
    ExchangeTooLong,
    /// A bug in the gateway.
    #[error("internal error")]
    Internal(#[source] BoxError),
}

/// How reaching the upstream failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum UpstreamFailure {
    /// Connection refused, host unreachable, name not resolved (502).
    Refused,
    /// TLS handshake failed: certificate not valid for the private name, expired, unknown
    /// CA… (502).
    Tls,
    /// The connection broke or the upstream sent an invalid response (502).
    Broken,
    /// TCP connect + TLS handshake exceeded `connect_timeout` (504).
    ConnectTimeout,
    /// No response headers within `response_timeout` of the end of the request body (504).
    ResponseTimeout,
}

impl UpstreamFailure {
    /// The `kind` label of `fhirgate_upstream_failures_total`: `refused`, `tls`, `broken` or
    /// `timeout` (both timeouts are one label, as the metric contract names four kinds).
    pub fn label(self) -> &'static str {
        match self {
            UpstreamFailure::Refused => "refused",
            UpstreamFailure::Tls => "tls",
            UpstreamFailure::Broken => "broken",
            UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout => "timeout",
        }
    }

    /// For the log, where the two timeouts are worth telling apart.
    fn describe(self) -> &'static str {
        match self {
            UpstreamFailure::Refused => "refused or unreachable",
            UpstreamFailure::Tls => "TLS handshake or verification failed",
            UpstreamFailure::Broken => "connection broken or invalid response",
            UpstreamFailure::ConnectTimeout => "connect timeout",
            UpstreamFailure::ResponseTimeout => "response timeout",
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
    /// The status of the contract's error table (DESIGN "Errors made by the gateway"; the IG:
    /// 404 destination unknown, 504 timeout, 500 system error; RFC 9110 §15 for the rest).
    pub fn status(&self) -> StatusCode {
        match self {
            GatewayError::NoRoute => StatusCode::NOT_FOUND,
            GatewayError::DotSegment | GatewayError::Malformed(_) => StatusCode::BAD_REQUEST,
            // RFC 9110 §15.5.20: the client may retry on a new connection.
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
            | GatewayError::AuditUnavailable
            | GatewayError::RouteBusy => StatusCode::SERVICE_UNAVAILABLE,
            GatewayError::ExchangeTooLong => StatusCode::GATEWAY_TIMEOUT,
            // RFC 6585 §5.
            GatewayError::HeaderTooLarge => StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            GatewayError::UriTooLong => StatusCode::URI_TOO_LONG,
            GatewayError::PayloadTooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            GatewayError::RequestTimeout => StatusCode::REQUEST_TIMEOUT,
            // RFC 6585 §4.
            GatewayError::RateLimited { .. } => StatusCode::TOO_MANY_REQUESTS,
            GatewayError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// The FHIR R4 IssueType code (<http://hl7.org/fhir/R4/valueset-issue-type.html>).
    pub fn issue_code(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "not-found",
            GatewayError::DotSegment | GatewayError::Malformed(_) => "invalid",
            // Not "invalid" (that is about content, and the content is fine) nor "transient"
            // (the same connection will refuse it again): the request names a host the TLS
            // session was not authenticated for, and refusing it is what keeps one tenant's
            // connection from reaching another's destination: a security rule.
            GatewayError::MisdirectedRequest => "security",
            GatewayError::Upstream { kind, .. } => match kind {
                UpstreamFailure::Refused | UpstreamFailure::Broken => "transient",
                // The destination could not prove its identity: a security problem.
                UpstreamFailure::Tls => "security",
                UpstreamFailure::ConnectTimeout | UpstreamFailure::ResponseTimeout => "timeout",
            },
            GatewayError::Overloaded
            | GatewayError::ShuttingDown
            | GatewayError::AuditUnavailable
            | GatewayError::RouteBusy => "transient",
            GatewayError::ExchangeTooLong => "timeout",
            GatewayError::HeaderTooLarge | GatewayError::UriTooLong => "too-long",
            GatewayError::PayloadTooLarge => "too-costly",
            GatewayError::RequestTimeout => "timeout",
            GatewayError::RateLimited { .. } => "throttled",
            GatewayError::Internal(_) => "exception",
        }
    }

    /// Fixed, generic text for the public: never a host, address, port, path or internal
    /// error text. The Display and source chain, which may hold such details, go to the log
    /// only (FHIR security: no information leaks when errors occur).
    pub fn diagnostics(&self) -> &'static str {
        match self {
            GatewayError::NoRoute => "No route matches this host and path.",
            GatewayError::DotSegment => "The request path contains a '.' or '..' segment.",
            // A fixed description chosen by the gateway's code, e.g. "missing Host".
            GatewayError::Malformed(what) => what,
            GatewayError::MisdirectedRequest => {
                "The request's host does not match the TLS server name of this connection; retry on a new connection."
            }
            GatewayError::Upstream { kind, .. } => match kind {
                UpstreamFailure::Refused => "The FHIR destination could not be reached.",
                UpstreamFailure::Tls => "The FHIR destination could not be reached securely.",
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
                "Too many requests; retry after the time in Retry-After."
            }
            GatewayError::RouteBusy => {
                "This FHIR endpoint has too many requests in progress; retry later."
            }
            GatewayError::ExchangeTooLong => "The exchange took longer than this gateway allows.",
            GatewayError::Internal(_) => "The gateway failed to process the request.",
        }
    }

    /// The complete response: status, FHIR content type (charset utf-8), `Retry-After` for
    /// 429, `Cache-Control: no-store` (the answer is about this one request, RFC 9111 §5.2.2.5),
    /// and an OperationOutcome with one issue whose diagnostics end with the request id, so
    /// an operator can find the details in the log.
    pub fn to_response(&self, request_id: &str, format: OutcomeFormat) -> Response<Bytes> {
        let (content_type, body) = match format {
            OutcomeFormat::Json => (
                "application/fhir+json; charset=utf-8",
                outcome_json(self.issue_code(), self.diagnostics(), request_id),
            ),
            OutcomeFormat::Xml => (
                "application/fhir+xml; charset=utf-8",
                outcome_xml(self.issue_code(), self.diagnostics(), request_id),
            ),
        };
        let mut response = Response::new(Bytes::from(body));
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONTENT_TYPE, HeaderValue::from_static(content_type));
        headers.insert(CACHE_CONTROL, HeaderValue::from_static("no-store"));
        if let GatewayError::RateLimited { retry_after_secs } = self {
            // RFC 9110 §10.2.3: delay-seconds.
            headers.insert(RETRY_AFTER, HeaderValue::from(*retry_after_secs));
        }
        if let GatewayError::RouteBusy = self {
            // Capacity frees up as exchanges finish; a second is a polite first retry.
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// The diagnostics sentence(s), then the request id: the parts `escape` writes escaped.
fn diagnostics_parts<'a>(diagnostics: &'a str, request_id: &'a str) -> [&'a str; 3] {
    // `Malformed` texts such as "missing Host" are not sentences; end them as one.
    let separator = if diagnostics.ends_with('.') {
        " Request id: "
    } else {
        ". Request id: "
    };
    [diagnostics, separator, request_id]
}

/// `{"resourceType":"OperationOutcome","issue":[{…}]}`, written directly: one allocation,
/// no serde on the request path. `code` is one of the fixed IssueType codes above.
fn outcome_json(code: &str, diagnostics: &str, request_id: &str) -> String {
    let mut out = String::with_capacity(160 + diagnostics.len() + request_id.len());
    out.push_str(r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":""#);
    out.push_str(code);
    out.push_str(r#"","diagnostics":""#);
    for part in diagnostics_parts(diagnostics, request_id) {
        push_json_escaped(&mut out, part);
    }
    out.push_str(r#""}]}"#);
    out
}

/// RFC 8259 §7: `"`, `\` and control characters are escaped inside a string.
fn push_json_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c < ' ' => {
                let _ = write!(out, "\\u{:04x}", c as u32);
            }
            c => out.push(c),
        }
    }
}

/// The XML form (FHIR R4 XML format: primitives are `value` attributes).
fn outcome_xml(code: &str, diagnostics: &str, request_id: &str) -> String {
    let mut out = String::with_capacity(192 + diagnostics.len() + request_id.len());
    out.push_str(r#"<OperationOutcome xmlns="http://hl7.org/fhir"><issue><severity value="error"/><code value=""#);
    out.push_str(code);
    out.push_str(r#""/><diagnostics value=""#);
    for part in diagnostics_parts(diagnostics, request_id) {
        push_xml_attribute_escaped(&mut out, part);
    }
    out.push_str(r#""/></issue></OperationOutcome>"#);
    out
}

/// XML 1.0 §2.4 / §3.3.3: markup characters become entities; tab, line feed and carriage
/// return become character references so attribute normalisation keeps them; characters
/// XML cannot carry at all (other controls, U+FFFE, U+FFFF) become U+FFFD.
fn push_xml_attribute_escaped(out: &mut String, text: &str) {
    for c in text.chars() {
        match c {
            '&' => out.push_str("&amp;"),
            '<' => out.push_str("&lt;"),
            '>' => out.push_str("&gt;"),
            '"' => out.push_str("&quot;"),
            '\'' => out.push_str("&apos;"),
            '\t' => out.push_str("&#9;"),
            '\n' => out.push_str("&#10;"),
            '\r' => out.push_str("&#13;"),
            c if c < ' ' || c == '\u{fffe}' || c == '\u{ffff}' => out.push('\u{fffd}'),
            c => out.push(c),
        }
    }
}

/// The body format of a gateway-made OperationOutcome, as a FHIR server would choose it
/// (FHIR R4 http.html#mime-type): `_format` in the query wins (`xml`, `text/xml`,
/// `application/xml`, `application/fhir+xml`, the `+` also as `%2B` or a space); otherwise
/// `Accept`, XML only when it prefers an XML type over every JSON type; JSON otherwise, as
/// JSON is the format the IG makes mandatory.
pub fn outcome_format(headers: &HeaderMap, query: Option<&str>) -> OutcomeFormat {
    if let Some(format) = query.and_then(format_parameter) {
        return if contains_ignore_case(format, "xml") {
            OutcomeFormat::Xml
        } else {
            OutcomeFormat::Json
        };
    }
    let (mut xml, mut json) = (0.0f32, 0.0f32);
    for range in headers
        .get_all(ACCEPT)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
    {
        let mut params = range.split(';');
        let media = params.next().unwrap_or_default();
        let q = params
            .filter_map(|p| p.trim().strip_prefix("q=").or(p.trim().strip_prefix("Q=")))
            .find_map(|q| q.trim().parse::<f32>().ok())
            // RFC 9110 §12.4.2: a weight is 0 to 1; anything else is ignored.
            .filter(|q| (0.0..=1.0).contains(q))
            .unwrap_or(1.0);
        if contains_ignore_case(media, "xml") {
            xml = xml.max(q);
        } else if contains_ignore_case(media, "json") {
            json = json.max(q);
        }
    }
    if xml > json {
        OutcomeFormat::Xml
    } else {
        OutcomeFormat::Json
    }
}

/// The value of the first non-empty `_format` query parameter, raw (still percent-encoded).
fn format_parameter(query: &str) -> Option<&str> {
    query
        .split('&')
        .filter_map(|pair| pair.strip_prefix("_format="))
        .find(|value| !value.is_empty())
}

fn contains_ignore_case(haystack: &str, needle: &str) -> bool {
    haystack
        .as_bytes()
        .windows(needle.len())
        .any(|window| window.eq_ignore_ascii_case(needle.as_bytes()))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Every variant, with the status and IssueType the contract gives it.
    fn all() -> Vec<(GatewayError, u16, &'static str)> {
        let upstream = |kind| GatewayError::Upstream {
            kind,
            source: "connect to 10.1.2.3:9443 dest.internal: connection refused".into(),
        };
        vec![
            (GatewayError::NoRoute, 404, "not-found"),
            (GatewayError::DotSegment, 400, "invalid"),
            (GatewayError::Malformed("missing Host"), 400, "invalid"),
            (GatewayError::MisdirectedRequest, 421, "security"),
            (upstream(UpstreamFailure::Refused), 502, "transient"),
            (upstream(UpstreamFailure::Tls), 502, "security"),
            (upstream(UpstreamFailure::Broken), 502, "transient"),
            (upstream(UpstreamFailure::ConnectTimeout), 504, "timeout"),
            (upstream(UpstreamFailure::ResponseTimeout), 504, "timeout"),
            (GatewayError::Overloaded, 503, "transient"),
            (GatewayError::ShuttingDown, 503, "transient"),
            (GatewayError::AuditUnavailable, 503, "transient"),
            (GatewayError::RouteBusy, 503, "transient"),
            (GatewayError::ExchangeTooLong, 504, "timeout"),
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
            (
                GatewayError::Internal("panic at /srv/fhirgate/src/proxy.rs".into()),
                500,
                "exception",
            ),
        ]
    }

    fn body(response: &Response<Bytes>) -> &str {
        std::str::from_utf8(response.body()).unwrap()
    }

    #[test]
    fn every_error_has_its_status_and_issue_code() {
        for (error, status, code) in all() {
            assert_eq!(error.status().as_u16(), status, "{error}");
            assert_eq!(error.issue_code(), code, "{error}");
            let response = error.to_response("r", OutcomeFormat::Json);
            assert_eq!(response.status().as_u16(), status, "{error}");
        }
    }

    #[test]
    fn upstream_failure_labels() {
        use UpstreamFailure::*;
        let labels: Vec<_> = [Refused, Tls, Broken, ConnectTimeout, ResponseTimeout]
            .into_iter()
            .map(UpstreamFailure::label)
            .collect();
        assert_eq!(labels, ["refused", "tls", "broken", "timeout", "timeout"]);
    }

    #[test]
    fn json_outcome_is_one_issue_with_code_and_request_id() {
        for (error, _, code) in all() {
            let response = error.to_response("req-42", OutcomeFormat::Json);
            let value: serde_json::Value = serde_json::from_str(body(&response)).unwrap();
            assert_eq!(value["resourceType"], "OperationOutcome");
            let issues = value["issue"].as_array().unwrap();
            assert_eq!(issues.len(), 1);
            assert_eq!(issues[0]["severity"], "error");
            assert_eq!(issues[0]["code"], code);
            let diagnostics = issues[0]["diagnostics"].as_str().unwrap();
            assert!(
                diagnostics.ends_with(". Request id: req-42"),
                "{diagnostics}"
            );
            let headers = response.headers();
            assert_eq!(
                headers[CONTENT_TYPE],
                "application/fhir+json; charset=utf-8"
            );
            assert_eq!(headers[CACHE_CONTROL], "no-store");
        }
    }

    #[test]
    fn json_outcome_of_the_contract() {
        let response = GatewayError::NoRoute.to_response("abc", OutcomeFormat::Json);
        assert_eq!(
            body(&response),
            r#"{"resourceType":"OperationOutcome","issue":[{"severity":"error","code":"not-found","diagnostics":"No route matches this host and path. Request id: abc"}]}"#
        );
    }

    #[test]
    fn xml_outcome_of_the_contract() {
        for (error, _, code) in all() {
            let response = error.to_response("req-42", OutcomeFormat::Xml);
            let expected = format!(
                r#"<OperationOutcome xmlns="http://hl7.org/fhir"><issue><severity value="error"/><code value="{code}"/><diagnostics value="{}. Request id: req-42"/></issue></OperationOutcome>"#,
                error
                    .diagnostics()
                    .trim_end_matches('.')
                    .replace('\'', "&apos;")
            );
            assert_eq!(body(&response), expected);
            assert_eq!(
                response.headers()[CONTENT_TYPE],
                "application/fhir+xml; charset=utf-8"
            );
            assert_eq!(response.headers()[CACHE_CONTROL], "no-store");
        }
    }

    #[test]
    fn request_id_is_escaped_in_json_and_xml() {
        let id = "a<b&\"c'\\d\n\u{1}";
        let json = GatewayError::NoRoute.to_response(id, OutcomeFormat::Json);
        let value: serde_json::Value = serde_json::from_str(body(&json)).unwrap();
        let diagnostics = value["issue"][0]["diagnostics"].as_str().unwrap();
        assert!(diagnostics.ends_with(id), "{diagnostics}");

        let xml = GatewayError::NoRoute.to_response(id, OutcomeFormat::Xml);
        assert!(
            body(&xml).contains(r#"Request id: a&lt;b&amp;&quot;c&apos;\d&#10;"#),
            "{}",
            body(&xml)
        );
        assert!(!body(&xml).contains('\u{1}'));
    }

    #[test]
    fn nothing_private_reaches_the_body() {
        for (error, _, _) in all() {
            for format in [OutcomeFormat::Json, OutcomeFormat::Xml] {
                let response = error.to_response("req-42", format);
                let body = body(&response);
                for private in [
                    "10.1.2.3",
                    "9443",
                    "dest.internal",
                    "refused",
                    "/srv",
                    "panic",
                ] {
                    assert!(!body.contains(private), "{error}: {body}");
                }
            }
        }
    }

    #[test]
    fn the_log_keeps_the_cause() {
        let error = GatewayError::Upstream {
            kind: UpstreamFailure::Refused,
            source: "connect to 10.1.2.3:9443 dest.internal".into(),
        };
        let source = std::error::Error::source(&error).unwrap().to_string();
        assert!(source.contains("dest.internal"));
    }

    #[test]
    fn rate_limit_and_a_busy_route_say_when_to_retry() {
        let response = GatewayError::RateLimited {
            retry_after_secs: 7,
        }
        .to_response("r", OutcomeFormat::Json);
        assert_eq!(response.headers()[RETRY_AFTER], "7");
        let response = GatewayError::RouteBusy.to_response("r", OutcomeFormat::Json);
        assert_eq!(response.headers()[RETRY_AFTER], "1");
        for (error, _, _) in all() {
            let response = error.to_response("r", OutcomeFormat::Json);
            assert_eq!(
                response.headers().contains_key(RETRY_AFTER),
                matches!(
                    error,
                    GatewayError::RateLimited { .. } | GatewayError::RouteBusy
                ),
                "{error}"
            );
        }
    }

    fn accept(value: &'static str) -> HeaderMap {
        let mut h = HeaderMap::new();
        h.insert(ACCEPT, HeaderValue::from_static(value));
        h
    }

    #[test]
    fn format_from_the_query() {
        let none = HeaderMap::new();
        assert_eq!(outcome_format(&none, None), OutcomeFormat::Json);
        for query in [
            "_format=xml",
            "_format=XML",
            "_format=text/xml",
            "_format=application/xml",
            "_format=application/fhir+xml",
            "_format=application/fhir%2Bxml",
            "_format=application%2Ffhir%2bxml",
            "a=1&_format=application/fhir+xml&b=2",
        ] {
            assert_eq!(
                outcome_format(&none, Some(query)),
                OutcomeFormat::Xml,
                "{query}"
            );
        }
        for query in [
            "_format=json",
            "_format=application/fhir+json",
            "_format=",
            "name=xml",
            "x_format=xml",
        ] {
            assert_eq!(
                outcome_format(&none, Some(query)),
                OutcomeFormat::Json,
                "{query}"
            );
        }
        // `_format` wins over `Accept`, both ways.
        let xml = accept("application/fhir+xml");
        assert_eq!(
            outcome_format(&xml, Some("_format=json")),
            OutcomeFormat::Json
        );
        let json = accept("application/fhir+json");
        assert_eq!(
            outcome_format(&json, Some("_format=xml")),
            OutcomeFormat::Xml
        );
    }

    #[test]
    fn format_from_accept() {
        for (value, expected) in [
            ("application/fhir+xml", OutcomeFormat::Xml),
            ("application/xml", OutcomeFormat::Xml),
            ("Text/XML", OutcomeFormat::Xml),
            ("application/fhir+json", OutcomeFormat::Json),
            ("*/*", OutcomeFormat::Json),
            (
                "application/fhir+json, application/fhir+xml",
                OutcomeFormat::Json,
            ),
            (
                "application/fhir+json, application/fhir+xml;q=0.5",
                OutcomeFormat::Json,
            ),
            (
                "application/fhir+json;q=0.5, application/fhir+xml",
                OutcomeFormat::Xml,
            ),
            (
                "application/fhir+xml;q=0.9, application/json; q=0.8",
                OutcomeFormat::Xml,
            ),
            ("application/fhir+xml;q=0", OutcomeFormat::Json),
            ("application/fhir+xml;q=abc", OutcomeFormat::Xml),
        ] {
            assert_eq!(outcome_format(&accept(value), None), expected, "{value}");
        }
        let mut two_lines = accept("application/fhir+xml");
        two_lines.append(ACCEPT, HeaderValue::from_static("application/json"));
        assert_eq!(outcome_format(&two_lines, None), OutcomeFormat::Json);
    }
}
