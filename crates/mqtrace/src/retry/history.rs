//! The attempt history a retried or dead-lettered copy carries: written by [`write_history`]
//! (through [`CopyHeaders`]), read back, bounded and only where it may be believed, by
//! [`read_history`].

use super::headers::{
    ATTEMPT_HEADER, DEAD_LETTER_REASON_HEADER, MAX_REASON_LEN, MAX_TRACEPARENT_LEN,
    NOT_BEFORE_HEADER, ORIGIN_HEADER, PREVIOUS_ATTEMPT_HEADER, bounded_reason, epoch_millis,
};
use super::sources::is_declared_source;
use crate::carrier::{HeaderExtractor, Injector};
use opentelemetry::trace::SpanContext;
use std::fmt::Write as _;
use std::time::{Duration, SystemTime};

/// The attempt history read from a message's headers.
#[derive(Clone, Debug, Default, PartialEq)]
#[non_exhaustive]
pub struct History {
    /// The process span of the attempt before.
    pub previous_attempt: Option<SpanContext>,
    /// The creation context of the first delivery.
    pub origin: Option<SpanContext>,
    /// Why the message was dead-lettered, on a copy sent to a dead-letter destination.
    pub dead_letter_reason: Option<String>,
    /// What was refused and why (`header: why`, `; `-separated), recorded on the process span
    /// as [`mqtrace.context.refused`](crate::attributes::CONTEXT_REFUSED).
    pub refused: Option<String>,
}

impl History {
    fn refuse(&mut self, key: &str, why: std::fmt::Arguments<'_>) {
        let text = self.refused.get_or_insert_with(String::new);
        if !text.is_empty() {
            text.push_str("; ");
        }
        let _ = write!(text, "{key}: {why}");
    }
}

/// Reads the attempt history from a message's headers, believing them (every value still
/// bounded; invalid or over-long values are refused and said so in [`History::refused`]).
///
/// ```
/// use std::collections::HashMap;
/// let mut h: HashMap<String, String> = HashMap::new();
/// h.insert("mqtrace-origin".into(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into());
/// let history = mqtrace::retry::history(&h);
/// assert!(history.origin.is_some() && history.previous_attempt.is_none());
/// ```
pub fn history(headers: &dyn HeaderExtractor) -> History {
    read(headers, true)
}

/// Reads the attempt history of a message consumed from `source`, as the process span uses
/// it: believed when `trusted` (the [`Trust`](crate::Trust) policy trusts the source) or when
/// `source` is one that mqtrace's retry types declared ([`declare_source`](super::declare_source));
/// otherwise every history header present is refused. Whatever the source, a reason longer
/// than [`MAX_REASON_LEN`] bytes or a `traceparent` longer than [`MAX_TRACEPARENT_LEN`] is
/// refused, never copied into a span.
///
/// ```
/// use std::collections::HashMap;
/// let mut h: HashMap<String, String> = HashMap::new();
/// h.insert("mqtrace-dead-letter-reason".into(), "x".repeat(1 << 20));
/// let history = mqtrace::retry::read_history(&h, "orders", true);
/// assert_eq!(history.dead_letter_reason, None);
/// assert!(history.refused.unwrap().starts_with("mqtrace-dead-letter-reason: 1048576 bytes"));
///
/// h.insert("mqtrace-dead-letter-reason".into(), "invalid order".into());
/// let untrusted = mqtrace::retry::read_history(&h, "partner-feed", false);
/// assert_eq!(untrusted.dead_letter_reason, None);
/// assert_eq!(untrusted.refused.as_deref(), Some("mqtrace-dead-letter-reason: untrusted source"));
/// ```
pub fn read_history(headers: &dyn HeaderExtractor, source: &str, trusted: bool) -> History {
    read(headers, trusted || is_declared_source(source))
}

