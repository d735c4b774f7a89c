//! Delivery attempt numbers and dead-letter history, read from what RabbitMQ records.

use lapin::types::{AMQPValue, FieldTable};

/// What the broker's headers say about earlier deliveries of a message.
///
/// ```
/// use lapin::types::{AMQPValue, FieldTable};
/// let mut h = FieldTable::default();
/// h.insert("x-delivery-count".into(), AMQPValue::LongLongInt(2));
/// let info = mqtrace_lapin::DeliveryHistory::read(Some(&h), false, "orders");
/// assert_eq!(info.attempt, 3);
/// ```
#[derive(Clone, Debug, Default, PartialEq, Eq)]
#[non_exhaustive]
pub struct DeliveryHistory {
    /// The delivery attempt, starting at 1. The largest of: quorum queues'
    /// `x-delivery-count` + 1; 1 + the `x-death` counts of rejections and delivery-limit
    /// dead-letterings from this queue (a dead-letter/TTL retry loop); mqtrace's own
    /// `mqtrace-attempt` header; and 2 when the broker flags a redelivery it does not count.
    pub attempt: u32,
    /// Why the message was last dead-lettered (`rejected`, `expired`, `delivery_limit`,
    /// `maxlen`), from the newest `x-death` entry; `None` when longer than
    /// [`MAX_X_DEATH_VALUE`] bytes, or when the message carries mqtrace's own
    /// `mqtrace-dead-letter-reason` (a copy `RetryQueues` dead-lettered, whose reason the core
    /// records: one `mqtrace.dead_letter.reason` per span).
    pub dead_letter_reason: Option<String>,
    /// The queue it was last dead-lettered from (`None` when longer than
    /// [`MAX_X_DEATH_VALUE`] bytes).
    pub dead_letter_queue: Option<String>,
}

/// The longest `x-death` `reason` or `queue` read, in bytes: AMQP's limit for a queue name
/// (RabbitMQ's reasons are a word). The header can be written by any publisher, so a longer
/// value is ignored rather than copied into a span.
pub const MAX_X_DEATH_VALUE: usize = 255;

fn as_int(v: &AMQPValue) -> Option<i64> {
    Some(match v {
        AMQPValue::ShortShortInt(n) => i64::from(*n),
        AMQPValue::ShortShortUInt(n) => i64::from(*n),
        AMQPValue::ShortInt(n) => i64::from(*n),
        AMQPValue::ShortUInt(n) => i64::from(*n),
        AMQPValue::LongInt(n) => i64::from(*n),
        AMQPValue::LongUInt(n) => i64::from(*n),
        AMQPValue::LongLongInt(n) => *n,
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes())
            .ok()?
            .trim()
            .parse()
            .ok()?,
        AMQPValue::ShortString(s) => s.as_str().trim().parse().ok()?,
        _ => return None,
    })
}

/// A bounded text value: at most [`MAX_X_DEATH_VALUE`] bytes.
fn as_string(v: &AMQPValue) -> Option<String> {
    match v {
        AMQPValue::LongString(s) if s.as_bytes().len() <= MAX_X_DEATH_VALUE => {
            Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
        }
        AMQPValue::ShortString(s) if s.as_str().len() <= MAX_X_DEATH_VALUE => {
            Some(s.as_str().to_owned())
        }
        _ => None,
    }
}

/// The attempt mqtrace's `mqtrace-attempt` header carries: an integer, or text read by the
/// core's one parser ([`mqtrace::retry::parse_attempt`]).
fn as_attempt(v: &AMQPValue) -> Option<u32> {
    match v {
        AMQPValue::LongString(s) => {
            mqtrace::retry::parse_attempt(std::str::from_utf8(s.as_bytes()).ok()?)
        }
        AMQPValue::ShortString(s) => mqtrace::retry::parse_attempt(s.as_str()),
        other => as_int(other).map(to_u32).filter(|n| *n >= 1),
    }
}

fn to_u32(n: i64) -> u32 {
    u32::try_from(n.max(0)).unwrap_or(u32::MAX)
}

impl DeliveryHistory {
    /// Reads the history of a delivery from its headers, its `redelivered` flag and the queue
    /// it was consumed from.
    ///
    /// ```
    /// let info = mqtrace_lapin::DeliveryHistory::read(None, true, "orders");
    /// assert_eq!(info.attempt, 2);
    /// ```
    pub fn read(headers: Option<&FieldTable>, redelivered: bool, queue: &str) -> Self {
        Self::read_believing(headers, redelivered, queue, true)
    }

