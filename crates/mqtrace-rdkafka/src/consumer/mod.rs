//! Traced consumers and the settle operations they record.

mod base;
mod context;
mod stream;

pub use base::{TracedBaseConsumer, TracedIter};
pub use context::{CommitReporting, CommitTracker, TracedConsumerContext};
pub use stream::{TracedMessageStream, TracedStreamConsumer};

use crate::error::settle_error;
use crate::message::{Consuming, TracedMessage};
use crate::{COMMIT, SEEK, STORE_OFFSET};
use mqtrace::{Operation, Outcome, instrument::Settle};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::Offset;
use std::borrow::Cow;
use std::time::Duration;

/// What a settle operation means for the message: its outcome, and why.
pub(crate) struct Meaning {
    pub(crate) outcome: Outcome,
    pub(crate) reason: Option<Cow<'static, str>>,
}

impl Meaning {
    /// A plain acknowledgement.
    pub(crate) const ACK: Self = Self {
        outcome: Outcome::Ack,
        reason: None,
    };

    fn settle(self, op: Operation) -> Settle {
        let settle = Settle::new(op, self.outcome);
        match self.reason {
            Some(r) => settle.with_reason(r),
            None => settle,
        }
    }
}

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
    meaning: Meaning,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
{
    let Some(span) = message.take_span() else {
        return consumer.commit_message(message.message(), mode);
    };
    let mut pending = span.start_settle(meaning.settle(COMMIT));
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
    meaning: Meaning,
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
    let mut pending = span.start_settle(meaning.settle(op));
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

/// Settles `message` the way the consumer's configuration calls for: with `enable.auto.commit`
/// and without `enable.auto.offset.store`, by storing its offset (committed by librdkafka,
/// the result reported); otherwise by committing it with `mode`.
pub(crate) fn settle<C, K>(
    consumer: &K,
    consuming: &Consuming,
    message: &TracedMessage<'_>,
    mode: CommitMode,
    meaning: Meaning,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
{
    if consuming.info.auto_commit() && !consuming.info.auto_offset_store() {
        store_offset_from_message(consumer, consuming, message, meaning)
    } else {
        commit_message(consumer, consuming, message, mode, meaning)
    }
}

/// Seeks the message's partition back to the message, so the consumer receives it again
/// (Kafka's requeue), under a CLIENT span `seek {topic}` with outcome `requeue` and `reason`.
pub(crate) fn seek_back<C, K>(
    consumer: &K,
    consuming: &Consuming,
    message: &TracedMessage<'_>,
    reason: String,
    timeout: Duration,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
{
    let m = message.message();
    let seek = || {
        consumer.seek(
            m.topic(),
            m.partition(),
            Offset::Offset(m.offset()),
            timeout,
        )
    };
    let Some(span) = message.take_span() else {
        return seek();
    };
    let mut pending = span.start_settle(
        Meaning {
            outcome: Outcome::Requeue,
            reason: Some(Cow::Owned(reason)),
        }
        .settle(SEEK),
    );
    pending.record(|| consuming.message_attributes(m));
    let result = seek();
    pending.finish(result.as_ref().err().map(settle_error));
    result
}
