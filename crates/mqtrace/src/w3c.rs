//! A direct codec for the W3C `traceparent`, `tracestate` and `baggage` headers.
//!
//! The generic propagator path formats `traceparent` through `format!` and always writes a
//! `tracestate` header, even an empty one. This module writes the same bytes with a direct hex
//! encode, skips an empty `tracestate`, and, when reading, says *why* a header was rejected so
//! the consumer span can record the reason.

use opentelemetry::baggage::{Baggage, BaggageMetadata};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use std::fmt;

/// Header name of the W3C trace parent.
pub const TRACEPARENT: &str = "traceparent";
/// Header name of the W3C trace state.
pub const TRACESTATE: &str = "tracestate";
/// Header name of the W3C baggage.
pub const BAGGAGE: &str = "baggage";

/// Largest `baggage` header accepted, in bytes (W3C Baggage, "Limits").
pub const MAX_BAGGAGE_BYTES: usize = 8192;
/// Largest number of baggage members accepted (the OpenTelemetry API keeps at most this many).
pub const MAX_BAGGAGE_MEMBERS: usize = 64;

/// The `random-trace-id` flag of `trace-flags` (W3C Trace Context Level 2).
pub const FLAG_RANDOM: u8 = 0x02;
/// The flags mqtrace reads and writes: `sampled` and `random-trace-id`. Other bits are
/// reserved; the specification says to set them to zero.
pub const KNOWN_FLAGS: u8 = 0x03;

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Encodes a span context as a version-00 `traceparent` value.
///
/// The `sampled` and `random-trace-id` flags are written (Level 2: a random flag received
/// MUST be propagated); reserved bits are written as zero.
///
/// ```
/// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
/// let sc = SpanContext::new(
///     TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
///     SpanId::from(0xb7ad6b7169203331_u64),
///     TraceFlags::SAMPLED,
///     true,
///     TraceState::default(),
/// );
/// assert_eq!(
///     mqtrace::w3c::encode_traceparent(&sc),
///     "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
/// );
/// ```
pub fn encode_traceparent(sc: &SpanContext) -> String {
    encode_traceparent_parts(sc.trace_id(), sc.span_id(), sc.trace_flags().to_u8())
}

/// Encodes a version-00 `traceparent` from its parts; of `flags`, only the known bits
/// ([`KNOWN_FLAGS`]) are written.
///
/// ```
/// use opentelemetry::trace::{SpanId, TraceId};
/// assert_eq!(
///     mqtrace::w3c::encode_traceparent_parts(TraceId::from(1_u128), SpanId::from(2_u64), 0xff),
///     "00-00000000000000000000000000000001-0000000000000002-03"
/// );
/// ```
pub fn encode_traceparent_parts(trace_id: TraceId, span_id: SpanId, flags: u8) -> String {
    let mut out = [0u8; 55];
    out[0] = b'0';
    out[1] = b'0';
    out[2] = b'-';
    hex_into(&trace_id.to_bytes(), &mut out[3..35]);
    out[35] = b'-';
    hex_into(&span_id.to_bytes(), &mut out[36..52]);
    out[52] = b'-';
    let flags = flags & KNOWN_FLAGS;
    out[53] = HEX[usize::from(flags >> 4)];
    out[54] = HEX[usize::from(flags & 0xf)];
    // Every byte written above is ASCII, so this never fails; the fallback keeps it panic-free.
    String::from_utf8(out.to_vec()).unwrap_or_default()
}

fn hex_into(bytes: &[u8], out: &mut [u8]) {
    for (i, b) in bytes.iter().enumerate() {
        out[2 * i] = HEX[usize::from(b >> 4)];
        out[2 * i + 1] = HEX[usize::from(b & 0xf)];
    }
}

/// Why a `traceparent` value was rejected.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TraceparentError {
    /// Empty value.
    Empty,
    /// Not the length the version requires.
    Length(usize),
    /// A `-` is missing where the format puts one.
    Delimiter,
    /// The version is not two lowercase hex digits.
    Version,
    /// Version `ff`, which the specification forbids.
    ForbiddenVersion,
    /// The trace id is not 32 lowercase hex digits.
    TraceIdHex,
    /// The parent (span) id is not 16 lowercase hex digits.
    ParentIdHex,
    /// The flags are not two lowercase hex digits.
    FlagsHex,
    /// The trace id is all zeros.
    ZeroTraceId,
    /// The parent id is all zeros.
    ZeroParentId,
}

