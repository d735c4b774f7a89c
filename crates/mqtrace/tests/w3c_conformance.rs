//! Conformance of mqtrace's W3C codec, case by case: the W3C trace-context test suite's
//! vectors (`test/test.py` of w3c/trace-context: parse, reject, propagate), the examples of
//! the W3C Baggage specification, and the defects of issues 10, 11 and 14, each with its input.
//!
//! The test suite drives an HTTP service; here the "service" is mqtrace's propagation: the
//! headers are extracted, a process span handles the message, and a message sent from inside
//! it shows what is propagated.

use mqtrace::testing::{SpanDataExt, TestTelemetry};
use mqtrace::{instrument::*, *};
use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt, BaggageMetadata};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::trace::Sampler;
use std::collections::HashMap;

const TRACE_ID: &str = "12345678901234567890123456789012";
const TP: &str = "00-12345678901234567890123456789012-1234567890123456-00";

type Headers = Vec<(String, Vec<u8>)>;

fn headers(pairs: &[(&str, &str)]) -> Headers {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.as_bytes().to_vec()))
        .collect()
}

/// What a message sent while handling a message with `input` headers carries.
struct Relayed {
    extracted: Extracted,
    out: HashMap<String, String>,
}

impl Relayed {
    fn traceparent(&self) -> &str {
        &self.out["traceparent"]
    }
    fn trace_id(&self) -> &str {
        &self.traceparent()[3..35]
    }
    fn parent_id(&self) -> &str {
        &self.traceparent()[36..52]
    }
    fn flags(&self) -> u8 {
        u8::from_str_radix(&self.traceparent()[53..55], 16).expect("hex flags")
    }
    fn tracestate(&self) -> Option<&str> {
        self.out.get("tracestate").map(String::as_str)
    }
    fn tracestate_members(&self) -> Vec<(String, String)> {
        self.tracestate()
            .map(|t| {
                mqtrace::w3c::tracestate_members(t)
                    .expect("mqtrace writes a valid tracestate")
                    .into_iter()
                    .map(|(k, v)| (k.to_owned(), v.to_owned()))
                    .collect()
            })
            .unwrap_or_default()
    }
    fn ts(&self, key: &str) -> Option<String> {
        self.tracestate_members()
            .into_iter()
            .find(|(k, _)| k == key)
            .map(|(_, v)| v)
    }
}

fn relay_with(telemetry: &TestTelemetry, input: &[(&str, &str)]) -> Relayed {
    let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "w3c").build(telemetry.config());
    let h = headers(input);
    let extracted = inst.extract(&h);
    let process = inst.start_process(
        Incoming::new(Operation::new("process", OperationType::Process), "q", "q"),
        extracted.clone(),
    );
    let mut out: HashMap<String, String> = HashMap::new();
    {
        let _g = process.context().clone().attach();
        inst.start_send(
            Outgoing::new(Operation::new("send", OperationType::Send), "next"),
            &mut out,
        )
        .end_ok();
    }
    process.finish(Outcome::Ack);
    Relayed { extracted, out }
}

fn relay(input: &[(&str, &str)]) -> Relayed {
    relay_with(&TestTelemetry::new(), input)
}

// ---------------------------------------------------------------- traceparent (test.py)

#[test]
fn both_traceparent_and_tracestate_missing() {
    let r = relay(&[]);
    assert!(mqtrace::w3c::parse_traceparent(r.traceparent()).is_ok());
}

#[test]
fn traceparent_included_tracestate_missing() {
    let r = relay(&[(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-01",
    )]);
    assert_eq!(r.trace_id(), TRACE_ID);
    assert_ne!(r.parent_id(), "1234567890123456");
}

