//! Traced consumers and the settle operations they record.

mod base;
mod context;
mod stream;

pub use base::{TracedBaseConsumer, TracedIter};
pub use context::{CommitReporting, CommitTracker, TracedConsumerContext};
pub(crate) use context::{Shared, Tracked};
pub use stream::{TracedMessageStream, TracedStreamConsumer};

use crate::error::settle_error;
use crate::message::{ConsumedMessage, Consuming, TracedMessage};
use crate::{COMMIT, SEEK, STORE_OFFSET};
use mqtrace::{Operation, Outcome, instrument::Settle};
use rdkafka::Message;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
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
pub(crate) fn commit_message<C, K, M>(
    consumer: &K,
    message: &M,
    mode: CommitMode,
    meaning: Meaning,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
    M: ConsumedMessage + ?Sized,
{
    let (topic, partition, offset) = message.position();
    let commit = || match message.borrowed() {
        Some(m) => consumer.commit_message(m, mode),
        None => {
            let mut tpl = TopicPartitionList::with_capacity(1);
            tpl.add_partition_offset(topic, partition, Offset::Offset(offset.saturating_add(1)))?;
            consumer.commit(&tpl, mode)
        }
    };
    let Some(span) = message.processing().take() else {
        return commit();
    };
    let pending = span.start_settle(meaning.settle(COMMIT));
    let result = commit();
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
/// result arrives through `commit_callback`: the process span ends now, and the result is
/// recorded on the `commit {topic}` span of the store's offset range (see [`CommitTracker`]):
/// the first store of a range gets that span, the others a `store_offset {topic}` span
/// covering the store. Without auto-commit the span is `store_offset {topic}` and covers the
/// store only.
pub(crate) fn store_offset_from_message<C, K, M>(
    consumer: &K,
    consuming: &Consuming,
    message: &M,
    meaning: Meaning,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
    M: ConsumedMessage + ?Sized,
{
    let (topic, partition, offset) = message.position();
    let store = || match message.borrowed() {
        Some(m) => consumer.store_offset_from_message(m),
        None => consumer.store_offset(topic, partition, offset),
    };
    let tracker = consumer.context().commit_tracker();
    let Some(span) = message.processing().take() else {
        let result = store();
        if result.is_ok() {
            tracker.stored(topic, partition, offset.saturating_add(1));
        }
        return result;
    };
    let auto_commit = consuming.info.auto_commit();
    let next = offset.saturating_add(1);
    // A store joins the open range of its partition (whose span reports the commit) or
    // opens one.
    let joined = auto_commit && tracker.join(topic, partition, next);
    let op = if auto_commit && !joined {
        COMMIT
    } else {
        STORE_OFFSET
    };
    let mut pending = span.start_settle(meaning.settle(op));
    let result = store();
    match &result {
        Err(e) => pending.finish(Some(settle_error(e))),
        Ok(()) => {
            tracker.stored(topic, partition, next);
            if auto_commit && !joined {
                pending.end_process();
                tracker.register(topic, partition, next, pending);
            } else {
                pending.finish(None);
            }
        }
    }
    result
}

/// Settles `message` the way the consumer's configuration calls for: with `enable.auto.commit`
/// and without `enable.auto.offset.store`, by storing its offset (committed by librdkafka,
/// the result reported); otherwise by committing it with `mode`.
pub(crate) fn settle<C, K, M>(
    consumer: &K,
    consuming: &Consuming,
    message: &M,
    mode: CommitMode,
    meaning: Meaning,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
    M: ConsumedMessage + ?Sized,
{
    if consuming.info.auto_commit() && !consuming.info.auto_offset_store() {
        store_offset_from_message(consumer, consuming, message, meaning)
    } else {
        commit_message(consumer, message, mode, meaning)
    }
}

/// `Consumer::commit` of a list of offsets: every in-flight message below a listed offset of
/// its partition settles with outcome `ack` under its own `commit {topic}` span, with the
/// commit's result (a synchronous commit), or as unreported (an asynchronous one, whose answer
/// librdkafka does not report back).
pub(crate) fn commit<C, K>(
    consumer: &K,
    offsets: &TopicPartitionList,
    mode: CommitMode,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
{
    let tracker = consumer.context().commit_tracker();
    let covered = tracker.covered(offsets);
    let result = consumer.commit(offsets, mode);
    settle_covered(tracker, covered, COMMIT, &result, mode);
    result
}

/// Ends the spans of messages a bulk operation covered.
fn settle_covered(
    tracker: &CommitTracker,
    covered: context::Covered,
    op: Operation,
    result: &KafkaResult<()>,
    mode: CommitMode,
) {
    if covered.len() == 0 {
        return;
    }
    let error = result.as_ref().err().map(settle_error);
    match (&error, mode) {
        (None, CommitMode::Async) => tracker.settle(covered, op, None),
        _ => tracker.settle(covered, op, Some(error.as_ref())),
    }
}

/// `Consumer::commit_consumer_state`: what it commits is the consumer's position (with
/// `enable.auto.offset.store`) or the offsets stored through the traced consumer; the
/// in-flight messages below those settle as with [`commit`].
pub(crate) fn commit_consumer_state<C, K>(
    consumer: &K,
    consuming: &Consuming,
    mode: CommitMode,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
{
    let tracker = consumer.context().commit_tracker();
    let offsets = if consuming.info.auto_offset_store() {
        consumer.position().unwrap_or_default()
    } else {
        tracker.stored_offsets()
    };
    let covered = tracker.covered(&offsets);
    let result = consumer.commit_consumer_state(mode);
    settle_covered(tracker, covered, COMMIT, &result, mode);
    result
}

/// `Consumer::store_offsets`: every in-flight message below a stored offset of its partition
/// settles with outcome `ack` under a `store_offset {topic}` span ending at the store. With
/// `enable.auto.commit`, the commit of the stored offsets is then reported on one
/// `commit {topic}` span per partition's offset range (see [`CommitTracker`]).
pub(crate) fn store_offsets<C, K>(
    consumer: &K,
    consuming: &Consuming,
    offsets: &TopicPartitionList,
) -> KafkaResult<()>
where
    C: CommitReporting,
    K: Consumer<C>,
{
    let tracker = consumer.context().commit_tracker();
    let covered = tracker.covered(offsets);
    let result = consumer.store_offsets(offsets);
    if result.is_ok() {
        for elem in offsets.elements() {
            if let Offset::Offset(next) = elem.offset() {
                tracker.stored(elem.topic(), elem.partition(), next);
            }
        }
    }
    if consuming.info.auto_commit() && result.is_ok() {
        // The first covered message of each partition opens (or joins) the range whose
        // commit span reports the result; the others are recorded as stores.
        let mut opened: Vec<(String, i32)> = Vec::new();
        let mut rest = Vec::new();
        for (partition, offset, processing) in covered.into_messages() {
            let topic = offsets
                .elements()
                .into_iter()
                .find(|e| e.partition() == partition)
                .map(|e| e.topic().to_owned());
            match topic {
                Some(topic) if !opened.iter().any(|(t, p)| *t == topic && *p == partition) => {
                    opened.push((topic.clone(), partition));
                    let next = offsets
                        .find_partition(&topic, partition)
                        .and_then(|e| match e.offset() {
                            Offset::Offset(o) => Some(o),
                            _ => None,
                        })
                        .unwrap_or(offset.saturating_add(1));
                    if tracker.join(&topic, partition, next) {
                        rest.push((partition, offset, processing));
                    } else if let Some(span) = processing.take() {
                        let mut pending = span.start_settle(Meaning::ACK.settle(COMMIT));
                        pending.end_process();
                        tracker.register(&topic, partition, next, pending);
                    }
                }
                _ => rest.push((partition, offset, processing)),
            }
        }
        tracker.settle(
            context::Covered::from_messages(rest),
            STORE_OFFSET,
            Some(None),
        );
    } else {
        settle_covered(tracker, covered, STORE_OFFSET, &result, CommitMode::Sync);
    }
    result
}

/// Seeks the message's partition back to the message, so the consumer receives it again
/// (Kafka's requeue), under a CLIENT span `seek {topic}` with outcome `requeue` and `reason`.
pub(crate) fn seek_back<C, K>(
    consumer: &K,
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
    let pending = span.start_settle(
        Meaning {
            outcome: Outcome::Requeue,
            reason: Some(Cow::Owned(reason)),
        }
        .settle(SEEK),
    );
    let result = seek();
    pending.finish(result.as_ref().err().map(settle_error));
    result
}