impl fmt::Display for TraceparentError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Empty => f.write_str("empty value"),
            Self::Length(n) => write!(f, "length {n}, expected 55"),
            Self::Delimiter => f.write_str("missing '-' delimiter"),
            Self::Version => f.write_str("version is not 2 lowercase hex digits"),
            Self::ForbiddenVersion => f.write_str("version ff is forbidden"),
            Self::TraceIdHex => f.write_str("trace-id is not 32 lowercase hex digits"),
            Self::ParentIdHex => f.write_str("parent-id is not 16 lowercase hex digits"),
            Self::FlagsHex => f.write_str("trace-flags is not 2 lowercase hex digits"),
            Self::ZeroTraceId => f.write_str("trace-id is all zeros"),
            Self::ZeroParentId => f.write_str("parent-id is all zeros"),
        }
    }
}

impl std::error::Error for TraceparentError {}

fn hex_val(c: u8) -> Option<u8> {
    match c {
        b'0'..=b'9' => Some(c - b'0'),
        b'a'..=b'f' => Some(c - b'a' + 10),
        _ => None,
    }
}

fn decode_hex<const N: usize>(s: &[u8]) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, pair) in s.chunks_exact(2).enumerate() {
        out[i] = (hex_val(pair[0])? << 4) | hex_val(pair[1])?;
    }
    Some(out)
}

/// Parses a `traceparent` value into a remote span context (without trace state).
///
/// Follows W3C Trace Context level 1: lowercase hex only, version `ff` forbidden, all-zero ids
/// rejected; versions above `00` are read by their first four fields, as the specification
/// asks of a version-00 parser. Of the flags, `sampled` and `random-trace-id` are kept and
/// the reserved bits cleared.
///
/// ```
/// use mqtrace::w3c::{parse_traceparent, TraceparentError};
/// let sc = parse_traceparent("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01").unwrap();
/// assert!(sc.is_sampled() && sc.is_remote());
/// assert_eq!(
///     parse_traceparent("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
///     Err(TraceparentError::ZeroTraceId)
/// );
/// ```
pub fn parse_traceparent(value: &str) -> Result<SpanContext, TraceparentError> {
    let v = value.trim_matches(|c| c == ' ' || c == '\t').as_bytes();
    if v.is_empty() {
        return Err(TraceparentError::Empty);
    }
    if v.len() < 55 {
        return Err(TraceparentError::Length(v.len()));
    }
    let version = decode_hex::<1>(&v[0..2]).ok_or(TraceparentError::Version)?[0];
    if version == 0xff {
        return Err(TraceparentError::ForbiddenVersion);
    }
    if version == 0 && v.len() != 55 {
        return Err(TraceparentError::Length(v.len()));
    }
    if version > 0 && v.len() > 55 && v[55] != b'-' {
        return Err(TraceparentError::Delimiter);
    }
    if v[2] != b'-' || v[35] != b'-' || v[52] != b'-' {
        return Err(TraceparentError::Delimiter);
    }
    let trace_id = decode_hex::<16>(&v[3..35]).ok_or(TraceparentError::TraceIdHex)?;
    let span_id = decode_hex::<8>(&v[36..52]).ok_or(TraceparentError::ParentIdHex)?;
    let flags = decode_hex::<1>(&v[53..55]).ok_or(TraceparentError::FlagsHex)?[0];
    let trace_id = TraceId::from_bytes(trace_id);
    let span_id = SpanId::from_bytes(span_id);
    if trace_id == TraceId::INVALID {
        return Err(TraceparentError::ZeroTraceId);
    }
    if span_id == SpanId::INVALID {
        return Err(TraceparentError::ZeroParentId);
    }
    Ok(SpanContext::new(
        trace_id,
        span_id,
        TraceFlags::new(flags & KNOWN_FLAGS),
        true,
        TraceState::NONE,
    ))
}

/// Largest number of `tracestate` list members (W3C Trace Context: more makes the list invalid).
pub const MAX_TRACESTATE_MEMBERS: usize = 32;

/// Largest combined `tracestate` read, in bytes: 32 members of the largest size (513 bytes)
/// with generous white space. W3C sets no upper bound (only "at least 512"); this one keeps a
/// hostile header of a megabyte of commas from being scanned on every message.
pub const MAX_TRACESTATE_BYTES: usize = 32 * 1024;