    /// As [`read`](Self::read), with `mqtrace-attempt` counted only when `believed` (the
    /// traced consumer passes [`Instrumentation::believes_history`](mqtrace::instrument::Instrumentation::believes_history)
    /// of the queue: a trusted source, or one `RetryQueues` declared). The broker's own
    /// counts (`x-delivery-count`, `x-death`, `redelivered`) are read either way.
    ///
    /// ```
    /// use lapin::types::{AMQPValue, FieldTable};
    /// let mut h = FieldTable::default();
    /// h.insert("mqtrace-attempt".into(), AMQPValue::LongLongInt(9));
    /// assert_eq!(mqtrace_lapin::DeliveryHistory::read_believing(Some(&h), false, "feed", false).attempt, 1);
    /// assert_eq!(mqtrace_lapin::DeliveryHistory::read_believing(Some(&h), false, "feed", true).attempt, 9);
    /// ```
    pub fn read_believing(
        headers: Option<&FieldTable>,
        redelivered: bool,
        queue: &str,
        believed: bool,
    ) -> Self {
        let mut attempt: u32 = 1;
        let mut out = Self::default();
        if let Some(h) = headers.map(FieldTable::inner) {
            if let Some(n) = h.get("x-delivery-count").and_then(as_int) {
                attempt = attempt.max(to_u32(n).saturating_add(1));
            }
            if let Some(n) = h
                .get(mqtrace::ATTEMPT_HEADER)
                .filter(|_| believed)
                .and_then(as_attempt)
            {
                attempt = attempt.max(n);
            }
            let own_reason = h.contains_key(mqtrace::retry::DEAD_LETTER_REASON_HEADER);
            if let Some(AMQPValue::FieldArray(deaths)) = h.get("x-death") {
                let mut failures: i64 = 0;
                for (i, death) in deaths.as_slice().iter().enumerate() {
                    let AMQPValue::FieldTable(d) = death else {
                        continue;
                    };
                    let d = d.inner();
                    let reason = d.get("reason").and_then(as_string);
                    let from = d.get("queue").and_then(as_string);
                    if i == 0 {
                        if !own_reason {
                            out.dead_letter_reason.clone_from(&reason);
                        }
                        out.dead_letter_queue.clone_from(&from);
                    }
                    let count = d.get("count").and_then(as_int).unwrap_or(1);
                    if from.as_deref() == Some(queue)
                        && matches!(reason.as_deref(), Some("rejected" | "delivery_limit"))
                    {
                        failures = failures.saturating_add(count);
                    }
                }
                attempt = attempt.max(to_u32(failures.saturating_add(1)));
            }
        }
        if redelivered {
            attempt = attempt.max(2);
        }
        out.attempt = attempt;
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{FieldArray, LongString};

    fn death(queue: &str, reason: &str, count: i64) -> AMQPValue {
        let mut t = FieldTable::default();
        t.insert(
            "queue".into(),
            AMQPValue::LongString(LongString::from(queue)),
        );
        t.insert(
            "reason".into(),
            AMQPValue::LongString(LongString::from(reason)),
        );
        t.insert("count".into(), AMQPValue::LongLongInt(count));
        AMQPValue::FieldTable(t)
    }

    #[test]
    fn retry_loop_through_a_delay_queue_counts_rejections_from_this_queue() {
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![
                death("work.delay", "expired", 2),
                death("work", "rejected", 2),
            ])),
        );
        let info = DeliveryHistory::read(Some(&h), false, "work");
        assert_eq!(info.attempt, 3);
        assert_eq!(info.dead_letter_reason.as_deref(), Some("expired"));
        assert_eq!(info.dead_letter_queue.as_deref(), Some("work.delay"));
        // Consumed from the dead-letter queue itself, it is that queue's first attempt.
        assert_eq!(
            DeliveryHistory::read(Some(&h), false, "work.dlq").attempt,
            1
        );
    }

    #[test]
    fn x_death_values_are_bounded() {
        let huge = "x".repeat(1 << 20);
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death(&huge, &huge, 1)])),
        );
        let info = DeliveryHistory::read(Some(&h), false, "work");
        assert_eq!(info.dead_letter_reason, None);
        assert_eq!(info.dead_letter_queue, None);
        let edge = "q".repeat(MAX_X_DEATH_VALUE);
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death(&edge, "rejected", 1)])),
        );
        let info = DeliveryHistory::read(Some(&h), false, &edge);
        assert_eq!(info.dead_letter_queue.as_deref(), Some(edge.as_str()));
        assert_eq!(info.attempt, 2);
    }

    #[test]
    fn mqtraces_own_dead_letter_reason_supersedes_x_death_so_the_key_is_set_once() {
        let mut h = FieldTable::default();
        h.insert(
            "x-death".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![death("work.retry.3", "expired", 1)])),
        );
        h.insert(
            mqtrace::retry::DEAD_LETTER_REASON_HEADER.into(),
            AMQPValue::LongString(LongString::from("gave up after 3 of 3 attempts")),
        );
        let info = DeliveryHistory::read(Some(&h), false, "work.dlq");
        assert_eq!(info.dead_letter_reason, None);
        assert_eq!(info.dead_letter_queue.as_deref(), Some("work.retry.3"));
    }

    #[test]
    fn mqtrace_header_and_plain_first_delivery() {
        let mut h = FieldTable::default();
        h.insert(
            mqtrace::ATTEMPT_HEADER.into(),
            AMQPValue::LongString(LongString::from("4")),
        );
        assert_eq!(DeliveryHistory::read(Some(&h), false, "q").attempt, 4);
        assert_eq!(DeliveryHistory::read(None, false, "q").attempt, 1);
        h.insert(mqtrace::ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(3));
        assert_eq!(DeliveryHistory::read(Some(&h), false, "q").attempt, 3);
        h.insert(
            mqtrace::ATTEMPT_HEADER.into(),
            AMQPValue::LongString(LongString::from("9".repeat(1000))),
        );
        assert_eq!(DeliveryHistory::read(Some(&h), false, "q").attempt, 1);
    }
}
