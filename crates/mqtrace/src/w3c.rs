//! A direct codec for the W3C `traceparent`, `tracestate` and `baggage` headers.
//!
//! The generic propagator path formats `traceparent` through `format!` and always writes a
//! `tracestate` header, even an empty one. This module writes the same bytes with a direct hex
//! encode, skips an empty `tracestate`, and, when reading, says *why* a header was rejected so
//! the consumer span can record the reason.

use opentelemetry::baggage::{Baggage, BaggageMetadata};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use std::fmt;
use std::str::FromStr;

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

const HEX: &[u8; 16] = b"0123456789abcdef";

/// Encodes a span context as a version-00 `traceparent` value.
///
/// Only the `sampled` flag is written, as the OpenTelemetry SDK does.
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
    let mut out = [0u8; 55];
    out[0] = b'0';
    out[1] = b'0';
    out[2] = b'-';
    hex_into(&sc.trace_id().to_bytes(), &mut out[3..35]);
    out[35] = b'-';
    hex_into(&sc.span_id().to_bytes(), &mut out[36..52]);
    out[52] = b'-';
    let flags = (sc.trace_flags() & TraceFlags::SAMPLED).to_u8();
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
/// asks of a version-00 parser.
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
        TraceFlags::new(flags),
        true,
        TraceState::NONE,
    ))
}

/// Parses a `tracestate` value; `None` when it is not valid (it is then dropped, per W3C).
///
/// ```
/// let ts = mqtrace::w3c::parse_tracestate("congo=t61rcWkgMzE,rojo=00f067aa0ba902b7").unwrap();
/// assert_eq!(ts.get("rojo"), Some("00f067aa0ba902b7"));
/// assert!(mqtrace::w3c::parse_tracestate("no equals sign").is_none());
/// ```
pub fn parse_tracestate(value: &str) -> Option<TraceState> {
    TraceState::from_str(value).ok()
}

/// Characters allowed unescaped in a baggage value (W3C `baggage-octet`).
fn is_baggage_octet(b: u8) -> bool {
    matches!(b, 0x21 | 0x23..=0x2b | 0x2d..=0x3a | 0x3c..=0x5b | 0x5d..=0x7e)
}

/// Encodes baggage as a W3C `baggage` header value, percent-encoding values.
///
/// ```
/// use opentelemetry::baggage::Baggage;
/// let mut b = Baggage::new();
/// b.insert("tenant", "acme corp");
/// assert_eq!(mqtrace::w3c::encode_baggage(&b), "tenant=acme%20corp");
/// ```
pub fn encode_baggage(baggage: &Baggage) -> String {
    let mut out = String::new();
    for (key, (value, metadata)) in baggage.iter() {
        if !out.is_empty() {
            out.push(',');
        }
        out.push_str(key.as_str());
        out.push('=');
        for &b in value.as_str().as_bytes() {
            if is_baggage_octet(b) {
                out.push(char::from(b));
            } else {
                out.push('%');
                out.push(char::from(HEX[usize::from(b >> 4)].to_ascii_uppercase()));
                out.push(char::from(HEX[usize::from(b & 0xf)].to_ascii_uppercase()));
            }
        }
        if !metadata.as_str().is_empty() {
            out.push(';');
            out.push_str(metadata.as_str());
        }
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

fn is_token_char(b: u8) -> bool {
    b.is_ascii_alphanumeric() || b"!#$%&'*+-.^_`|~".contains(&b)
}

fn percent_decode(s: &str) -> Option<String> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' {
            let hi = bytes.get(i + 1).copied().and_then(hex_digit_any_case)?;
            let lo = bytes.get(i + 2).copied().and_then(hex_digit_any_case)?;
            out.push((hi << 4) | lo);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).ok()
}

fn hex_digit_any_case(c: u8) -> Option<u8> {
    hex_val(c.to_ascii_lowercase())
}

/// Parses a W3C `baggage` header.
///
/// Oversized headers and headers with too many members are dropped whole (W3C forbids
/// propagating a partial list); malformed members are dropped one by one. Either way the
/// reason comes back beside whatever was kept.
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
    let members = value.split(',').filter(|m| !m.trim().is_empty()).count();
    if members > MAX_BAGGAGE_MEMBERS {
        return (baggage, Some(BaggageError::TooManyMembers(members)));
    }
    let mut malformed = 0;
    for member in value.split(',') {
        let member = member.trim_matches(|c| c == ' ' || c == '\t');
        if member.is_empty() {
            continue;
        }
        let (kv, meta) = match member.split_once(';') {
            Some((kv, meta)) => (kv, meta.trim()),
            None => (member, ""),
        };
        let Some((k, v)) = kv.split_once('=') else {
            malformed += 1;
            continue;
        };
        let k = k.trim_matches(|c| c == ' ' || c == '\t');
        let v = v.trim_matches(|c| c == ' ' || c == '\t');
        if k.is_empty() || !k.bytes().all(is_token_char) {
            malformed += 1;
            continue;
        }
        let Some(v) = percent_decode(v) else {
            malformed += 1;
            continue;
        };
        baggage.insert_with_metadata(k.to_owned(), v, BaggageMetadata::from(meta));
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
        // The random flag (0x02, level 2) is not written, as the SDK does.
        assert_eq!(
            encode_traceparent(&sc(TraceFlags::new(0x03))),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"
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
        assert_eq!(enc, "user=a%20b%2Cc%3Bd=%C3%A9;p=1");
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
}
