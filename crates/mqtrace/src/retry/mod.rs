//! Retries and dead-lettering with one vocabulary for every broker.
//!
//! A handler returns `Ok(())` or a [`HandlerError`] classified as transient or permanent. A
//! [`RetryPolicy`] turns the result and the delivery attempt into a [`Decision`]: acknowledge,
//! retry after a delay, or dead-letter. [`run`] drives one delivery through that: it runs the
//! handler inside the process span (catching panics and enforcing a time limit, both treated as
//! transient failures so the message is never lost), records the decision on the span, and
//! carries it out through the three primitives a broker crate supplies ([`RetryBroker`]:
//! publish a copy, requeue, settle). Users can still settle by hand; the policy is a
//! convenience.
//!
//! One concept per file: [`RetryPolicy`] and [`Decision`] (`policy.rs`), [`HandlerError`] and
//! [`RetryError`] (`error.rs`), the headers mqtrace owns and their bounds (`headers.rs`), the
//! history a copy carries ([`read_history`], [`CopyHeaders`], `history.rs`), the sources
//! mqtrace declared ([`declare_source`], `sources.rs`), waiting for a copy
//! ([`wait_in_span`], `wait.rs`), and the flow ([`run`], [`RetryBroker`], `run.rs`).
//!
//! Each broker crate names its retry type after what it declares (`RetryQueues` on RabbitMQ,
//! `RetryTopics` on Kafka and Pub/Sub), built the same way — `declare(client, name, policy)`,
//! async, returning `Result<Self, RetryError>` — and used the same way —
//! `handle(delivery, handler)` returning `Result<Decision, RetryError>`, where `RetryError`
//! is this module's [`RetryError`] over the client's error types.
//!
//! ```
//! use std::time::{Duration, SystemTime, UNIX_EPOCH};
//! use mqtrace::retry::{Decision, HandlerError, RetryPolicy};
//! let policy = RetryPolicy::exponential(3).with_initial_delay(Duration::from_millis(100)).with_jitter(0.0);
//! let failed: Result<(), HandlerError> = Err(HandlerError::transient("db timeout"));
//! assert_eq!(policy.decide(1, &failed), Decision::Retry { delay: Duration::from_millis(100), next_attempt: 2 });
//! assert!(matches!(policy.decide(3, &failed), Decision::DeadLetter { .. }));
//! assert_eq!(policy.decide(1, &Ok(())), Decision::Ack);
//! ```

mod error;
mod headers;
mod history;
mod policy;
mod run;
mod sources;
mod wait;

pub use error::{ErrorClass, HandlerError, RetryError};
pub use headers::{
    ATTEMPT_HEADER, DEAD_LETTER_REASON_HEADER, MAX_REASON_LEN, MAX_TRACEPARENT_LEN,
    NOT_BEFORE_HEADER, ORIGIN_HEADER, OWNED_HEADERS, PREVIOUS_ATTEMPT_HEADER, attempt,
    bounded_reason, due_in, epoch_millis, is_owned, left_out_of_copy, not_before, parse_attempt,
};
pub use history::{CopyHeaders, CopyTo, History, history, read_history, write_history};
pub use policy::{Decision, RetryPolicy};
pub use run::{RetryBroker, Settlement, run};
pub use sources::{declare_source, is_declared_source};
pub use wait::wait_in_span;

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[test]
    fn jitter_stays_within_its_fraction_and_the_cap() {
        let p = RetryPolicy::exponential(10)
            .with_initial_delay(Duration::from_millis(1000))
            .with_jitter(0.2);
        for _ in 0..200 {
            let Decision::Retry {
                delay,
                next_attempt,
            } = p.decide(1, &Err(HandlerError::transient("x")))
            else {
                panic!("expected a retry");
            };
            assert_eq!(next_attempt, 2);
            assert!(
                delay >= Duration::from_millis(800) && delay <= Duration::from_millis(1200),
                "{delay:?}"
            );
        }
        let capped = RetryPolicy::exponential(30).with_max_delay(Duration::from_secs(2));
        assert!(capped.delay_for(25) <= Duration::from_secs(2));
    }

    #[test]
    fn no_jittered_delay_exceeds_the_longest_delay() {
        let p = RetryPolicy::exponential(4)
            .with_initial_delay(Duration::from_millis(100))
            .with_jitter(0.5);
        for attempt in 1..4 {
            for _ in 0..100 {
                if let Decision::Retry { delay, .. } =
                    p.decide(attempt, &Err(HandlerError::transient("x")))
                {
                    assert!(
                        delay <= p.longest_delay(),
                        "{delay:?} > {:?}",
                        p.longest_delay()
                    );
                }
            }
        }
    }

    #[test]
    fn last_attempt_dead_letters_with_the_history_in_the_reason() {
        let p = RetryPolicy::exponential(3);
        assert_eq!(
            p.decide(3, &Err(HandlerError::transient("db down"))),
            Decision::DeadLetter {
                reason: "gave up after 3 of 3 attempts: db down".into()
            }
        );
    }
}
