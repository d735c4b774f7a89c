//! The `googclient_` trace-context attributes of Google's Pub/Sub client libraries.
//!
//! Google's clients (Python, Go, Java, Node) write W3C trace context into the message
//! attributes `googclient_traceparent` / `googclient_tracestate`, whatever propagator the
//! application configured, and their subscribers read only those keys. Writing them makes our
//! messages continue in their subscribers; preferring them when reading makes theirs continue
//! in ours.

use mqtrace::w3c;
use mqtrace::{ContextIssue, instrument::Extracted};
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceState};
use std::collections::HashMap;

/// The attribute Google's Pub/Sub clients carry the W3C `traceparent` in.
pub const GOOGCLIENT_TRACEPARENT: &str = "googclient_traceparent";
/// The attribute Google's Pub/Sub clients carry the W3C `tracestate` in.
pub const GOOGCLIENT_TRACESTATE: &str = "googclient_tracestate";

/// How the `googclient_` trace-context attributes of Google's client libraries are handled.
///
/// ```
/// use mqtrace_pubsub::GoogleContext;
/// assert_eq!(GoogleContext::default(), GoogleContext::ReadWrite);
/// assert!(GoogleContext::ReadOnly.reads() && !GoogleContext::ReadOnly.writes());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum GoogleContext {
    /// Publishers write `googclient_traceparent` / `googclient_tracestate` beside the
    /// propagator's attributes; subscribers prefer them over the propagator's span context. The
    /// default.
    #[default]
    ReadWrite,
    /// Subscribers prefer them; publishers do not write them.
    ReadOnly,
    /// Only the configured propagator's attributes are written and read.
    Off,
}

impl GoogleContext {
    /// Whether publishers write the `googclient_` attributes.
    ///
    /// ```
    /// assert!(mqtrace_pubsub::GoogleContext::ReadWrite.writes());
    /// ```
    pub fn writes(self) -> bool {
        self == Self::ReadWrite
    }

    /// Whether subscribers read the `googclient_` attributes.
    ///
    /// ```
    /// assert!(!mqtrace_pubsub::GoogleContext::Off.reads());
    /// ```
    pub fn reads(self) -> bool {
        self != Self::Off
    }
}

/// Writes `sc` as `googclient_traceparent` (and a non-empty `googclient_tracestate`).
/// Whether `key` is one of the `googclient_*` context attributes.
pub(crate) fn is_field(key: &str) -> bool {
    key == GOOGCLIENT_TRACEPARENT || key == GOOGCLIENT_TRACESTATE
}

pub(crate) fn inject(sc: &SpanContext, attributes: &mut HashMap<String, String>) {
    if !sc.is_valid() {
        return;
    }
    attributes.insert(
        GOOGCLIENT_TRACEPARENT.to_owned(),
        w3c::encode_traceparent(sc),
    );
    if *sc.trace_state() != TraceState::NONE {
        let ts = sc.trace_state().header();
        if !ts.is_empty() {
            attributes.insert(GOOGCLIENT_TRACESTATE.to_owned(), ts);
        }
    }
}