/// Deviation, on purpose (issue 10): the test suite wants two `traceparent` headers to start
/// a new trace (HTTP combines them into one invalid value). Several Java messaging producers
/// write the header twice; like Java's instrumentation (`lastHeader`) mqtrace uses the last
/// valid one, and records that there were several.
#[test]
fn traceparent_duplicated_uses_the_last_valid_one_and_says_so() {
    let r = relay(&[
        (
            "traceparent",
            "00-12345678901234567890123456789011-1234567890123456-01",
        ),
        (
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-01",
        ),
    ]);
    assert_eq!(r.trace_id(), TRACE_ID);
    assert!(r.extracted.duplicate_traceparent());
    // An invalid last one does not hide a valid earlier one.
    let r = relay(&[
        (
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-01",
        ),
        (
            "traceparent",
            "00-zz345678901234567890123456789012-1234567890123456-01",
        ),
    ]);
    assert_eq!(r.trace_id(), TRACE_ID);
    assert!(r.extracted.duplicate_traceparent());
    assert!(
        !relay(&[("traceparent", TP)])
            .extracted
            .duplicate_traceparent()
    );
}

#[test]
fn duplicate_is_recorded_on_the_process_span() {
    let t = TestTelemetry::new();
    relay_with(
        &t,
        &[
            (
                "traceparent",
                "00-12345678901234567890123456789011-1234567890123456-01",
            ),
            (
                "traceparent",
                "00-12345678901234567890123456789012-1234567890123456-01",
            ),
        ],
    );
    let spans = t.spans();
    let p = spans.one("process q");
    assert_eq!(p.span_context.trace_id().to_string(), TRACE_ID);
    assert_eq!(
        p.attr(mqtrace::attributes::CONTEXT_DUPLICATE),
        Some(&opentelemetry::Value::Bool(true))
    );
    let t = TestTelemetry::new();
    relay_with(&t, &[("traceparent", TP)]);
    assert!(
        t.spans()
            .one("process q")
            .attr(mqtrace::attributes::CONTEXT_DUPLICATE)
            .is_none()
    );
}

#[test]
fn traceparent_header_name() {
    for name in ["trace-parent", "trace.parent"] {
        let r = relay(&[(
            name,
            "00-12345678901234567890123456789012-1234567890123456-01",
        )]);
        assert_ne!(r.trace_id(), TRACE_ID, "{name}");
    }
}

#[test]
fn traceparent_header_name_valid_casing() {
    for name in ["TraceParent", "TrAcEpArEnT", "TRACEPARENT"] {
        let r = relay(&[(
            name,
            "00-12345678901234567890123456789012-1234567890123456-01",
        )]);
        assert_eq!(r.trace_id(), TRACE_ID, "{name}");
        // Written lowercase.
        assert!(
            r.out
                .keys()
                .all(|k| k.bytes().all(|b| !b.is_ascii_uppercase()))
        );
    }
    // A map carrier too.
    let m: HashMap<String, String> = [("TraceParent".to_owned(), TP.to_owned())].into();
    assert_eq!(
        Propagation::W3c
            .extract(&m)
            .span_context()
            .trace_id()
            .to_string(),
        TRACE_ID
    );
}

fn assert_new_trace(value: &str) {
    let r = relay(&[("traceparent", value)]);
    assert_ne!(r.trace_id(), TRACE_ID, "{value:?} was accepted");
    assert!(
        !r.extracted.issues().is_empty(),
        "{value:?}: no reason recorded"
    );
}

fn assert_same_trace(value: &str) {
    let r = relay(&[("traceparent", value)]);
    assert_eq!(r.trace_id(), TRACE_ID, "{value:?} was rejected");
}

#[test]
fn traceparent_version_0x00() {
    assert_new_trace("00-12345678901234567890123456789012-1234567890123456-01.");
    assert_new_trace(
        "00-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
    );
}

#[test]
fn traceparent_version_0xcc() {
    assert_same_trace("cc-12345678901234567890123456789012-1234567890123456-01");
    assert_same_trace(
        "cc-12345678901234567890123456789012-1234567890123456-01-what-the-future-will-be-like",
    );
    assert_new_trace(
        "cc-12345678901234567890123456789012-1234567890123456-01.what-the-future-will-be-like",
    );
}

#[test]
fn traceparent_version_0xff() {
    assert_new_trace("ff-12345678901234567890123456789012-1234567890123456-01");
}