fn read(headers: &dyn HeaderExtractor, believed: bool) -> History {
    let mut out = History::default();
    if !believed {
        for key in [
            ATTEMPT_HEADER,
            PREVIOUS_ATTEMPT_HEADER,
            ORIGIN_HEADER,
            DEAD_LETTER_REASON_HEADER,
            NOT_BEFORE_HEADER,
        ] {
            if headers.header(key).is_some() {
                out.refuse(key, format_args!("untrusted source"));
            }
        }
        return out;
    }
    let context = |out: &mut History, key| match headers.header(key) {
        None => None,
        Some(Err(e)) => {
            out.refuse(key, format_args!("{e}"));
            None
        }
        Some(Ok(v)) if v.len() > MAX_TRACEPARENT_LEN => {
            out.refuse(
                key,
                format_args!(
                    "{} bytes, over the {MAX_TRACEPARENT_LEN}-byte limit",
                    v.len()
                ),
            );
            None
        }
        Some(Ok(v)) => match crate::w3c::parse_traceparent(v) {
            Ok(sc) => Some(sc),
            Err(e) => {
                out.refuse(key, format_args!("{e}"));
                None
            }
        },
    };
    out.previous_attempt = context(&mut out, PREVIOUS_ATTEMPT_HEADER);
    out.origin = context(&mut out, ORIGIN_HEADER);
    match headers.header(DEAD_LETTER_REASON_HEADER) {
        None => {}
        Some(Err(e)) => out.refuse(DEAD_LETTER_REASON_HEADER, format_args!("{e}")),
        Some(Ok(v)) if v.len() > MAX_REASON_LEN => out.refuse(
            DEAD_LETTER_REASON_HEADER,
            format_args!("{} bytes, over the {MAX_REASON_LEN}-byte limit", v.len()),
        ),
        Some(Ok(v)) => out.dead_letter_reason = Some(v.to_owned()),
    }
    out
}

/// Writes the history of a message about to be retried or dead-lettered: the attempt number
/// the copy carries, the current process span as the previous attempt, and the origin.
///
/// ```
/// use std::collections::HashMap;
/// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
/// let sc = SpanContext::new(TraceId::from(1_u128), SpanId::from(2_u64), TraceFlags::SAMPLED, false, TraceState::NONE);
/// let mut h: HashMap<String, String> = HashMap::new();
/// mqtrace::retry::write_history(&mut h, &sc, Some(&sc), 2);
/// assert_eq!(h["mqtrace-attempt"], "2");
/// assert!(h.contains_key("mqtrace-previous-attempt") && h.contains_key("mqtrace-origin"));
/// ```
pub fn write_history(
    injector: &mut dyn Injector,
    process: &SpanContext,
    origin: Option<&SpanContext>,
    attempt: u32,
) {
    history_entries(process, origin, attempt, |k, v| injector.set(k, v));
}

fn history_entries(
    process: &SpanContext,
    origin: Option<&SpanContext>,
    attempt: u32,
    mut set: impl FnMut(&'static str, String),
) {
    set(ATTEMPT_HEADER, attempt.to_string());
    if process.is_valid() {
        set(
            PREVIOUS_ATTEMPT_HEADER,
            crate::w3c::encode_traceparent(process),
        );
    }
    if let Some(o) = origin.filter(|o| o.is_valid()) {
        set(ORIGIN_HEADER, crate::w3c::encode_traceparent(o));
    }
}

/// Where a copy goes: the retry destination for a later attempt, or the dead-letter
/// destination.
///
/// ```
/// use mqtrace::retry::CopyTo;
/// let to = CopyTo::Retry { attempt: 2, delay: std::time::Duration::from_secs(1) };
/// assert!(matches!(to, CopyTo::Retry { attempt: 2, .. }));
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CopyTo<'a> {
    /// The retry destination of attempt `attempt`, to be delivered after `delay`.
    Retry {
        /// The attempt the copy will be.
        attempt: u32,
        /// How long the copy waits before it is delivered.
        delay: Duration,
    },
    /// The dead-letter destination, with why.
    DeadLetter {
        /// Why the message is dead-lettered.
        reason: &'a str,
    },
}

