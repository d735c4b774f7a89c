//! `tracestate`: the list parser never panics; an accepted list re-joined parses to the same
//! members; through the propagation the forwarded value is valid and stable.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace::{Propagation, w3c};
use opentelemetry::trace::{SpanContext, SpanId};
use std::collections::HashMap;

const TP: &[u8] = b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-03";

fuzz_target!(|data: &[u8]| {
    if let Ok(s) = std::str::from_utf8(data)
        && let Ok(members) = w3c::tracestate_members(s)
    {
        assert!(members.len() <= w3c::MAX_TRACESTATE_MEMBERS);
        let joined = members
            .iter()
            .map(|(k, v)| format!("{k}={v}"))
            .collect::<Vec<_>>()
            .join(",");
        assert_eq!(w3c::tracestate_members(&joined).as_ref(), Ok(&members));
        let _ = w3c::parse_tracestate(s);
    }
    // Through the propagation, as one header or split into several at '\n'.
    let mut h: Vec<(String, Vec<u8>)> = vec![("traceparent".into(), TP.to_vec())];
    for part in data.split(|b| *b == b'\n') {
        h.push(("tracestate".into(), part.to_vec()));
    }
    let x = Propagation::W3c.extract(&h);
    let sc = x.span_context();
    assert!(sc.is_valid());
    let child = SpanContext::new(
        sc.trace_id(),
        SpanId::from(7_u64),
        sc.trace_flags(),
        false,
        sc.trace_state().clone(),
    );
    let mut out: HashMap<String, String> = HashMap::new();
    Propagation::W3c.inject(&child, x.context(), &mut out);
    if let Some(ts) = out.get("tracestate") {
        assert!(
            w3c::tracestate_members(ts).is_ok(),
            "forwarded an invalid tracestate {ts:?}"
        );
        let again = Propagation::W3c.extract(&out);
        let mut out2: HashMap<String, String> = HashMap::new();
        let sc2 = again.span_context();
        let child2 = SpanContext::new(
            sc2.trace_id(),
            SpanId::from(8_u64),
            sc2.trace_flags(),
            false,
            sc2.trace_state().clone(),
        );
        Propagation::W3c.inject(&child2, again.context(), &mut out2);
        assert_eq!(out2.get("tracestate"), Some(ts), "tracestate not stable");
    }
});