#[test]
fn traceparent_version_illegal_characters_too_long_too_short() {
    for v in [
        ".0-12345678901234567890123456789012-1234567890123456-01",
        "0.-12345678901234567890123456789012-1234567890123456-01",
        "000-12345678901234567890123456789012-1234567890123456-01",
        "0000-12345678901234567890123456789012-1234567890123456-01",
        "0-12345678901234567890123456789012-1234567890123456-01",
    ] {
        assert_new_trace(v);
    }
}

#[test]
fn traceparent_trace_id_cases() {
    let r = relay(&[(
        "traceparent",
        "00-00000000000000000000000000000000-1234567890123456-01",
    )]);
    assert_ne!(r.trace_id(), "00000000000000000000000000000000");
    for v in [
        "00-.2345678901234567890123456789012-1234567890123456-01",
        "00-1234567890123456789012345678901.-1234567890123456-01",
        "00-123456789012345678901234567890123-1234567890123456-01",
        "00-1234567890123456789012345678901-1234567890123456-01",
    ] {
        let r = relay(&[("traceparent", v)]);
        for bad in [
            TRACE_ID,
            "123456789012345678901234567890123",
            "23456789012345678901234567890123",
            "1234567890123456789012345678901",
        ] {
            assert_ne!(r.trace_id(), bad, "{v}");
        }
    }
}

#[test]
fn traceparent_parent_id_and_flags_cases() {
    for v in [
        "00-12345678901234567890123456789012-0000000000000000-01",
        "00-12345678901234567890123456789012-.234567890123456-01",
        "00-12345678901234567890123456789012-123456789012345.-01",
        "00-12345678901234567890123456789012-12345678901234567-01",
        "00-12345678901234567890123456789012-123456789012345-01",
        "00-12345678901234567890123456789012-1234567890123456-.0",
        "00-12345678901234567890123456789012-1234567890123456-0.",
        "00-12345678901234567890123456789012-1234567890123456-001",
        "00-12345678901234567890123456789012-1234567890123456-1",
    ] {
        assert_new_trace(v);
    }
}

#[test]
fn traceparent_ows_handling() {
    for v in [
        " 00-12345678901234567890123456789012-1234567890123456-01",
        "\t00-12345678901234567890123456789012-1234567890123456-01",
        "00-12345678901234567890123456789012-1234567890123456-01 ",
        "00-12345678901234567890123456789012-1234567890123456-01\t",
        "\t 00-12345678901234567890123456789012-1234567890123456-01 \t",
    ] {
        assert_same_trace(v);
    }
}

#[test]
fn multiple_requests_with_valid_traceparent_get_new_parent_ids() {
    let mut parents = std::collections::HashSet::new();
    for _ in 0..3 {
        let r = relay(&[(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-01",
        )]);
        assert_eq!(r.trace_id(), TRACE_ID);
        parents.insert(r.parent_id().to_owned());
    }
    assert_eq!(parents.len(), 3);
}

// ---------------------------------------------------------------- random flag (Level 2)

/// Issue 11 item 2: the random flag received is propagated; reserved bits are not.
#[test]
fn propagates_random_flag() {
    let r = relay(&[(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-02",
    )]);
    assert_eq!(r.trace_id(), TRACE_ID);
    assert_ne!(r.parent_id(), "1234567890123456");
    assert_eq!(
        r.flags() & 0x02,
        0x02,
        "random flag not set: {}",
        r.traceparent()
    );
    let r = relay(&[(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-03",
    )]);
    assert_eq!(r.flags(), 0x03, "{}", r.traceparent());
    let r = relay(&[(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-fd",
    )]);
    assert_eq!(
        r.flags(),
        0x01,
        "reserved flags propagated: {}",
        r.traceparent()
    );
    let r = relay(&[(
        "traceparent",
        "00-12345678901234567890123456789012-1234567890123456-01",
    )]);
    assert_eq!(r.flags(), 0x01);
}