/// Why a `tracestate` value was discarded (W3C: an invalid list is discarded whole).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum TracestateError {
    /// Longer than [`MAX_TRACESTATE_BYTES`].
    TooLong(usize),
    /// More than [`MAX_TRACESTATE_MEMBERS`] list members.
    TooManyMembers(usize),
    /// A list member without `=`.
    NoEquals,
    /// A key that does not follow the key grammar (lowercase letter or digit first, then up to
    /// 255 of `a-z 0-9 _ - * / @`).
    Key,
    /// A value that is empty, longer than 256 characters, or has a character outside
    /// printable ASCII (tabs, non-ASCII), a `,` or a `=`.
    Value,
}

impl fmt::Display for TracestateError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLong(n) => write!(
                f,
                "{n} bytes exceeds the {MAX_TRACESTATE_BYTES}-byte limit; trace state dropped"
            ),
            Self::TooManyMembers(n) => write!(
                f,
                "{n} list members exceeds the {MAX_TRACESTATE_MEMBERS}-member limit; trace state dropped"
            ),
            Self::NoEquals => f.write_str("list member without '='; trace state dropped"),
            Self::Key => f.write_str("invalid key; trace state dropped"),
            Self::Value => f.write_str("invalid value; trace state dropped"),
        }
    }
}

impl std::error::Error for TracestateError {}

fn is_ows(c: char) -> bool {
    c == ' ' || c == '\t'
}

/// W3C Trace Context key: `( lcalpha / DIGIT ) 0*255 ( lcalpha / DIGIT / "_" / "-" / "*" / "/" / "@" )`.
fn valid_tracestate_key(key: &str) -> bool {
    let b = key.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && (b[0].is_ascii_lowercase() || b[0].is_ascii_digit())
        && b.iter().all(|&c| {
            c.is_ascii_lowercase()
                || c.is_ascii_digit()
                || matches!(c, b'_' | b'-' | b'*' | b'/' | b'@')
        })
}

/// W3C Trace Context value: `0*255(chr) nblk-chr` (trailing spaces are optional white space).
fn valid_tracestate_value(value: &str) -> bool {
    let b = value.as_bytes();
    !b.is_empty()
        && b.len() <= 256
        && b[b.len() - 1] != b' '
        && b.iter()
            .all(|&c| (0x20..=0x7e).contains(&c) && c != b',' && c != b'=')
}

/// Splits a `tracestate` value into its `(key, value)` list members, validated by the W3C
/// Trace Context grammar (multi-tenant keys with `@` included). Empty and white-space-only
/// members are skipped, as the specification allows; any invalid member, or more than
/// [`MAX_TRACESTATE_MEMBERS`] members, makes the whole list invalid.
///
/// ```
/// use mqtrace::w3c::{tracestate_members, TracestateError};
/// let m = tracestate_members("foo@bar@baz=1, ,rojo=00f067aa0ba902b7").unwrap();
/// assert_eq!(m, [("foo@bar@baz", "1"), ("rojo", "00f067aa0ba902b7")]);
/// assert_eq!(tracestate_members("foo=,bar=3"), Err(TracestateError::Value));
/// assert_eq!(tracestate_members("=1"), Err(TracestateError::Key));
/// ```
pub fn tracestate_members(value: &str) -> Result<Vec<(&str, &str)>, TracestateError> {
    if value.len() > MAX_TRACESTATE_BYTES {
        return Err(TracestateError::TooLong(value.len()));
    }
    let mut out = Vec::new();
    for member in value.split(',') {
        let member = member.trim_matches(is_ows);
        if member.is_empty() {
            continue;
        }
        let (k, v) = member.split_once('=').ok_or(TracestateError::NoEquals)?;
        if !valid_tracestate_key(k) {
            return Err(TracestateError::Key);
        }
        if !valid_tracestate_value(v) {
            return Err(TracestateError::Value);
        }
        out.push((k, v));
    }
    if out.len() > MAX_TRACESTATE_MEMBERS {
        return Err(TracestateError::TooManyMembers(out.len()));
    }
    Ok(out)
}

