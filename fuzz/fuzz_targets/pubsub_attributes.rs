//! Pub/Sub attribute maps from a hostile publisher: any UTF-8 keys and values (Pub/Sub's
//! attributes are strings), mixed-case and near-miss propagation names, mqtrace's history
//! attributes. mqtrace-pubsub hands the map to the core as it is (`HashMap<String, String>`
//! is the carrier), so this runs the core's extraction, history, attempt and not-before
//! readers on it, then the injection a republishing handler does: other attributes unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace::Propagation;
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use std::collections::HashMap;
use std::time::Duration;

const KEYS: [&str; 12] = [
    "traceparent",
    "tracestate",
    "baggage",
    "TRACEPARENT",
    "googclient_traceparent",
    "mqtrace-attempt",
    "mqtrace-previous-attempt",
    "mqtrace-origin",
    "mqtrace-dead-letter-reason",
    "mqtrace-not-before",
    "user",
    "",
];

fuzz_target!(|data: &[u8]| {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut flags = 0;
    let mut attrs: HashMap<String, String> = HashMap::new();
    for (i, line) in text.split('\n').take(100).enumerate() {
        if i == 0 {
            flags = line.len();
            continue;
        }
        let (k, v) = line.split_once('=').unwrap_or((line, ""));
        let key = match k.as_bytes() {
            [n] if n.is_ascii_digit() || *n == b'a' || *n == b'b' => {
                KEYS[usize::from(*n) % KEYS.len()].to_owned()
            }
            _ => k.to_owned(),
        };
        attrs.insert(key, v.to_owned());
    }
    let believed = flags % 2 == 1;
    let extracted = Propagation::W3c.extract(&attrs);
    let history = mqtrace::retry::read_history(&attrs, "billing", believed);
    if let Some(r) = &history.dead_letter_reason {
        assert!(r.len() <= mqtrace::retry::MAX_REASON_LEN);
    }
    if !believed {
        assert_eq!(history, {
            let mut h = mqtrace::retry::History::default();
            h.refused = history.refused.clone();
            h
        });
    }
    let _ = mqtrace::retry::attempt(&attrs);
    let max = Duration::from_secs(3600);
    assert!(mqtrace::retry::due_in(&attrs, max).is_none_or(|w| w <= max));

    let sc = SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
        SpanId::from(7_u64),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let mut out = attrs.clone();
    Propagation::W3c.inject(&sc, extracted.context(), &mut out);
    for (k, v) in &attrs {
        if !Propagation::W3c.is_field(k) {
            assert_eq!(out.get(k), Some(v), "{k:?} changed");
        }
    }
    let again = Propagation::W3c.extract(&out);
    assert_eq!(again.span_context().span_id(), SpanId::from(7_u64));
});