/// The SDK clears every flag on a span it does not sample; the random flag still goes on.
#[test]
fn random_flag_survives_an_unsampled_process_span() {
    let t = TestTelemetry::with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOn)));
    let r = relay_with(
        &t,
        &[(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-02",
        )],
    );
    assert_eq!(r.traceparent()[53..], *"02", "{}", r.traceparent());
    let t = TestTelemetry::with_sampler(Sampler::AlwaysOff);
    let r = relay_with(
        &t,
        &[(
            "traceparent",
            "00-12345678901234567890123456789012-1234567890123456-03",
        )],
    );
    assert_eq!(r.trace_id(), TRACE_ID);
    assert_eq!(r.traceparent()[53..], *"02", "{}", r.traceparent());
}

// ---------------------------------------------------------------- tracestate (test.py)

#[test]
fn tracestate_included_traceparent_missing() {
    let a = relay(&[("tracestate", "foo=1")]);
    let b = relay(&[("tracestate", "foo=1,bar=2")]);
    assert_eq!(a.tracestate_members().len(), b.tracestate_members().len());
    assert!(a.tracestate().is_none());
}

#[test]
fn tracestate_included_traceparent_included() {
    let r = relay(&[("traceparent", TP), ("tracestate", "foo=1,bar=2")]);
    assert_eq!(r.trace_id(), TRACE_ID);
    assert_eq!(r.ts("foo").as_deref(), Some("1"));
    assert_eq!(r.ts("bar").as_deref(), Some("2"));
}

#[test]
fn tracestate_header_name() {
    for name in ["trace-state", "trace.state"] {
        let r = relay(&[("traceparent", TP), (name, "foo=1")]);
        assert_eq!(r.ts("foo"), None, "{name}");
    }
}

#[test]
fn tracestate_header_name_valid_casing() {
    for name in ["TraceState", "TrAcEsTaTe", "TRACESTATE"] {
        let r = relay(&[("traceparent", TP), (name, "foo=1")]);
        assert_eq!(r.ts("foo").as_deref(), Some("1"), "{name}");
    }
}

#[test]
fn tracestate_empty_header() {
    let r = relay(&[("traceparent", TP), ("tracestate", "")]);
    assert_eq!(r.trace_id(), TRACE_ID);
    assert_eq!(r.tracestate(), None, "an empty tracestate is not sent");
    assert!(r.extracted.issues().is_empty());
    for pair in [
        [("tracestate", "foo=1"), ("tracestate", "")],
        [("tracestate", ""), ("tracestate", "foo=1")],
    ] {
        let mut input = vec![("traceparent", TP)];
        input.extend(pair);
        let r = relay(&input);
        assert_eq!(r.trace_id(), TRACE_ID);
        assert_eq!(r.ts("foo").as_deref(), Some("1"));
    }
}

/// Issue 11 item 3 / issue 10 item 4: several `tracestate` headers are joined, not rejected.
#[test]
fn tracestate_multiple_headers_different_keys() {
    let r = relay(&[
        ("traceparent", TP),
        ("tracestate", "foo=1,bar=2"),
        ("tracestate", "rojo=1,congo=2"),
        ("tracestate", "baz=3"),
    ]);
    assert_eq!(r.trace_id(), TRACE_ID);
    assert_eq!(r.tracestate(), Some("foo=1,bar=2,rojo=1,congo=2,baz=3"));
}

#[test]
fn tracestate_duplicated_keys() {
    for input in [
        vec![("tracestate", "foo=1,foo=1")],
        vec![("tracestate", "foo=1"), ("tracestate", "foo=1")],
    ] {
        let mut h = vec![("traceparent", TP)];
        h.extend(input);
        let r = relay(&h);
        assert_eq!(r.trace_id(), TRACE_ID);
        assert!(r.tracestate().unwrap_or_default().contains("foo=1"));
    }
    for input in [
        vec![("tracestate", "foo=1,foo=2")],
        vec![("tracestate", "foo=1"), ("tracestate", "foo=2")],
    ] {
        let mut h = vec![("traceparent", TP)];
        h.extend(input);
        let r = relay(&h);
        let ts = r.tracestate().unwrap_or_default().to_owned();
        assert!(ts.contains("foo=1") || ts.contains("foo=2"), "{ts}");
    }
}

