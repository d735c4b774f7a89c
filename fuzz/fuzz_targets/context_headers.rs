//! A whole header set from a hostile producer: keys and values split from the input
//! (`\n` between headers, the first `:` between key and value), any bytes, repeated and
//! mixed-case names. Extraction never panics; the injected headers are valid W3C values;
//! extracting those again gives the same context.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace::{Propagation, w3c};
use opentelemetry::trace::{SpanContext, SpanId};
use std::collections::HashMap;

fuzz_target!(|data: &[u8]| {
    let mut h: Vec<(String, Vec<u8>)> = Vec::new();
    for line in data.split(|b| *b == b'\n') {
        let (k, v) = match line.iter().position(|b| *b == b':') {
            Some(i) => (&line[..i], &line[i + 1..]),
            None => (line, &[][..]),
        };
        h.push((String::from_utf8_lossy(k).into_owned(), v.to_vec()));
    }
    let x = Propagation::W3c.extract(&h);
    let sc = x.span_context();
    if !sc.is_valid() {
        return;
    }
    let child = SpanContext::new(
        sc.trace_id(),
        SpanId::from(9_u64),
        sc.trace_flags(),
        false,
        sc.trace_state().clone(),
    );
    let mut out: HashMap<String, String> = HashMap::new();
    Propagation::W3c.inject(&child, x.context(), &mut out);
    let tp = w3c::parse_traceparent(&out["traceparent"]).expect("valid traceparent written");
    assert_eq!(tp.trace_id(), sc.trace_id());
    if let Some(ts) = out.get("tracestate") {
        assert!(w3c::tracestate_members(ts).is_ok(), "{ts:?}");
    }
    if let Some(b) = out.get("baggage") {
        assert!(b.len() <= w3c::MAX_BAGGAGE_BYTES);
        assert_eq!(w3c::parse_baggage(b).1, None, "{b:?}");
    }
    let again = Propagation::W3c.extract(&out);
    assert!(
        again.issues().is_empty(),
        "{:?} from {out:?}",
        again.issues()
    );
    assert_eq!(again.span_context().span_id(), SpanId::from(9_u64));
    assert_eq!(again.span_context().trace_flags(), sc.trace_flags());
});
