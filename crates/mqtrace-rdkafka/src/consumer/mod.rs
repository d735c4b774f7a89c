//! Traced consumers and the settle operations they record.

mod base;
mod context;
mod stream;

pub use base::{TracedBaseConsumer, TracedIter};
pub use context::{CommitReporting, CommitTracker, TracedConsumerContext};
pub use stream::{TracedMessageStream, TracedStreamConsumer};

use crate::error::settle_error;
use crate::message::{Consuming, TracedMessage};
use crate::{COMMIT, STORE_OFFSET};
use mqtrace::{Outcome, Settle};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaResult;

/// `commit_message` under a CLIENT `commit {topic}` span.
///
/// A synchronous commit is recorded with its result. librdkafka reports nothing back for a
/// manual asynchronous commit (rdkafka's `commit_callback` only sees the commits librdkafka
/// makes itself), so its span ends once the commit is handed over, with an error only if that
/// failed, and an event `mqtrace.settle.unreported`.
pub(crate) fn commit_message<C, K>(
    consumer: &K,
    consuming: &Consuming,
    message: &TracedMessage<'_>,
    mode: CommitMode,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
{
    let Some(span) = message.take_span() else {
        return consumer.commit_message(message.message(), mode);
    };
    let mut pending = span.start_settle(Settle::new(COMMIT, Outcome::Ack));
    pending.record(|| consuming.message_attributes(message.message()));
    let result = consumer.commit_message(message.message(), mode);
    match (&result, mode) {
        (Err(e), _) => pending.finish(Some(settle_error(e))),
        (Ok(()), CommitMode::Sync) => pending.finish(None),
        // Nothing will report the broker's answer: end as unreported (see above).
        (Ok(()), CommitMode::Async) => drop(pending),
    }
    result
}

/// `store_offset_from_message` as a settle operation.
///
/// With `enable.auto.commit`, the stored offset is committed by librdkafka's auto-commit, whose
/// result arrives through `commit_callback`: the span is `commit {topic}`, the process span
/// ends now and the commit span when the result is reported (see [`CommitTracker`]). Without
/// auto-commit the span is `store_offset {topic}` and covers the store only.
pub(crate) fn store_offset_from_message<C, K>(
    consumer: &K,
    consuming: &Consuming,
    message: &TracedMessage<'_>,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
{
    let Some(span) = message.take_span() else {
        return consumer.store_offset_from_message(message.message());
    };
    let auto_commit = consuming.info.auto_commit();
    let op = if auto_commit { COMMIT } else { STORE_OFFSET };
    let mut pending = span.start_settle(Settle::new(op, Outcome::Ack));
    pending.record(|| consuming.message_attributes(message.message()));
    let result = consumer.store_offset_from_message(message.message());
    match &result {
        Err(e) => pending.finish(Some(settle_error(e))),
        Ok(()) if auto_commit => {
            pending.end_process();
            let m = message.message();
            consumer.context().commit_tracker().register(
                m.topic(),
                m.partition(),
                m.offset().saturating_add(1),
                pending,
            );
        }
        Ok(()) => pending.finish(None),
    }
    result
}
