//! `traceparent`: parsing never panics; what parses re-encodes to a version-00 value that
//! parses to the same ids and known flags.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace::w3c;

fuzz_target!(|data: &[u8]| {
    let Ok(s) = std::str::from_utf8(data) else {
        return;
    };
    if let Ok(sc) = w3c::parse_traceparent(s) {
        assert!(sc.is_valid() && sc.is_remote());
        assert_eq!(sc.trace_flags().to_u8() & !w3c::KNOWN_FLAGS, 0);
        let out = w3c::encode_traceparent(&sc);
        assert_eq!(out.len(), 55);
        let back = w3c::parse_traceparent(&out).expect("re-encoded traceparent parses");
        assert_eq!(back.trace_id(), sc.trace_id());
        assert_eq!(back.span_id(), sc.span_id());
        assert_eq!(back.trace_flags(), sc.trace_flags());
        assert_eq!(w3c::encode_traceparent(&back), out);
    }
});
