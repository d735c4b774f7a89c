//! Kafka header lists from a hostile producer, built through librdkafka's `OwnedHeaders`:
//! any keys (rdkafka writes keys as `&str`; embedded NULs included, which librdkafka reads
//! back cut at the NUL), values of any bytes or null, repeated keys, any order. mqtrace-rdkafka's
//! reader, the attempt and not-before readers and the core's history reader never panic;
//! replacing the context keeps every other header, in order.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace::Propagation;
use mqtrace_rdkafka::{KafkaHeaders, KafkaHeadersMut, delivery_attempt};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use std::time::Duration;

const KEYS: [&str; 10] = [
    "traceparent",
    "tracestate",
    "baggage",
    "Traceparent",
    "mqtrace-attempt",
    "mqtrace-previous-attempt",
    "mqtrace-origin",
    "mqtrace-dead-letter-reason",
    "mqtrace-not-before",
    "user",
];

fn list(h: &OwnedHeaders) -> Vec<(Vec<u8>, Option<Vec<u8>>)> {
    (0..h.count())
        .filter_map(|i| h.try_get(i))
        .map(|x| (x.key.as_bytes().to_vec(), x.value.map(<[u8]>::to_vec)))
        .collect()
}

fuzz_target!(|data: &[u8]| {
    let Some((&flags, data)) = data.split_first() else {
        return;
    };
    // Headers are separated by 0xff; in each, the first 0xfe splits key from value, a header
    // without one has a null value; a one-byte key below 40 names a key mqtrace reads.
    let mut headers = OwnedHeaders::new();
    for part in data.split(|b| *b == 0xff).take(64) {
        let (k, v) = match part.iter().position(|b| *b == 0xfe) {
            Some(i) => (&part[..i], Some(&part[i + 1..])),
            None => (part, None),
        };
        let key = match k {
            [n] if *n < 40 => KEYS[usize::from(*n) % KEYS.len()].to_owned(),
            _ => String::from_utf8_lossy(k).into_owned(),
        };
        headers = headers.insert(Header {
            key: &key,
            value: v,
        });
    }
    let believed = flags & 1 == 1;
    let h = KafkaHeaders(Some(&headers));
    let extracted = Propagation::W3c.extract(&h);
    let _ = extracted.issues();
    let history = mqtrace::retry::read_history(&h, "orders", believed);
    if !believed {
        assert!(history.origin.is_none() && history.previous_attempt.is_none());
    }
    assert!(delivery_attempt(Some(&headers)) >= 1);
    let max = Duration::from_secs(60);
    assert!(mqtrace::retry::due_in(&h, max).is_none_or(|w| w <= max));
    let _ = mqtrace_rdkafka::not_before(Some(&headers));

    // A handler forwarding these headers with a new context: every other header is kept, in
    // order; exactly one traceparent goes out.
    let before = list(&headers);
    let mut out = Some(headers.clone());
    let mut carrier = KafkaHeadersMut(&mut out);
    assert!(carrier.remove_fields(&Propagation::W3c));
    let sc = SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
        SpanId::from(7_u64),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    Propagation::W3c.inject(&sc, extracted.context(), &mut carrier);
    let after = out.as_ref().map(list).unwrap_or_default();
    let is_field = |k: &[u8]| std::str::from_utf8(k).is_ok_and(|k| Propagation::W3c.is_field(k));
    let kept = |l: &[(Vec<u8>, Option<Vec<u8>>)]| {
        l.iter()
            .filter(|(k, _)| !is_field(k))
            .cloned()
            .collect::<Vec<_>>()
    };
    assert_eq!(kept(&before), kept(&after));
    assert_eq!(after.iter().filter(|(k, _)| k == b"traceparent").count(), 1);
    let again = Propagation::W3c.extract(&KafkaHeaders(out.as_ref()));
    assert_eq!(again.span_context().span_id(), SpanId::from(7_u64));
});
