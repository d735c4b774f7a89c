//! Trace context carried in a JSON payload instead of headers (feature `json`).
//!
//! Some paths cannot carry headers (a payload stored and replayed, a broker bridge that drops
//! them, older producers). This carrier writes the propagator's fields under a
//! `"trace_context"` object of a JSON message, and reads either that object or the flat
//! `"trace_id"` / `"parent_span_id"` fields older producers wrote.
//!
//! ```
//! use serde_json::json;
//! use mqtrace::{Propagation, envelope};
//! let msg = json!({
//!     "order": 7,
//!     "trace_context": {"traceparent": "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"}
//! });
//! let x = envelope::extract(&Propagation::W3c, &msg);
//! assert_eq!(x.span_context().span_id().to_string(), "b7ad6b7169203331");
//!
//! let legacy = json!({"trace_id": "0af7651916cd43dd8448eb211c80319c", "parent_span_id": "b7ad6b7169203331"});
//! assert!(envelope::extract(&Propagation::W3c, &legacy).span_context().is_valid());
//! ```

use crate::carrier::{HeaderExtractor, InvalidHeader};
use crate::propagation::{ContextIssue, Extracted, Propagation};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, propagation::Injector};
use serde_json::{Map, Value};

/// The key of the object holding the propagator's fields.
pub const TRACE_CONTEXT: &str = "trace_context";
/// The flat legacy trace id field (32 hex digits; 16 digits are zero-extended; UUID form accepted).
pub const TRACE_ID: &str = "trace_id";
/// The flat legacy parent span id field (16 hex digits).
pub const PARENT_SPAN_ID: &str = "parent_span_id";
/// The optional flat legacy sampled flag (boolean); absent means sampled.
pub const SAMPLED: &str = "sampled";

struct ObjectInjector<'a>(&'a mut Map<String, Value>);

impl Injector for ObjectInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0.insert(key.to_owned(), Value::String(value));
    }
}

struct ObjectExtractor<'a>(&'a Map<String, Value>);

impl HeaderExtractor for ObjectExtractor<'_> {
    fn header(&self, key: &str) -> Option<Result<&str, InvalidHeader>> {
        Some(match self.0.get(key)? {
            Value::String(s) => Ok(s.as_str()),
            Value::Array(a) => Err(InvalidHeader::Multiple(a.len())),
            Value::Null => Err(InvalidHeader::WrongType("null")),
            Value::Bool(_) => Err(InvalidHeader::WrongType("bool")),
            Value::Number(_) => Err(InvalidHeader::WrongType("number")),
            Value::Object(_) => Err(InvalidHeader::WrongType("object")),
        })
    }

    fn header_keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Writes `span_context` (and the baggage of `cx`) under `"trace_context"` in `message`,
/// which must be a JSON object; other values are left unchanged and `false` is returned.
///
/// ```
/// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
/// let sc = SpanContext::new(TraceId::from(1_u128), SpanId::from(2_u64), TraceFlags::SAMPLED, false, TraceState::NONE);
/// let mut msg = serde_json::json!({"order": 7});
/// assert!(mqtrace::envelope::inject(&mqtrace::Propagation::W3c, &sc, &opentelemetry::Context::new(), &mut msg));
/// assert_eq!(msg["order"], 7);
/// assert!(msg["trace_context"]["traceparent"].is_string());
/// ```
pub fn inject(
    propagation: &Propagation,
    span_context: &SpanContext,
    cx: &Context,
    message: &mut Value,
) -> bool {
    let Value::Object(obj) = message else {
        return false;
    };
    let mut fields = Map::new();
    propagation.inject(span_context, cx, &mut ObjectInjector(&mut fields));
    if !fields.is_empty() {
        obj.insert(TRACE_CONTEXT.to_owned(), Value::Object(fields));
    }
    true
}

/// Reads the creation context from a JSON message: the `"trace_context"` object when present,
/// otherwise the flat legacy fields. Problems are returned as issues, never as a panic.
///
/// ```
/// let x = mqtrace::envelope::extract(&mqtrace::Propagation::W3c, &serde_json::json!({"trace_id": "trace-12ab"}));
/// assert!(!x.span_context().is_valid());
/// assert_eq!(x.issues()[0].header(), "trace_id");
/// ```
pub fn extract(propagation: &Propagation, message: &Value) -> Extracted {
    let Value::Object(obj) = message else {
        return Extracted::default();
    };
    match obj.get(TRACE_CONTEXT) {
        Some(Value::Object(fields)) => propagation.extract(&ObjectExtractor(fields)),
        Some(other) => Extracted::from_parts(
            Context::new(),
            vec![ContextIssue::new(
                TRACE_CONTEXT,
                format!("expected an object, found {}", json_type(other)),
            )],
        ),
        None => extract_flat(obj),
    }
}