#[test]
fn tracestate_all_allowed_characters() {
    let key_without_vendor = "abcdefghijklmnopqrstuvwxyz0123456789_-*/".to_owned();
    let key_with_vendor = format!("{key_without_vendor}@a-z0-9_-*/");
    let value: String = (0x20u8..=0x2b)
        .chain(0x2d..=0x3c)
        .chain(0x3e..=0x7e)
        .map(char::from)
        .collect();
    for key in [&key_without_vendor, &key_with_vendor] {
        let member = format!("{key}={value}");
        let r = relay(&[("traceparent", TP), ("tracestate", &member)]);
        assert_eq!(r.ts(key).as_deref(), Some(value.as_str()), "{key}");
        assert_eq!(r.tracestate(), Some(member.as_str()));
    }
}

#[test]
fn tracestate_ows_handling() {
    for ts in [
        "foo=1 \t , \t bar=2, \t baz=3",
        "foo=1\t \t,\t \tbar=2,\t \tbaz=3",
    ] {
        let r = relay(&[("traceparent", TP), ("tracestate", ts)]);
        assert_eq!(r.tracestate(), Some("foo=1,bar=2,baz=3"), "{ts:?}");
    }
    for ts in [" foo=1", "\tfoo=1", "foo=1 ", "foo=1\t", "\t foo=1 \t"] {
        let r = relay(&[("traceparent", TP), ("tracestate", ts)]);
        assert_eq!(r.trace_id(), TRACE_ID);
        assert_eq!(r.ts("foo").as_deref(), Some("1"), "{ts:?}");
    }
}

fn assert_discarded(ts: &str) {
    let r = relay(&[("traceparent", TP), ("tracestate", ts)]);
    assert_eq!(
        r.trace_id(),
        TRACE_ID,
        "{ts:?}: the traceparent must survive"
    );
    assert_eq!(r.tracestate(), None, "{ts:?} was forwarded");
    assert_eq!(
        r.extracted.issues().first().map(ContextIssue::header),
        Some("tracestate"),
        "{ts:?}: no reason recorded"
    );
}

#[test]
fn tracestate_key_illegal_characters() {
    for ts in ["foo =1", "FOO=1", "foo.bar=1"] {
        assert_discarded(ts);
    }
}

/// Issue 11 item 3: the current key grammar (`@` anywhere after the first character).
#[test]
fn tracestate_key_illegal_vendor_format() {
    let r = relay(&[("traceparent", TP), ("tracestate", "foo@=1,bar=2")]);
    assert_eq!(r.ts("foo@").as_deref(), Some("1"));
    assert_eq!(r.ts("bar").as_deref(), Some("2"));
    assert_discarded("@foo=1,bar=2");
    for ts in ["foo@@bar=1,bar=2", "foo@bar@baz=1,bar=2"] {
        let r = relay(&[("traceparent", TP), ("tracestate", ts)]);
        assert_eq!(r.tracestate(), Some(ts), "{ts}");
        assert!(
            r.extracted.issues().is_empty(),
            "{:?}",
            r.extracted.issues()
        );
    }
}

/// Issue 11 item 3: 33 members discard the whole list (OpenTelemetry's parser truncates).
#[test]
fn tracestate_member_count_limit() {
    let part = |range: std::ops::RangeInclusive<u32>| {
        range
            .map(|i| format!("bar{i:02}={i:02}"))
            .collect::<Vec<_>>()
            .join(",")
    };
    let r = relay(&[
        ("traceparent", TP),
        ("tracestate", &part(1..=10)),
        ("tracestate", &part(11..=20)),
        ("tracestate", &part(21..=30)),
        ("tracestate", &part(31..=32)),
    ]);
    assert_eq!(r.ts("bar01").as_deref(), Some("01"));
    assert_eq!(r.tracestate_members().len(), 32);
    let r = relay(&[
        ("traceparent", TP),
        ("tracestate", &part(1..=10)),
        ("tracestate", &part(11..=20)),
        ("tracestate", &part(21..=30)),
        ("tracestate", &part(31..=33)),
    ]);
    assert_eq!(r.ts("bar01"), None);
    assert_eq!(r.tracestate(), None);
}