/// Parses a `tracestate` value into OpenTelemetry's [`TraceState`]; `None` when the list is
/// invalid by the W3C grammar ([`tracestate_members`]) and so is dropped.
///
/// OpenTelemetry's `TraceState` still checks keys by an older grammar (one `@`, at most 14
/// characters after it); members it cannot hold are left out of the returned value. mqtrace's
/// own propagation keeps and forwards them (see [`crate::Propagation`]).
///
/// ```
/// let ts = mqtrace::w3c::parse_tracestate("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").unwrap();
/// assert_eq!(ts.get("rojo"), Some("00f067aa0ba902b7"));
/// assert!(mqtrace::w3c::parse_tracestate("no equals sign").is_none());
/// assert!(mqtrace::w3c::parse_tracestate("foo==bar").is_none());
/// ```
pub fn parse_tracestate(value: &str) -> Option<TraceState> {
    let members = tracestate_members(value).ok()?;
    Some(otel_tracestate(&members).0)
}

/// The members OpenTelemetry's `TraceState` can hold, and whether that was all of them.
pub(crate) fn otel_tracestate(members: &[(&str, &str)]) -> (TraceState, bool) {
    if let Ok(ts) = TraceState::from_key_value(members.iter().copied()) {
        return (ts, true);
    }
    let kept = members
        .iter()
        .copied()
        .filter(|kv| TraceState::from_key_value([*kv]).is_ok());
    (TraceState::from_key_value(kept).unwrap_or_default(), false)
}

/// Byte classes of the baggage grammar, one table look-up per byte (the header is read on
/// every consumed message; a per-byte search of the token set cost ~15 comparisons a byte).
const BAGGAGE_OCTET: u8 = 1;
const TOKEN_CHAR: u8 = 2;
const CLASSES: [u8; 256] = {
    let mut t = [0_u8; 256];
    let mut b = 0;
    while b < 256 {
        let c = b as u8;
        if matches!(c, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e) {
            t[b] |= BAGGAGE_OCTET;
        }
        if c.is_ascii_alphanumeric()
            || matches!(
                c,
                b'!' | b'#'
                    | b'$'
                    | b'%'
                    | b'&'
                    | b'\''
                    | b'*'
                    | b'+'
                    | b'-'
                    | b'.'
                    | b'^'
                    | b'_'
                    | b'`'
                    | b'|'
                    | b'~'
            )
        {
            t[b] |= TOKEN_CHAR;
        }
        b += 1;
    }
    t
};

/// Characters allowed unescaped in a baggage value (W3C `baggage-octet`).
fn is_baggage_octet(b: u8) -> bool {
    CLASSES[usize::from(b)] & BAGGAGE_OCTET != 0
}

fn is_token_char(b: u8) -> bool {
    CLASSES[usize::from(b)] & TOKEN_CHAR != 0
}

fn is_token(s: &str) -> bool {
    !s.is_empty() && s.bytes().all(is_token_char)
}

fn push_pct(out: &mut String, b: u8) {
    out.push('%');
    out.push(char::from(HEX[usize::from(b >> 4)].to_ascii_uppercase()));
    out.push(char::from(HEX[usize::from(b & 0xf)].to_ascii_uppercase()));
}

/// Percent-encodes a baggage value: everything outside `baggage-octet`, and `%` (W3C
/// Baggage: MUST), plus `=` (MAY; OpenTelemetry's SDKs write it encoded, and so the bytes are
/// the same as theirs).
fn encode_value_into(out: &mut String, value: &str) {
    for &b in value.as_bytes() {
        if is_baggage_octet(b) && b != b'%' && b != b'=' {
            out.push(char::from(b));
        } else {
            push_pct(out, b);
        }
    }
}

fn starts_escape(rest: &[u8]) -> bool {
    rest.len() >= 3 && rest[0] == b'%' && rest[1].is_ascii_hexdigit() && rest[2].is_ascii_hexdigit()
}

/// Encodes a property value that is kept in wire form: a `%` that starts an escape is kept
/// (the value is already encoded), a lone `%` and everything outside `baggage-octet` are
/// encoded. Applying it twice gives the same string.
fn encode_property_value_into(out: &mut String, value: &str) {
    let b = value.as_bytes();
    for (i, &c) in b.iter().enumerate() {
        if (is_baggage_octet(c) && c != b'%') || (c == b'%' && starts_escape(&b[i..])) {
            out.push(char::from(c));
        } else {
            push_pct(out, c);
        }
    }
}

