//! The headers mqtrace owns on a retried or dead-lettered copy, and how each is read: one
//! list of names ([`OWNED_HEADERS`]), one attempt parser ([`parse_attempt`]), one due-time
//! reader ([`not_before`], [`due_in`]), and the bounds every value is held to.
//!
//! These headers can be written by anyone who can publish, so nothing read from them is
//! believed unbounded: a value longer than its bound is refused, not truncated.

use crate::carrier::HeaderExtractor;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

/// Header carrying the delivery attempt where the broker does not count attempts (a decimal
/// number, 1 = first delivery).
pub const ATTEMPT_HEADER: &str = "mqtrace-attempt";
/// Header carrying the process span of the attempt before (a `traceparent` value).
pub const PREVIOUS_ATTEMPT_HEADER: &str = "mqtrace-previous-attempt";
/// Header carrying the creation context of the first delivery (a `traceparent` value).
pub const ORIGIN_HEADER: &str = "mqtrace-origin";
/// Header carrying why a message was dead-lettered (at most [`MAX_REASON_LEN`] bytes).
pub const DEAD_LETTER_REASON_HEADER: &str = "mqtrace-dead-letter-reason";
/// Header (Kafka) or attribute (Pub/Sub) carrying when a retried copy is due (milliseconds
/// since the Unix epoch), for brokers without a delay of their own: the consumer waits until
/// then, for at most the policy's [`longest_delay`](super::RetryPolicy::longest_delay).
pub const NOT_BEFORE_HEADER: &str = "mqtrace-not-before";

/// Every header mqtrace writes on a copy; a copy drops them from the original before writing
/// its own, so a stale or forged value is never forwarded.
///
/// ```
/// assert!(mqtrace::retry::OWNED_HEADERS.contains(&"mqtrace-attempt"));
/// assert!(mqtrace::retry::is_owned("mqtrace-not-before") && !mqtrace::retry::is_owned("traceparent"));
/// ```
pub const OWNED_HEADERS: [&str; 5] = [
    ATTEMPT_HEADER,
    PREVIOUS_ATTEMPT_HEADER,
    ORIGIN_HEADER,
    DEAD_LETTER_REASON_HEADER,
    NOT_BEFORE_HEADER,
];

/// Whether `key` is one of [`OWNED_HEADERS`].
///
/// ```
/// assert!(mqtrace::retry::is_owned("mqtrace-origin"));
/// ```
pub fn is_owned(key: &str) -> bool {
    OWNED_HEADERS.contains(&key)
}

/// Whether a retry or dead-letter copy leaves out the received message's header `key`: one of
/// mqtrace's own ([`OWNED_HEADERS`], written anew) or a context field of `propagation` (any
/// spelling). A copy is a new message whose creation context is its own send span's, whatever
/// [`crate::ExistingContext`] says about contexts an application forwards; the original's
/// context travels in `mqtrace-origin` and the previous-attempt link.
///
/// ```
/// let w3c = mqtrace::Propagation::W3c;
/// assert!(mqtrace::retry::left_out_of_copy("TraceParent", &w3c));
/// assert!(mqtrace::retry::left_out_of_copy("mqtrace-attempt", &w3c));
/// assert!(!mqtrace::retry::left_out_of_copy("order-id", &w3c));
/// ```
pub fn left_out_of_copy(key: &str, propagation: &crate::Propagation) -> bool {
    if is_owned(key) {
        return true;
    }
    if key.bytes().any(|b| b.is_ascii_uppercase()) {
        propagation.is_field(&key.to_ascii_lowercase())
    } else {
        propagation.is_field(key)
    }
}

/// The longest dead-letter reason written or read, in bytes; a longer reason is cut (on a
/// character boundary) when written and refused when read.
pub const MAX_REASON_LEN: usize = 1024;

/// The longest `traceparent` value read from [`PREVIOUS_ATTEMPT_HEADER`] or [`ORIGIN_HEADER`];
/// a longer one is refused before it is parsed.
pub const MAX_TRACEPARENT_LEN: usize = 256;

/// The longest attempt or due-time text read (`u64::MAX` has 20 digits).
const MAX_NUMBER_LEN: usize = 24;

/// Parses an attempt number as written in [`ATTEMPT_HEADER`]: decimal, surrounding spaces
/// allowed, at least 1; `None` otherwise (too long, not a number, 0).
///
/// ```
/// use mqtrace::retry::parse_attempt;
/// assert_eq!(parse_attempt(" 3 "), Some(3));
/// assert_eq!(parse_attempt("0"), None);
/// assert_eq!(parse_attempt("x"), None);
/// assert_eq!(parse_attempt(&"9".repeat(100)), None);
/// ```
pub fn parse_attempt(text: &str) -> Option<u32> {
    if text.len() > MAX_NUMBER_LEN {
        return None;
    }
    text.trim().parse::<u32>().ok().filter(|n| *n >= 1)
}

/// The attempt a message's [`ATTEMPT_HEADER`] carries, if it carries a valid one.
///
/// ```
/// let mut h = std::collections::HashMap::<String, String>::new();
/// h.insert("mqtrace-attempt".into(), "2".into());
/// assert_eq!(mqtrace::retry::attempt(&h), Some(2));
/// ```
pub fn attempt(headers: &dyn HeaderExtractor) -> Option<u32> {
    match headers.header(ATTEMPT_HEADER) {
        Some(Ok(v)) => parse_attempt(v),
        _ => None,
    }
}

