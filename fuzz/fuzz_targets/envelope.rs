//! The JSON envelope: any JSON value is read without panicking (issues, never a crash); a
//! context read from it is written back and read again unchanged.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace::{Propagation, envelope};

fuzz_target!(|data: &[u8]| {
    let Ok(msg) = serde_json::from_slice::<serde_json::Value>(data) else {
        return;
    };
    let x = envelope::extract(&Propagation::W3c, &msg);
    let sc = x.span_context();
    if !sc.is_valid() {
        return;
    }
    let mut out = serde_json::json!({"payload": msg});
    assert!(envelope::inject(
        &Propagation::W3c,
        sc,
        x.context(),
        &mut out
    ));
    let back = envelope::extract(&Propagation::W3c, &out);
    assert_eq!(back.span_context().trace_id(), sc.trace_id());
    assert_eq!(back.span_context().span_id(), sc.span_id());
    assert!(back.issues().is_empty(), "{:?}", back.issues());
});