/// Writes baggage metadata as W3C properties (`;k1=v1;k2`): each property trimmed, its value
/// encoded where it holds raw characters (so `p=a,b` cannot break the header), and a property
/// whose key is not a token left out (it cannot be written). Returns false if nothing was written.
fn encode_properties_into(out: &mut String, metadata: &str) {
    for prop in metadata.split(';') {
        let prop = prop.trim_matches(is_ows);
        if prop.is_empty() {
            continue;
        }
        let (k, v) = match prop.split_once('=') {
            Some((k, v)) => (k.trim_matches(is_ows), Some(v.trim_matches(is_ows))),
            None => (prop, None),
        };
        if !is_token(k) {
            continue;
        }
        out.push(';');
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            encode_property_value_into(out, v);
        }
    }
}

/// Encodes baggage as a W3C `baggage` header value.
///
/// Values are percent-encoded (`%` included); metadata is written as properties with their
/// values encoded. Members are added whole while the header stays within
/// [`MAX_BAGGAGE_BYTES`] after encoding; a member that would take it past the limit is left
/// out (never a partial member).
///
/// ```
/// use opentelemetry::baggage::{Baggage, BaggageMetadata};
/// let mut b = Baggage::new();
/// b.insert("tenant", "acme corp");
/// assert_eq!(mqtrace::w3c::encode_baggage(&b), "tenant=acme%20corp");
/// let mut b = Baggage::new();
/// b.insert_with_metadata("k", "10%", BaggageMetadata::from("p=a,b"));
/// assert_eq!(mqtrace::w3c::encode_baggage(&b), "k=10%25;p=a%2Cb");
/// ```
pub fn encode_baggage(baggage: &Baggage) -> String {
    let mut out = String::new();
    let mut member = String::new();
    for (key, (value, metadata)) in baggage.iter() {
        member.clear();
        member.push_str(key.as_str());
        member.push('=');
        encode_value_into(&mut member, value.as_str());
        encode_properties_into(&mut member, metadata.as_str());
        let sep = usize::from(!out.is_empty());
        if out.len() + sep + member.len() > MAX_BAGGAGE_BYTES {
            continue;
        }
        if sep == 1 {
            out.push(',');
        }
        out.push_str(&member);
    }
    out
}

/// Why (part of) a `baggage` header was dropped.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum BaggageError {
    /// The header is longer than [`MAX_BAGGAGE_BYTES`]; all of it was dropped.
    TooLarge(usize),
    /// More than [`MAX_BAGGAGE_MEMBERS`] members; all of it was dropped.
    TooManyMembers(usize),
    /// Some members were malformed and were dropped; the others were kept.
    Malformed(usize),
}

impl fmt::Display for BaggageError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::TooLarge(n) => write!(
                f,
                "{n} bytes exceeds the {MAX_BAGGAGE_BYTES}-byte limit; baggage dropped"
            ),
            Self::TooManyMembers(n) => write!(
                f,
                "{n} members exceeds the {MAX_BAGGAGE_MEMBERS}-member limit; baggage dropped"
            ),
            Self::Malformed(n) => write!(f, "{n} malformed member(s) dropped"),
        }
    }
}

fn hex_digit_any_case(c: u8) -> Option<u8> {
    hex_val(c.to_ascii_lowercase())
}

/// Percent-decodes a baggage value. A `%` not followed by two hex digits is kept as it is
/// (as OpenTelemetry's SDKs do); decoded bytes that are not UTF-8 become U+FFFD (W3C: MUST).
///
/// ```
/// assert_eq!(mqtrace::w3c::percent_decode("Am%C3%A9lie"), "Amélie");
/// assert_eq!(mqtrace::w3c::percent_decode("%FF"), "\u{FFFD}");
/// assert_eq!(mqtrace::w3c::percent_decode("10%"), "10%");
/// ```
pub fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    if !bytes.contains(&b'%') {
        return s.to_owned();
    }
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let decoded = (bytes[i] == b'%')
            .then(|| {
                let hi = hex_digit_any_case(*bytes.get(i + 1)?)?;
                let lo = hex_digit_any_case(*bytes.get(i + 2)?)?;
                Some((hi << 4) | lo)
            })
            .flatten();
        match decoded {
            Some(b) => {
                out.push(b);
                i += 3;
            }
            None => {
                out.push(bytes[i]);
                i += 1;
            }
        }
    }
    match String::from_utf8(out) {
        Ok(s) => s,
        Err(e) => String::from_utf8_lossy(e.as_bytes()).into_owned(),
    }
}