fn json_type(v: &Value) -> &'static str {
    match v {
        Value::Null => "null",
        Value::Bool(_) => "bool",
        Value::Number(_) => "number",
        Value::String(_) => "string",
        Value::Array(_) => "array",
        Value::Object(_) => "object",
    }
}

fn extract_flat(obj: &Map<String, Value>) -> Extracted {
    let (Some(tid), span) = (obj.get(TRACE_ID), obj.get(PARENT_SPAN_ID)) else {
        return Extracted::default();
    };
    let mut issues = Vec::new();
    let trace_id = match tid {
        Value::String(s) => parse_trace_id(s),
        _ => None,
    };
    if trace_id.is_none() {
        issues.push(ContextIssue::new(
            TRACE_ID,
            "not a 128-bit or 64-bit hex id",
        ));
    }
    let span_id = match span {
        Some(Value::String(s)) => parse_span_id(s),
        _ => None,
    };
    if span_id.is_none() {
        issues.push(ContextIssue::new(
            PARENT_SPAN_ID,
            "missing or not a 64-bit hex id",
        ));
    }
    let sampled = !matches!(obj.get(SAMPLED), Some(Value::Bool(false)));
    match (trace_id, span_id) {
        (Some(t), Some(s)) => {
            let flags = if sampled {
                TraceFlags::SAMPLED
            } else {
                TraceFlags::NOT_SAMPLED
            };
            let sc = SpanContext::new(t, s, flags, true, TraceState::NONE);
            Extracted::from_parts(Context::new().with_remote_span_context(sc), issues)
        }
        _ => Extracted::from_parts(Context::new(), issues),
    }
}

fn parse_trace_id(s: &str) -> Option<TraceId> {
    let hex: String = s.chars().filter(|c| *c != '-').collect();
    if !(hex.len() == 32 || hex.len() == 16) || !hex.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u128::from_str_radix(&hex, 16).ok()?;
    (id != 0).then(|| TraceId::from(id))
}

fn parse_span_id(s: &str) -> Option<SpanId> {
    if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
        return None;
    }
    let id = u64::from_str_radix(s, 16).ok()?;
    (id != 0).then(|| SpanId::from(id))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn round_trip_through_the_envelope() {
        let sc = SpanContext::new(
            TraceId::from(0xabc_u128),
            SpanId::from(0xdef_u64),
            TraceFlags::SAMPLED,
            false,
            TraceState::NONE,
        );
        let mut msg = json!({"id": 1});
        assert!(inject(&Propagation::W3c, &sc, &Context::new(), &mut msg));
        let x = extract(&Propagation::W3c, &msg);
        assert_eq!(x.span_context().trace_id(), sc.trace_id());
        assert_eq!(x.span_context().span_id(), sc.span_id());
        assert!(x.issues().is_empty());
    }

    #[test]
    fn flat_fields_in_several_spellings() {
        for tid in [
            "0af7651916cd43dd8448eb211c80319c",
            "0AF7651916CD43DD8448EB211C80319C",
            "0af76519-16cd-43dd-8448-eb211c80319c",
        ] {
            let x = extract(
                &Propagation::W3c,
                &json!({"trace_id": tid, "parent_span_id": "b7ad6b7169203331"}),
            );
            assert_eq!(
                x.span_context().trace_id(),
                TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
                "{tid}"
            );
        }
        let x = extract(
            &Propagation::W3c,
            &json!({"trace_id": "8448eb211c80319c", "parent_span_id": "b7ad6b7169203331", "sampled": false}),
        );
        assert_eq!(
            x.span_context().trace_id(),
            TraceId::from(0x8448eb211c80319c_u128)
        );
        assert!(!x.span_context().is_sampled());
    }

    #[test]
    fn wrong_shapes_are_issues_not_panics() {
        let x = extract(&Propagation::W3c, &json!({"trace_context": "00-abc"}));
        assert_eq!(x.issues()[0].header(), TRACE_CONTEXT);
        let x = extract(
            &Propagation::W3c,
            &json!({"trace_context": {"traceparent": 5}}),
        );
        assert_eq!(
            x.issues()[0].to_string(),
            "traceparent: value has type number, expected a string"
        );
        let x = extract(
            &Propagation::W3c,
            &json!({"trace_id": 5, "parent_span_id": null}),
        );
        assert_eq!(x.issues().len(), 2);
        assert!(
            !extract(&Propagation::W3c, &json!([1, 2]))
                .span_context()
                .is_valid()
        );
    }
}