/// `reason` cut to at most [`MAX_REASON_LEN`] bytes on a character boundary, as a copy's
/// [`DEAD_LETTER_REASON_HEADER`] carries it.
///
/// ```
/// let long = "é".repeat(1000);
/// let cut = mqtrace::retry::bounded_reason(&long);
/// assert!(cut.len() <= mqtrace::retry::MAX_REASON_LEN && long.starts_with(cut));
/// ```
pub fn bounded_reason(reason: &str) -> &str {
    if reason.len() <= MAX_REASON_LEN {
        return reason;
    }
    let mut end = MAX_REASON_LEN;
    while !reason.is_char_boundary(end) {
        end -= 1;
    }
    &reason[..end]
}

/// `time` as milliseconds since the Unix epoch, the format of [`NOT_BEFORE_HEADER`].
///
/// ```
/// use std::time::{Duration, UNIX_EPOCH};
/// assert_eq!(mqtrace::retry::epoch_millis(UNIX_EPOCH + Duration::from_millis(1500)), 1500);
/// ```
pub fn epoch_millis(time: SystemTime) -> u64 {
    time.duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// When a copy is due, from its [`NOT_BEFORE_HEADER`]; `None` when absent or not a time.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::{Duration, UNIX_EPOCH};
/// let mut h: HashMap<String, String> = HashMap::new();
/// h.insert("mqtrace-not-before".into(), "1700000000000".into());
/// assert_eq!(mqtrace::retry::not_before(&h), Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
/// h.insert("mqtrace-not-before".into(), "soon".into());
/// assert_eq!(mqtrace::retry::not_before(&h), None);
/// ```
pub fn not_before(headers: &dyn HeaderExtractor) -> Option<SystemTime> {
    match headers.header(NOT_BEFORE_HEADER) {
        Some(Ok(v)) if v.len() <= MAX_NUMBER_LEN => v
            .trim()
            .parse::<u64>()
            .ok()
            .and_then(|ms| UNIX_EPOCH.checked_add(Duration::from_millis(ms))),
        _ => None,
    }
}

/// How long a copy must still wait before it is due, at most `max` (pass the policy's
/// [`longest_delay`](super::RetryPolicy::longest_delay): a guard against a wrong clock or a
/// forged header); `None` when it is due now.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::{Duration, SystemTime};
/// let mut h: HashMap<String, String> = HashMap::new();
/// let due = mqtrace::retry::epoch_millis(SystemTime::now() + Duration::from_secs(3600));
/// h.insert("mqtrace-not-before".into(), due.to_string());
/// assert_eq!(mqtrace::retry::due_in(&h, Duration::from_secs(1)), Some(Duration::from_secs(1)));
/// assert_eq!(mqtrace::retry::due_in(&HashMap::<String, String>::new(), Duration::from_secs(1)), None);
/// ```
pub fn due_in(headers: &dyn HeaderExtractor, max: Duration) -> Option<Duration> {
    let wait = not_before(headers)?
        .duration_since(SystemTime::now())
        .ok()?;
    Some(wait.min(max)).filter(|w| !w.is_zero())
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    #[test]
    fn due_times_are_read_capped_and_ignored_when_past_or_invalid() {
        let mut a = HashMap::new();
        assert_eq!(due_in(&a, Duration::from_secs(10)), None);
        a.insert(NOT_BEFORE_HEADER.to_owned(), "x".to_owned());
        assert_eq!(due_in(&a, Duration::from_secs(10)), None);
        a.insert(NOT_BEFORE_HEADER.to_owned(), "1000".to_owned());
        assert_eq!(due_in(&a, Duration::from_secs(10)), None, "long past");
        let soon = epoch_millis(SystemTime::now() + Duration::from_secs(5));
        a.insert(NOT_BEFORE_HEADER.to_owned(), soon.to_string());
        let w = due_in(&a, Duration::from_secs(10)).expect("due later");
        assert!(
            w > Duration::from_secs(3) && w <= Duration::from_secs(5),
            "{w:?}"
        );
        assert_eq!(
            due_in(&a, Duration::from_secs(1)),
            Some(Duration::from_secs(1))
        );
        a.insert(NOT_BEFORE_HEADER.to_owned(), u64::MAX.to_string());
        assert!(due_in(&a, Duration::from_secs(2)).is_none_or(|w| w <= Duration::from_secs(2)));
        a.insert(NOT_BEFORE_HEADER.to_owned(), "1".repeat(1 << 20));
        assert_eq!(not_before(&a), None, "a 1 MiB number is not parsed");
    }

    #[test]
    fn reasons_are_cut_on_a_character_boundary() {
        assert_eq!(bounded_reason("short"), "short");
        let s = format!("a{}", "€".repeat(600));
        let cut = bounded_reason(&s);
        assert!(cut.len() <= MAX_REASON_LEN && cut.len() > MAX_REASON_LEN - 3);
        assert!(s.starts_with(cut));
    }
}