/// The properties of a baggage member's metadata as `(key, decoded value)`: `None` for a
/// property without a value. mqtrace keeps property values in their encoded (wire) form in
/// [`BaggageMetadata`], which OpenTelemetry stores as one `;`-separated string where a decoded
/// `;` would be ambiguous; this decodes them for reading.
///
/// ```
/// use opentelemetry::baggage::BaggageMetadata;
/// let m = BaggageMetadata::from("p=a%2Cb;flag");
/// let props: Vec<_> = mqtrace::w3c::baggage_properties(&m).collect();
/// assert_eq!(props, [("p", Some("a,b".to_owned())), ("flag", None)]);
/// ```
pub fn baggage_properties(
    metadata: &BaggageMetadata,
) -> impl Iterator<Item = (&str, Option<String>)> {
    metadata
        .as_str()
        .split(';')
        .map(|p| p.trim_matches(is_ows))
        .filter(|p| !p.is_empty())
        .map(|p| match p.split_once('=') {
            Some((k, v)) => (
                k.trim_matches(is_ows),
                Some(percent_decode(v.trim_matches(is_ows))),
            ),
            None => (p, None),
        })
}

/// Validates one member's properties and returns them normalised (trimmed, `;`-joined, in
/// wire form), or `None` when one of them is malformed.
fn parse_properties<'a>(props: impl Iterator<Item = &'a str>) -> Option<String> {
    let mut out = String::new();
    for prop in props {
        let prop = prop.trim_matches(is_ows);
        if prop.is_empty() {
            continue;
        }
        let (k, v) = match prop.split_once('=') {
            Some((k, v)) => (k.trim_matches(is_ows), Some(v.trim_matches(is_ows))),
            None => (prop, None),
        };
        if !is_token(k) || !v.is_none_or(|v| v.bytes().all(is_baggage_octet)) {
            return None;
        }
        if !out.is_empty() {
            out.push(';');
        }
        out.push_str(k);
        if let Some(v) = v {
            out.push('=');
            // Normalise: a lone `%` is encoded, as the writer would.
            encode_property_value_into(&mut out, v);
        }
    }
    Some(out)
}

