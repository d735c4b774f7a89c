//! `baggage`: parsing never panics; what is kept re-encodes within the limit to a header
//! that parses without error to the same members, and re-encoding is stable (no growth).
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace::w3c;
use opentelemetry::baggage::Baggage;
use std::collections::BTreeMap;

fn members(b: &Baggage) -> BTreeMap<String, (String, String)> {
    b.iter()
        .map(|(k, (v, m))| (k.to_string(), (v.to_string(), m.as_str().to_owned())))
        .collect()
}

fn sorted(header: &str) -> Vec<&str> {
    let mut m: Vec<&str> = header.split(',').filter(|m| !m.is_empty()).collect();
    m.sort_unstable();
    m
}

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    let (b, _) = w3c::parse_baggage(s);
    let enc = w3c::encode_baggage(&b);
    assert!(enc.len() <= w3c::MAX_BAGGAGE_BYTES);
    let (back, err) = w3c::parse_baggage(&enc);
    assert_eq!(err, None, "{enc:?}");
    if enc.len() < w3c::MAX_BAGGAGE_BYTES - 512 {
        // Nothing was left out for size: the same members come back.
        assert_eq!(members(&back), members(&b), "{enc:?}");
    }
    let enc2 = w3c::encode_baggage(&back);
    assert_eq!(sorted(&enc2), sorted(&enc), "re-encoding changed");
    // Decoding alone never panics either, on any input.
    let _ = w3c::percent_decode(s);
});