#[test]
fn tracestate_key_length_limit() {
    let ok = |key: String| {
        let member = format!("{key}=1");
        let r = relay(&[
            ("traceparent", TP),
            ("tracestate", "foo=1"),
            ("tracestate", &member),
        ]);
        assert_eq!(r.ts("foo").as_deref(), Some("1"), "{key}");
        assert_eq!(r.ts(&key).as_deref(), Some("1"), "{key}");
    };
    ok("z".repeat(256));
    ok(format!("{}@{}", "t".repeat(241), "v".repeat(14)));
    ok(format!("{}@v", "t".repeat(242)));
    ok(format!("t@{}", "v".repeat(15)));
    let member = format!("{}=1", "z".repeat(257));
    let r = relay(&[
        ("traceparent", TP),
        ("tracestate", "foo=1"),
        ("tracestate", &member),
    ]);
    assert_eq!(r.ts("foo"), None);
}

#[test]
fn tracestate_value_illegal_characters() {
    for ts in ["foo=bar=baz", "foo=,bar=3"] {
        assert_discarded(ts);
    }
}

/// Issue 11 item 3's own inputs.
#[test]
fn tracestate_invalid_lists_from_the_issue_are_rejected() {
    for ts in [
        "=1",
        "foo=,bar=3",
        "foo==bar",
        "foo=a\tb",
        "foo=caf\u{e9}",
        "foo",
        "foo=   ",
    ] {
        assert_discarded(ts);
    }
}

/// A hostile header of commas is not scanned without bound.
#[test]
fn tracestate_of_a_megabyte_is_discarded() {
    let ts = format!("{}a=1", ", ".repeat(1 << 19));
    assert_discarded(&ts);
    assert_eq!(
        mqtrace::w3c::tracestate_members(&ts),
        Err(mqtrace::w3c::TracestateError::TooLong(ts.len()))
    );
}