/// Parses a W3C `baggage` header.
///
/// Oversized headers and headers with too many members are dropped whole (W3C forbids
/// propagating a partial list); malformed members (a key that is not a token, raw characters
/// outside `baggage-octet` in a value, a malformed property) are dropped one by one. Either way
/// the reason comes back beside whatever was kept. Values are percent-decoded (invalid UTF-8
/// becomes U+FFFD); properties are validated and kept encoded (see [`baggage_properties`]).
///
/// ```
/// let (b, err) = mqtrace::w3c::parse_baggage("tenant=acme%20corp,bad member,k=v;meta");
/// assert_eq!(b.get("tenant").map(|v| v.as_str()), Some("acme corp"));
/// assert_eq!(b.len(), 2);
/// assert!(err.is_some());
/// ```
pub fn parse_baggage(value: &str) -> (Baggage, Option<BaggageError>) {
    let mut baggage = Baggage::new();
    if value.len() > MAX_BAGGAGE_BYTES {
        return (baggage, Some(BaggageError::TooLarge(value.len())));
    }
    let members = value
        .split(',')
        .filter(|m| !m.trim_matches(is_ows).is_empty())
        .count();
    if members > MAX_BAGGAGE_MEMBERS {
        return (baggage, Some(BaggageError::TooManyMembers(members)));
    }
    let mut malformed = 0;
    for member in value.split(',') {
        let member = member.trim_matches(is_ows);
        if member.is_empty() {
            continue;
        }
        let mut parts = member.split(';');
        let kv = parts.next().unwrap_or_default();
        let Some((k, v)) = kv.split_once('=') else {
            malformed += 1;
            continue;
        };
        let k = k.trim_matches(is_ows);
        let v = v.trim_matches(is_ows);
        if !is_token(k) || !v.bytes().all(is_baggage_octet) {
            malformed += 1;
            continue;
        }
        let Some(meta) = parse_properties(parts) else {
            malformed += 1;
            continue;
        };
        baggage.insert_with_metadata(k.to_owned(), percent_decode(v), BaggageMetadata::from(meta));
    }
    let err = (malformed > 0).then_some(BaggageError::Malformed(malformed));
    (baggage, err)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sc(flags: TraceFlags) -> SpanContext {
        SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            flags,
            false,
            TraceState::NONE,
        )
    }

    #[test]
    fn encode_matches_the_specification_example() {
        assert_eq!(
            encode_traceparent(&sc(TraceFlags::SAMPLED)),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
        );
        assert_eq!(
            encode_traceparent(&sc(TraceFlags::NOT_SAMPLED)),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00"
        );
        // The random flag (0x02, level 2) is written; reserved bits are not.
        assert_eq!(
            encode_traceparent(&sc(TraceFlags::new(0x03))),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03"
        );
        assert_eq!(
            encode_traceparent(&sc(TraceFlags::new(0xfe))),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-02"
        );
    }

    #[test]
    fn parse_round_trips_and_keeps_flags() {
        let s = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03";
        let p = parse_traceparent(s).expect("valid");
        assert_eq!(
            p.trace_id(),
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128)
        );
        assert_eq!(p.span_id(), SpanId::from(0xb7ad6b7169203331_u64));
        assert!(p.is_sampled());
        assert!(p.is_remote());
    }

    #[test]
    fn parse_rejects_each_malformation_with_its_reason() {
        use TraceparentError::*;
        let cases = [
            ("", Empty),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331",
                Length(52),
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-x",
                Length(57),
            ),
            (
                "zz-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                Version,
            ),
            (
                "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                ForbiddenVersion,
            ),
            (
                "00-0AF7651916CD43DD8448EB211C80319C-b7ad6b7169203331-01",
                TraceIdHex,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b716920333g-01",
                ParentIdHex,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x",
                FlagsHex,
            ),
            (
                "00-00000000000000000000000000000000-b7ad6b7169203331-01",
                ZeroTraceId,
            ),
            (
                "00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01",
                ZeroParentId,
            ),
            (
                "00_0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                Delimiter,
            ),
        ];
        for (input, want) in cases {
            assert_eq!(parse_traceparent(input), Err(want), "input {input:?}");
        }
    }

    #[test]
    fn future_versions_are_read_by_their_first_fields() {
        let s = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01-what-the-future-holds";
        assert!(parse_traceparent(s).is_ok());
        let s = "cc-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01x";
        assert_eq!(parse_traceparent(s), Err(TraceparentError::Delimiter));
    }

    #[test]
    fn baggage_round_trips_with_escapes_and_metadata() {
        let mut b = Baggage::new();
        b.insert_with_metadata("user", "a b,c;d=é", BaggageMetadata::from("p=1"));
        let enc = encode_baggage(&b);
        assert_eq!(enc, "user=a%20b%2Cc%3Bd%3D%C3%A9;p=1");
        let (back, err) = parse_baggage(&enc);
        assert!(err.is_none());
        let (v, m) = back.get_with_metadata("user").expect("present");
        assert_eq!(v.as_str(), "a b,c;d=é");
        assert_eq!(m.as_str(), "p=1");
    }

    #[test]
    fn oversized_or_crowded_baggage_is_dropped_whole() {
        let big = format!("k={}", "x".repeat(MAX_BAGGAGE_BYTES));
        let (b, err) = parse_baggage(&big);
        assert!(b.is_empty());
        assert_eq!(err, Some(BaggageError::TooLarge(big.len())));
        let many: Vec<String> = (0..65).map(|i| format!("k{i}=v")).collect();
        let (b, err) = parse_baggage(&many.join(","));
        assert!(b.is_empty());
        assert_eq!(err, Some(BaggageError::TooManyMembers(65)));
    }

    #[test]
    fn byte_classes_match_the_grammar_for_every_byte() {
        for b in 0..=255_u8 {
            // W3C Baggage: baggage-octet = %x21 / %x23-2B / %x2D-3A / %x3C-5B / %x5D-7E;
            // RFC 7230 tchar.
            let octet = b == 0x21
                || (0x23..=0x2b).contains(&b)
                || (0x2d..=0x3a).contains(&b)
                || (0x3c..=0x5b).contains(&b)
                || (0x5d..=0x7e).contains(&b);
            let tchar = b.is_ascii_alphanumeric() || "!#$%&'*+-.^_`|~".bytes().any(|t| t == b);
            assert_eq!(is_baggage_octet(b), octet, "{b:#x}");
            assert_eq!(is_token_char(b), tchar, "{b:#x}");
        }
    }
}