/// Prefers a valid `googclient_traceparent` over the span context the propagator found in
/// `plain`; the baggage (and what was said about it) comes from `plain`. An unreadable
/// `googclient_traceparent` is reported and `plain` is kept.
pub(crate) fn prefer(attributes: &HashMap<String, String>, plain: Extracted) -> Extracted {
    let Some(value) = attributes.get(GOOGCLIENT_TRACEPARENT) else {
        return plain;
    };
    // Our own messages carry the same values under both names: nothing to re-read.
    if plain.issues().is_empty()
        && plain.span_context().is_valid()
        && attributes.get(w3c::TRACEPARENT) == Some(value)
        && attributes.get(w3c::TRACESTATE) == attributes.get(GOOGCLIENT_TRACESTATE)
    {
        return plain;
    }
    match w3c::parse_traceparent(value) {
        Err(e) => {
            let mut issues = plain.issues().to_vec();
            issues.push(ContextIssue::new(GOOGCLIENT_TRACEPARENT, e));
            Extracted::from_parts(plain.context().clone(), issues)
        }
        Ok(sc) => {
            // What the propagator said about its own span-context headers no longer matters.
            let mut issues: Vec<ContextIssue> = plain
                .issues()
                .iter()
                .filter(|i| i.header() == w3c::BAGGAGE)
                .cloned()
                .collect();
            let sc = match attributes.get(GOOGCLIENT_TRACESTATE) {
                Some(ts) if !ts.trim().is_empty() => match w3c::parse_tracestate(ts) {
                    Some(state) => {
                        SpanContext::new(sc.trace_id(), sc.span_id(), sc.trace_flags(), true, state)
                    }
                    None => {
                        issues.push(ContextIssue::new(
                            GOOGCLIENT_TRACESTATE,
                            "invalid list; trace state dropped",
                        ));
                        sc
                    }
                },
                _ => sc,
            };
            Extracted::from_parts(plain.context().with_remote_span_context(sc), issues)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use opentelemetry::baggage::BaggageExt;

    const OURS: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
    const GOOGLE: &str = "00-11111111111111111111111111111111-2222222222222222-01";

    fn attrs(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn googclient_key_wins_and_baggage_stays() {
        let a = attrs(&[
            ("traceparent", OURS),
            ("baggage", "tenant=acme"),
            (GOOGCLIENT_TRACEPARENT, GOOGLE),
            (GOOGCLIENT_TRACESTATE, "rojo=00f067aa0ba902b7"),
        ]);
        let x = prefer(&a, mqtrace::Propagation::W3c.extract(&a));
        assert_eq!(
            x.span_context().trace_id().to_string(),
            "11111111111111111111111111111111"
        );
        assert_eq!(
            x.span_context().trace_state().get("rojo"),
            Some("00f067aa0ba902b7")
        );
        assert!(x.span_context().is_remote());
        assert_eq!(
            x.context().baggage().get("tenant").map(|v| v.as_str()),
            Some("acme")
        );
        assert!(x.issues().is_empty(), "{:?}", x.issues());
    }

    #[test]
    fn plain_keys_are_the_fallback_and_a_bad_googclient_value_is_reported() {
        let a = attrs(&[("traceparent", OURS), (GOOGCLIENT_TRACEPARENT, "garbage")]);
        let x = prefer(&a, mqtrace::Propagation::W3c.extract(&a));
        assert_eq!(
            x.span_context().trace_id().to_string(),
            "0af7651916cd43dd8448eb211c80319c"
        );
        assert_eq!(
            x.issues()[0].to_string(),
            "googclient_traceparent: length 7, expected 55"
        );
        let plain_only = attrs(&[("traceparent", OURS)]);
        let y = prefer(&plain_only, mqtrace::Propagation::W3c.extract(&plain_only));
        assert!(y.span_context().is_valid() && y.issues().is_empty());
    }

    #[test]
    fn a_bad_plain_traceparent_does_not_matter_when_googclient_is_valid() {
        let a = attrs(&[("traceparent", "nope"), (GOOGCLIENT_TRACEPARENT, GOOGLE)]);
        let x = prefer(&a, mqtrace::Propagation::W3c.extract(&a));
        assert!(x.span_context().is_valid());
        assert!(x.issues().is_empty(), "{:?}", x.issues());
    }

    #[test]
    fn identical_copies_keep_the_propagator_result() {
        let a = attrs(&[
            ("traceparent", OURS),
            ("tracestate", "rojo=1"),
            (GOOGCLIENT_TRACEPARENT, OURS),
            (GOOGCLIENT_TRACESTATE, "rojo=1"),
        ]);
        let x = prefer(&a, mqtrace::Propagation::W3c.extract(&a));
        assert_eq!(x.span_context().trace_state().get("rojo"), Some("1"));
        assert!(x.issues().is_empty());
    }

    #[test]
    fn inject_writes_w3c_and_skips_an_empty_state() {
        let sc = mqtrace::w3c::parse_traceparent(OURS).expect("valid");
        let mut a = attrs(&[("user", "kept")]);
        inject(&sc, &mut a);
        assert_eq!(a[GOOGCLIENT_TRACEPARENT], OURS);
        assert!(!a.contains_key(GOOGCLIENT_TRACESTATE));
        assert_eq!(a["user"], "kept");
    }
}
