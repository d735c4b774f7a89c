//! mqtrace's retry history headers (`mqtrace-attempt`, `-previous-attempt`, `-origin`,
//! `-dead-letter-reason`, `-not-before`) with any values: the readers never panic, every value
//! believed is bounded, nothing is believed from an untrusted source, the wait is capped; and
//! what `CopyHeaders` writes for a copy is read back as written.
#![no_main]

use libfuzzer_sys::fuzz_target;
use mqtrace::retry::{
    self, ATTEMPT_HEADER, CopyHeaders, CopyTo, DEAD_LETTER_REASON_HEADER, NOT_BEFORE_HEADER,
    ORIGIN_HEADER, PREVIOUS_ATTEMPT_HEADER,
};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
use std::collections::HashMap;
use std::time::Duration;

const KEYS: [&str; 5] = [
    ATTEMPT_HEADER,
    PREVIOUS_ATTEMPT_HEADER,
    ORIGIN_HEADER,
    DEAD_LETTER_REASON_HEADER,
    NOT_BEFORE_HEADER,
];

fuzz_target!(|data: &[u8]| {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let text = String::from_utf8_lossy(rest);
    let mut h: HashMap<String, String> = HashMap::new();
    for (i, value) in text.split('\u{1}').take(KEYS.len()).enumerate() {
        h.insert(
            KEYS[(i + usize::from(flags >> 4)) % KEYS.len()].to_owned(),
            value.to_owned(),
        );
    }
    let believed = flags & 1 == 1;
    let history = retry::read_history(&h, "orders", believed);
    if believed {
        assert_eq!(history, retry::history(&h));
        if let Some(r) = &history.dead_letter_reason {
            assert!(r.len() <= retry::MAX_REASON_LEN);
        }
    } else {
        assert!(history.previous_attempt.is_none() && history.origin.is_none());
        assert!(history.dead_letter_reason.is_none());
        assert!(
            history.refused.is_some(),
            "every present history header is refused"
        );
    }
    if let Some(n) = retry::attempt(&h) {
        assert!(n >= 1);
    }
    let max = Duration::from_secs(u64::from(flags));
    assert!(retry::due_in(&h, max).is_none_or(|w| w <= max && !w.is_zero()));

    // What mqtrace writes on a copy comes back as written.
    let sc = |n: u64| {
        SpanContext::new(
            TraceId::from(u128::from(n) << 64 | 1),
            SpanId::from(n | 1),
            TraceFlags::new(flags & 1),
            false,
            TraceState::NONE,
        )
    };
    let attempt = u32::from(flags % 9) + 1;
    let to = if flags & 2 == 2 {
        CopyTo::DeadLetter { reason: &text }
    } else {
        CopyTo::Retry {
            attempt,
            delay: Duration::from_millis(u64::from(flags) * 100),
        }
    };
    let copy = CopyHeaders::new(&to, &sc(2), Some(&sc(3)), attempt, flags & 4 == 4);
    let mut written: HashMap<String, String> = HashMap::new();
    copy.write(&mut written);
    let back = retry::history(&written);
    assert_eq!(back.refused, None, "{written:?}");
    assert_eq!(
        back.previous_attempt.map(|s| s.span_id()),
        Some(sc(2).span_id())
    );
    assert_eq!(back.origin.map(|s| s.trace_id()), Some(sc(3).trace_id()));
    assert_eq!(retry::attempt(&written), Some(attempt));
    if let CopyTo::DeadLetter { reason } = to {
        let r = back.dead_letter_reason.expect("reason read back");
        assert!(reason.starts_with(&r) && r.len() <= retry::MAX_REASON_LEN);
    }
});