/// The application changing the trace state wins over a received list kept whole.
#[test]
fn a_changed_trace_state_is_written_as_changed() {
    let h = headers(&[("traceparent", TP), ("tracestate", "foo@bar@baz=1,bar=2")]);
    let x = Propagation::W3c.extract(&h);
    let sc = x.span_context();
    let changed = sc.trace_state().insert("mine", "x").expect("valid");
    let child = SpanContext::new(
        sc.trace_id(),
        SpanId::from(7_u64),
        sc.trace_flags(),
        false,
        changed,
    );
    let mut out: HashMap<String, String> = HashMap::new();
    Propagation::W3c.inject(&child, x.context(), &mut out);
    assert_eq!(out["tracestate"], "mine=x,bar=2");
    // Unchanged: the whole list as received.
    let child = SpanContext::new(
        sc.trace_id(),
        SpanId::from(7_u64),
        sc.trace_flags(),
        false,
        sc.trace_state().clone(),
    );
    let mut out: HashMap<String, String> = HashMap::new();
    Propagation::W3c.inject(&child, x.context(), &mut out);
    assert_eq!(out["tracestate"], "foo@bar@baz=1,bar=2");
    // Another trace: nothing of the received list.
    let other = SpanContext::new(
        TraceId::from(9_u128),
        SpanId::from(7_u64),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let mut out: HashMap<String, String> = HashMap::new();
    Propagation::W3c.inject(&other, x.context(), &mut out);
    assert!(!out.contains_key("tracestate"));
    assert_eq!(&out["traceparent"][53..], "01");
}

// ---------------------------------------------------------------- baggage (W3C Baggage)

fn baggage_of(input: &[(&str, &str)]) -> (Baggage, Vec<ContextIssue>) {
    let mut h = vec![("traceparent", TP)];
    h.extend_from_slice(input);
    let x = Propagation::W3c.extract(&headers(&h));
    let b = x
        .context()
        .baggage()
        .iter()
        .map(|(k, (v, m))| {
            opentelemetry::baggage::KeyValueMetadata::new(k.clone(), v.clone(), m.clone())
        })
        .collect();
    (b, x.issues().to_vec())
}

fn value(b: &Baggage, k: &str) -> Option<String> {
    b.get(k).map(|v| v.as_str().to_owned())
}

#[test]
fn baggage_specification_examples() {
    for input in [
        vec![(
            "baggage",
            "userId=alice,serverNode=DF%2028,isProduction=false",
        )],
        vec![
            ("baggage", "userId=alice"),
            ("baggage", "serverNode=DF%2028,isProduction=false"),
        ],
        vec![
            ("baggage", "userId =   alice"),
            ("baggage", "serverNode = DF%2028, isProduction = false"),
        ],
    ] {
        let (b, issues) = baggage_of(&input);
        assert!(issues.is_empty(), "{input:?}: {issues:?}");
        assert_eq!(value(&b, "userId").as_deref(), Some("alice"));
        assert_eq!(value(&b, "serverNode").as_deref(), Some("DF 28"));
        assert_eq!(value(&b, "isProduction").as_deref(), Some("false"));
    }
    let (b, _) = baggage_of(&[(
        "baggage",
        "userId=Am%C3%A9lie,serverNode=DF%2028,isProduction=false",
    )]);
    assert_eq!(value(&b, "userId").as_deref(), Some("Amélie"));
    // The writer's side of the same example.
    let mut out = Baggage::new();
    out.insert("userId", "Amélie");
    assert_eq!(mqtrace::w3c::encode_baggage(&out), "userId=Am%C3%A9lie");
    out = Baggage::new();
    out.insert("serverNode", "DF 28");
    assert_eq!(mqtrace::w3c::encode_baggage(&out), "serverNode=DF%2028");

    // The "Limits" example: 3 members with properties, 86 bytes.
    let header =
        "key1=value1;property1;property2, key2 = value2, key3=value3; propertyKey=propertyValue";
    assert_eq!(header.len(), 86);
    let (b, issues) = baggage_of(&[("baggage", header)]);
    assert!(issues.is_empty(), "{issues:?}");
    let (v1, m1) = b.get_with_metadata("key1").expect("key1");
    assert_eq!(
        (v1.as_str(), m1.as_str()),
        ("value1", "property1;property2")
    );
    assert_eq!(value(&b, "key2").as_deref(), Some("value2"));
    let (_, m3) = b.get_with_metadata("key3").expect("key3");
    let props: Vec<_> = mqtrace::w3c::baggage_properties(m3).collect();
    assert_eq!(props, [("propertyKey", Some("propertyValue".to_owned()))]);
}

/// Issue 11 item 1: `%` is encoded; decoding makes U+FFFD of invalid UTF-8.
#[test]
fn baggage_percent_is_encoded_and_invalid_utf8_is_replaced() {
    for (raw, wire) in [
        ("10%", "k=10%25"),
        ("%41", "k=%2541"),
        ("a\\b", "k=a%5Cb"),
        ("x=y", "k=x%3Dy"),
    ] {
        let mut b = Baggage::new();
        b.insert("k", raw);
        assert_eq!(mqtrace::w3c::encode_baggage(&b), wire);
        let (back, err) = mqtrace::w3c::parse_baggage(wire);
        assert_eq!(err, None);
        assert_eq!(value(&back, "k").as_deref(), Some(raw));
    }
    let (b, issues) = baggage_of(&[("baggage", "k=%FF,j=a%E2%82")]);
    assert!(issues.is_empty(), "{issues:?}");
    assert_eq!(value(&b, "k").as_deref(), Some("\u{FFFD}"));
    assert_eq!(value(&b, "j").as_deref(), Some("a\u{FFFD}"));
    // Raw characters outside baggage-octet are malformed members, dropped with a reason.
    let (b, issues) = baggage_of(&[("baggage", "ok=1,sp=a b,dq=\"x\",bs=a\\b,u=é")]);
    assert_eq!(b.len(), 1, "{b:?}");
    assert_eq!(issues[0].reason(), "4 malformed member(s) dropped");
}

/// Issue 11 item 1: properties decoded on read, encoded on write.
#[test]
fn baggage_properties_are_encoded_and_decoded() {
    let mut b = Baggage::new();
    b.insert_with_metadata("k", "v", BaggageMetadata::from("p=a,b;flag; q = x y "));
    let wire = mqtrace::w3c::encode_baggage(&b);
    assert_eq!(wire, "k=v;p=a%2Cb;flag;q=x%20y");
    let (back, err) = mqtrace::w3c::parse_baggage(&wire);
    assert_eq!(err, None);
    assert_eq!(back.len(), 1);
    let (_, m) = back.get_with_metadata("k").expect("k");
    let props: Vec<_> = mqtrace::w3c::baggage_properties(m).collect();
    assert_eq!(
        props,
        [
            ("p", Some("a,b".to_owned())),
            ("flag", None),
            ("q", Some("x y".to_owned()))
        ]
    );
    assert_eq!(
        mqtrace::w3c::encode_baggage(&back),
        wire,
        "re-encoding is stable"
    );
    // A property with a raw non-octet makes the member malformed.
    let (b, err) = mqtrace::w3c::parse_baggage("k=v;p=a b,j=1");
    assert_eq!(b.len(), 1);
    assert!(err.is_some());
}

/// Issue 11 item 1: the 8192-byte limit is checked after encoding; whole members only.
#[test]
fn baggage_limit_is_checked_after_encoding() {
    let mut b = Baggage::new();
    // 3000 bytes raw, 9000 encoded.
    b.insert("big", " ".repeat(3000));
    b.insert("small", "1");
    let wire = mqtrace::w3c::encode_baggage(&b);
    assert!(
        wire.len() <= mqtrace::w3c::MAX_BAGGAGE_BYTES,
        "{}",
        wire.len()
    );
    assert_eq!(wire, "small=1");
    let mut b = Baggage::new();
    b.insert("big", " ".repeat(3000));
    let sc = SpanContext::new(
        TraceId::from(1_u128),
        SpanId::from(2_u64),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let mut out: HashMap<String, String> = HashMap::new();
    Propagation::W3c.inject(&sc, &Context::new().with_baggage(b), &mut out);
    assert!(
        !out.contains_key("baggage"),
        "an oversized member is not written"
    );
}

/// Issue 14 item 4: the baggage does not grow from hop to hop.
#[test]
fn baggage_from_the_issue_round_trips_through_relays() {
    let start = "a=10%,b=%41,c=%FF,d=x%20y;p=a%2Cb;q,e=caf%C3%A9";
    let mut wire = start.to_owned();
    let mut first = None;
    for hop in 0..10 {
        let r = relay(&[("traceparent", TP), ("baggage", &wire)]);
        let next = r.out.get("baggage").cloned().unwrap_or_default();
        let (b, _) = mqtrace::w3c::parse_baggage(&next);
        assert_eq!(b.len(), 5, "hop {hop}: {next}");
        // Members in any order (OpenTelemetry's Baggage is a hash map), each byte-identical.
        let mut members: Vec<String> = next.split(',').map(str::to_owned).collect();
        members.sort();
        if let Some(f) = &first {
            assert_eq!(&members, f, "hop {hop} changed the header: {next}");
        }
        first.get_or_insert(members);
        wire = next;
    }
    let (b, _) = mqtrace::w3c::parse_baggage(&wire);
    assert_eq!(value(&b, "a").as_deref(), Some("10%"));
    assert_eq!(value(&b, "b").as_deref(), Some("A"));
    assert_eq!(value(&b, "c").as_deref(), Some("\u{FFFD}"));
    assert_eq!(value(&b, "e").as_deref(), Some("café"));
}