/// The headers mqtrace writes on a copy, in order: [`ATTEMPT_HEADER`], the previous attempt,
/// the origin, then [`NOT_BEFORE_HEADER`] (a retry copy, on a broker that cannot delay it
/// itself) or [`DEAD_LETTER_REASON_HEADER`] (at most [`MAX_REASON_LEN`] bytes). A broker crate
/// drops [`OWNED_HEADERS`](super::OWNED_HEADERS) from the original's headers and adds these.
///
/// ```
/// use std::collections::HashMap;
/// use std::time::Duration;
/// use mqtrace::retry::{CopyHeaders, CopyTo};
/// let sc = opentelemetry::trace::SpanContext::empty_context();
/// let h = CopyHeaders::new(&CopyTo::DeadLetter { reason: "invalid" }, &sc, None, 3, false);
/// let mut out: HashMap<String, String> = HashMap::new();
/// h.write(&mut out);
/// assert_eq!(out["mqtrace-attempt"], "3");
/// assert_eq!(out["mqtrace-dead-letter-reason"], "invalid");
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct CopyHeaders {
    entries: Vec<(&'static str, String)>,
}

impl CopyHeaders {
    /// The headers of a copy going `to`, made by the process span `process` of delivery
    /// attempt `attempt`, whose message first came from `origin`. `with_not_before` is false
    /// for a broker that delays a retry copy itself (RabbitMQ's per-message expiration).
    ///
    /// See the example on [`CopyHeaders`].
    pub fn new(
        to: &CopyTo<'_>,
        process: &SpanContext,
        origin: Option<&SpanContext>,
        attempt: u32,
        with_not_before: bool,
    ) -> Self {
        let mut out = Self {
            entries: Vec::with_capacity(4),
        };
        let copy_attempt = match to {
            CopyTo::Retry { attempt, .. } => *attempt,
            CopyTo::DeadLetter { .. } => attempt,
        };
        history_entries(process, origin, copy_attempt, |k, v| {
            out.entries.push((k, v))
        });
        match to {
            CopyTo::Retry { delay, .. } if with_not_before => {
                let due = epoch_millis(SystemTime::now() + *delay);
                out.entries.push((NOT_BEFORE_HEADER, due.to_string()));
            }
            CopyTo::Retry { .. } => {}
            CopyTo::DeadLetter { reason } => out
                .entries
                .push((DEAD_LETTER_REASON_HEADER, bounded_reason(reason).to_owned())),
        }
        out
    }

    /// The headers, in the order they are written.
    ///
    /// ```
    /// # let sc = opentelemetry::trace::SpanContext::empty_context();
    /// let h = mqtrace::retry::CopyHeaders::new(&mqtrace::retry::CopyTo::DeadLetter { reason: "r" }, &sc, None, 1, false);
    /// assert_eq!(h.iter().next(), Some(("mqtrace-attempt", "1")));
    /// ```
    pub fn iter(&self) -> impl Iterator<Item = (&'static str, &str)> {
        self.entries.iter().map(|(k, v)| (*k, v.as_str()))
    }

    /// Writes every header through `injector`.
    ///
    /// See the example on [`CopyHeaders`].
    pub fn write(&self, injector: &mut dyn Injector) {
        for (k, v) in &self.entries {
            injector.set(k, v.clone());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::attributes as attr;
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{
        MessagingSystem, Operation, OperationType, Outcome, Trust,
        instrument::{Incoming, Instrumentation},
    };
    use std::collections::HashMap;

    const PROCESS: Operation = Operation::new("process", OperationType::Process);
    const TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    /// The process span of a message with `headers` consumed from `source`.
    fn process(
        config: crate::Config,
        t: &TestTelemetry,
        source: &str,
        headers: &HashMap<String, String>,
    ) {
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "history").build(config);
        inst.start_process(
            Incoming::new(PROCESS, source, source).with_headers(headers),
            inst.extract(headers),
        )
        .finish(Outcome::Ack);
        let _ = t;
    }

    #[test]
    fn a_huge_dead_letter_reason_is_refused_not_copied_into_the_span() {
        let t = TestTelemetry::new();
        let mut h = HashMap::new();
        h.insert(DEAD_LETTER_REASON_HEADER.to_owned(), "x".repeat(1 << 20));
        process(t.config(), &t, "orders", &h);
        let spans = t.spans();
        let span = spans.one("process orders");
        assert_eq!(span.attr(attr::DEAD_LETTER_REASON), None);
        let refused = span
            .attr_str(attr::CONTEXT_REFUSED)
            .expect("the refusal is recorded");
        assert!(
            refused
                .starts_with("mqtrace-dead-letter-reason: 1048576 bytes, over the 1024-byte limit"),
            "{refused}"
        );
        assert!(refused.len() < 200, "the refusal does not quote the value");
    }

    #[test]
    fn history_from_an_untrusted_source_is_refused_unless_mqtrace_declared_it() {
        let t = TestTelemetry::new();
        let mut h = HashMap::new();
        h.insert(ORIGIN_HEADER.to_owned(), TRACEPARENT.to_owned());
        h.insert(DEAD_LETTER_REASON_HEADER.to_owned(), "forged".to_owned());
        let untrusting = || t.config().with_trust(Trust::Nothing);
        process(untrusting(), &t, "history-feed", &h);
        super::super::declare_source("history-feed.retry.2");
        process(untrusting(), &t, "history-feed.retry.2", &h);
        let spans = t.spans();
        let feed = spans.one("process history-feed");
        assert_eq!(feed.attr(attr::DEAD_LETTER_REASON), None);
        assert!(feed.link_of_type("origin").is_none());
        assert_eq!(
            feed.attr_str(attr::CONTEXT_REFUSED),
            Some("mqtrace-origin: untrusted source; mqtrace-dead-letter-reason: untrusted source")
        );
        let declared = spans.one("process history-feed.retry.2");
        declared.assert_attr(attr::DEAD_LETTER_REASON, "forged");
        assert!(declared.link_of_type("origin").is_some());
        assert_eq!(declared.attr(attr::CONTEXT_REFUSED), None);
    }

    #[test]
    fn over_long_or_invalid_contexts_are_refused() {
        let mut h = HashMap::new();
        h.insert(
            ORIGIN_HEADER.to_owned(),
            format!("{TRACEPARENT}{}", " ".repeat(300)),
        );
        h.insert(
            PREVIOUS_ATTEMPT_HEADER.to_owned(),
            "not a traceparent".to_owned(),
        );
        let history = history(&h);
        assert_eq!((history.origin, history.previous_attempt), (None, None));
        let refused = history.refused.expect("refused");
        assert!(refused.contains("mqtrace-origin: 355 bytes"), "{refused}");
        assert!(refused.contains("mqtrace-previous-attempt: "), "{refused}");
    }

    #[test]
    fn copy_headers_bound_the_reason_and_carry_not_before_only_when_asked() {
        let sc = SpanContext::empty_context();
        let long = "r".repeat(5000);
        let dead = CopyHeaders::new(&CopyTo::DeadLetter { reason: &long }, &sc, None, 2, true);
        let reason = dead
            .iter()
            .find(|(k, _)| *k == DEAD_LETTER_REASON_HEADER)
            .expect("reason");
        assert_eq!(reason.1.len(), MAX_REASON_LEN);
        assert!(dead.iter().all(|(k, _)| k != NOT_BEFORE_HEADER));
        let retry = CopyTo::Retry {
            attempt: 3,
            delay: Duration::from_secs(1),
        };
        let kafka = CopyHeaders::new(&retry, &sc, None, 2, true);
        assert!(kafka.iter().any(|(k, v)| k == ATTEMPT_HEADER && v == "3"));
        assert!(kafka.iter().any(|(k, _)| k == NOT_BEFORE_HEADER));
        let rabbit = CopyHeaders::new(&retry, &sc, None, 2, false);
        assert!(rabbit.iter().all(|(k, _)| k != NOT_BEFORE_HEADER));
    }
}
