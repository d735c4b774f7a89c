//! The consumer context that reports commit results: offsets committed by librdkafka's
//! auto-commit arrive through `ConsumerContext::commit_callback`.

use crate::COMMIT;
use crate::error::settle_error;
use mqtrace::attributes as attr;
use mqtrace::{
    Outcome,
    instrument::{PendingSettle, Processing, Settle, SettleError},
};
use opentelemetry::KeyValue;
use rdkafka::ClientContext;
use rdkafka::consumer::{BaseConsumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::{BTreeMap, VecDeque};
use std::fmt;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

/// At most this many commit spans wait for a commit result per partition. A store that would
/// open one more joins the newest instead (its offset range grows): nothing is evicted, and a
/// result still reaches every range.
const MAX_RANGES_PER_PARTITION: usize = 64;

/// Stored offsets of one partition that wait for a commit result, under one settle span.
struct Range {
    /// The highest next offset to commit among the stores of the range.
    next_offset: i64,
    /// The `commit {topic}` span of the range's first store.
    settle: PendingSettle,
    /// How many stores the range holds.
    count: u64,
    /// Whether a commit was reported since the range opened: later stores open a new range,
    /// so that the range is covered by the next commit at the latest.
    sealed: bool,
}

struct PartitionState {
    topic: Arc<str>,
    partition: i32,
    /// Ranges waiting for a commit result, oldest first.
    ranges: VecDeque<Range>,
    /// Messages received and not yet dropped, by offset: what a bulk commit or store covers.
    inflight: BTreeMap<i64, Weak<Processing>>,
    /// The highest next offset stored through the traced consumer (what
    /// `commit_consumer_state` commits without `enable.auto.offset.store`).
    stored: Option<i64>,
}

impl PartitionState {
    fn is_empty(&self) -> bool {
        self.ranges.is_empty() && self.inflight.is_empty() && self.stored.is_none()
    }
}

#[derive(Default)]
pub(crate) struct Shared {
    partitions: Mutex<Vec<PartitionState>>,
    /// Whether a reported commit settles the in-flight messages it covers (a consumer that
    /// stores offsets itself: a store of a later offset commits the earlier messages too).
    settle_on_report: AtomicBool,
}

impl fmt::Debug for Shared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Shared").finish_non_exhaustive()
    }
}

impl Shared {
    fn lock(&self) -> MutexGuard<'_, Vec<PartitionState>> {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// The message at `offset` is gone (dropped, or detached and dropped): no bulk settle
    /// covers it any more.
    pub(crate) fn forget(&self, topic: &str, partition: i32, offset: i64) {
        let mut all = self.lock();
        if let Some(i) = all
            .iter()
            .position(|p| p.partition == partition && &*p.topic == topic)
        {
            all[i].inflight.remove(&offset);
            if all[i].is_empty() {
                all.swap_remove(i);
            }
        }
    }
}

fn state<'a>(
    all: &'a mut Vec<PartitionState>,
    topic: &str,
    partition: i32,
) -> &'a mut PartitionState {
    let index = match all
        .iter()
        .position(|p| p.partition == partition && &*p.topic == topic)
    {
        Some(i) => i,
        None => {
            all.push(PartitionState {
                topic: Arc::from(topic),
                partition,
                ranges: VecDeque::new(),
                inflight: BTreeMap::new(),
                stored: None,
            });
            all.len() - 1
        }
    };
    &mut all[index]
}

/// An in-flight message taken out of the bookkeeping: partition, offset, process span holder.
pub(crate) type Held = (i32, i64, Arc<Processing>);

/// A message's place in the in-flight bookkeeping, given up when it is dropped.
pub(crate) struct Tracked {
    shared: Arc<Shared>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
}

impl Drop for Tracked {
    fn drop(&mut self) {
        self.shared.forget(&self.topic, self.partition, self.offset);
    }
}

/// In-flight messages taken out of the bookkeeping to be settled (outside the lock).
pub(crate) struct Covered {
    messages: Vec<Held>,
}

impl Covered {
    /// How many messages are covered.
    pub(crate) fn len(&self) -> usize {
        self.messages.len()
    }

    /// The covered messages: partition, offset, process span holder.
    pub(crate) fn into_messages(self) -> Vec<Held> {
        self.messages
    }

    /// Covered messages from a list.
    pub(crate) fn from_messages(messages: Vec<Held>) -> Self {
        Self { messages }
    }
}

/// Tracks the consumer's in-flight messages (for bulk commits and stores) and the settle
/// spans waiting for librdkafka to report the commit of their offset.
///
/// When a consumer with `enable.auto.commit` stores offsets (`store_offset_from_message`,
/// `store_offsets`), a `commit {topic}` span stays open until an auto-commit covering them is
/// reported to [`ConsumerContext::commit_callback`], which hands the result to
/// [`CommitTracker::report`]; a failed commit is recorded on the span with its `error.type`.
/// The stores of one partition between two commit reports share one such span (an offset
/// range, `messaging.batch.message_count` giving its size when it holds more than one); the
/// other stores of the range are recorded as `store_offset {topic}` spans. So the number of
/// waiting spans is bounded (at most 64 ranges per partition) without losing a result. Commit
/// reports that cover no waiting span (most auto-commits) create no span. Spans still waiting
/// when the consumer is dropped end as unreported.
///
/// The tracker also keeps, per partition, the offsets of the messages received and not yet
/// dropped (weak references, removed when the message is dropped and when the partition is
/// revoked): a bulk commit or store settles those it covers.
///
/// ```
/// use rdkafka::topic_partition_list::TopicPartitionList;
/// let tracker = mqtrace_rdkafka::CommitTracker::new();
/// tracker.report(&Ok(()), &TopicPartitionList::new()); // nothing was waiting: nothing recorded
/// assert_eq!(tracker.waiting(), 0);
/// ```
#[derive(Default)]
pub struct CommitTracker {
    shared: Arc<Shared>,
}

impl fmt::Debug for CommitTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitTracker")
            .field("waiting", &self.waiting())
            .field("in_flight", &self.in_flight())
            .finish()
    }
}

impl CommitTracker {
    /// An empty tracker.
    ///
    /// ```
    /// let _ = mqtrace_rdkafka::CommitTracker::new();
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// How many commit spans wait for a commit result (one per offset range).
    ///
    /// ```
    /// assert_eq!(mqtrace_rdkafka::CommitTracker::new().waiting(), 0);
    /// ```
    pub fn waiting(&self) -> usize {
        self.shared.lock().iter().map(|p| p.ranges.len()).sum()
    }

    /// How many received messages are tracked for bulk settlement (received, not dropped,
    /// partition not revoked).
    ///
    /// ```
    /// assert_eq!(mqtrace_rdkafka::CommitTracker::new().in_flight(), 0);
    /// ```
    pub fn in_flight(&self) -> usize {
        self.shared.lock().iter().map(|p| p.inflight.len()).sum()
    }

    pub(crate) fn shared(&self) -> &Arc<Shared> {
        &self.shared
    }

    /// Configures the tracker for its consumer: whether reported commits settle the
    /// in-flight messages they cover.
    pub(crate) fn configure(&self, settle_on_report: bool) {
        self.shared
            .settle_on_report
            .store(settle_on_report, Ordering::Relaxed);
    }

    /// Tracks a received message for bulk settlement, until the returned guard is dropped.
    pub(crate) fn track(
        shared: &Arc<Shared>,
        topic: &str,
        partition: i32,
        offset: i64,
        processing: &Arc<Processing>,
    ) -> Tracked {
        let mut all = shared.lock();
        let p = state(&mut all, topic, partition);
        p.inflight.insert(offset, Arc::downgrade(processing));
        Tracked {
            shared: shared.clone(),
            topic: p.topic.clone(),
            partition,
            offset,
        }
    }

    /// Takes out the in-flight messages below each `Offset::Offset` of `offsets`.
    pub(crate) fn covered(&self, offsets: &TopicPartitionList) -> Covered {
        let mut messages = Vec::new();
        let mut all = self.shared.lock();
        for elem in offsets.elements() {
            let Offset::Offset(next) = elem.offset() else {
                continue;
            };
            let Some(p) = all
                .iter_mut()
                .find(|p| p.partition == elem.partition() && &*p.topic == elem.topic())
            else {
                continue;
            };
            take_below(p, next, &mut messages);
        }
        all.retain(|p| !p.is_empty());
        Covered { messages }
    }

    /// Notes offsets stored through the traced consumer (the highest per partition).
    pub(crate) fn stored(&self, topic: &str, partition: i32, next_offset: i64) {
        let mut all = self.shared.lock();
        let p = state(&mut all, topic, partition);
        p.stored = Some(p.stored.map_or(next_offset, |s| s.max(next_offset)));
    }

    /// The offsets stored through the traced consumer, per partition (what a commit of the
    /// consumer's state commits when it stores offsets itself).
    pub(crate) fn stored_offsets(&self) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        for p in self.shared.lock().iter() {
            if let Some(next) = p.stored {
                let _ =
                    tpl.add_partition_offset(p.topic.as_ref(), p.partition, Offset::Offset(next));
            }
        }
        tpl
    }

    /// Settles `covered` with outcome `ack` under `op` spans: with `result` when given
    /// (`Some(None)` for success), as unreported when `None` (an asynchronous commit).
    pub(crate) fn settle(
        &self,
        covered: Covered,
        op: mqtrace::Operation,
        result: Option<Option<&SettleError>>,
    ) {
        for (_, _, processing) in covered.messages {
            settle_one(&processing, op, result);
        }
    }

    /// Joins a store of `next_offset` to the open range of its partition, if there is one
    /// (or if the partition has as many ranges as it may): the store's result will be
    /// reported on that range's commit span. Returns `false` when a new range must be opened
    /// with [`CommitTracker::register`].
    pub(crate) fn join(&self, topic: &str, partition: i32, next_offset: i64) -> bool {
        let mut all = self.shared.lock();
        let p = state(&mut all, topic, partition);
        let full = p.ranges.len() >= MAX_RANGES_PER_PARTITION;
        match p.ranges.back_mut() {
            Some(r) if !r.sealed || full => {
                r.next_offset = r.next_offset.max(next_offset);
                r.count += 1;
                true
            }
            _ => false,
        }
    }

    /// Opens a range: `settle` waits for the commit of `next_offset` (the offset after the
    /// message's) on `topic`/`partition`.
    pub(crate) fn register(
        &self,
        topic: &str,
        partition: i32,
        next_offset: i64,
        settle: PendingSettle,
    ) {
        let mut all = self.shared.lock();
        state(&mut all, topic, partition).ranges.push_back(Range {
            next_offset,
            settle,
            count: 1,
            sealed: false,
        });
    }

    /// Drops the bookkeeping of revoked partitions: their in-flight messages are no longer
    /// settled by later commits (each still ends by its own settle or drop). Ranges waiting
    /// for a commit result stay (librdkafka commits them on revoke).
    ///
    /// ```
    /// use rdkafka::topic_partition_list::TopicPartitionList;
    /// let tracker = mqtrace_rdkafka::CommitTracker::new();
    /// let mut revoked = TopicPartitionList::new();
    /// revoked.add_partition("orders", 0);
    /// tracker.revoked(&revoked);
    /// assert_eq!(tracker.in_flight(), 0);
    /// ```
    pub fn revoked(&self, partitions: &TopicPartitionList) {
        let mut dropped = Vec::new();
        {
            let mut all = self.shared.lock();
            for elem in partitions.elements() {
                if let Some(p) = all
                    .iter_mut()
                    .find(|p| p.partition == elem.partition() && &*p.topic == elem.topic())
                {
                    dropped.push(std::mem::take(&mut p.inflight));
                    p.stored = None;
                }
            }
            all.retain(|p| !p.is_empty());
        }
        drop(dropped);
    }

    /// Hands a commit result (as given to [`ConsumerContext::commit_callback`]) to the settle
    /// spans it covers: each waiting range whose offsets are at or below the committed offset
    /// of its partition ends, with the commit's error (overall or for that partition) if any.
    /// For a consumer that stores offsets itself, in-flight messages below the committed
    /// offset settle too (outcome `ack`, or the error). Every range still waiting is sealed:
    /// later stores open a new one.
    ///
    /// See the example on [`CommitTracker`].
    pub fn report(&self, result: &KafkaResult<()>, offsets: &TopicPartitionList) {
        let settle_inflight = self.shared.settle_on_report.load(Ordering::Relaxed);
        let mut done: Vec<(Range, Option<SettleError>)> = Vec::new();
        let mut covered: Vec<(Vec<Held>, Option<SettleError>)> = Vec::new();
        {
            let mut all = self.shared.lock();
            if all.is_empty() {
                return;
            }
            for elem in offsets.elements() {
                let Offset::Offset(committed) = elem.offset() else {
                    continue;
                };
                let Some(p) = all
                    .iter_mut()
                    .find(|p| p.partition == elem.partition() && &*p.topic == elem.topic())
                else {
                    continue;
                };
                let error = match result {
                    Err(e) => Some(settle_error(e)),
                    Ok(()) => elem.error().err().map(|e| settle_error(&e)),
                };
                while p.ranges.front().is_some_and(|r| r.next_offset <= committed) {
                    if let Some(r) = p.ranges.pop_front() {
                        done.push((r, error.clone()));
                    }
                }
                if settle_inflight {
                    let mut messages = Vec::new();
                    take_below(p, committed, &mut messages);
                    if !messages.is_empty() {
                        covered.push((messages, error));
                    }
                }
            }
            for p in all.iter_mut() {
                for r in &mut p.ranges {
                    r.sealed = true;
                }
            }
            all.retain(|p| !p.is_empty());
        }
        // Spans end outside the lock.
        for (mut range, error) in done {
            if range.count > 1 {
                let count = i64::try_from(range.count).unwrap_or(i64::MAX);
                range
                    .settle
                    .record(|| [KeyValue::new(attr::MESSAGING_BATCH_MESSAGE_COUNT, count)]);
            }
            range.settle.finish(error);
        }
        for (messages, error) in covered {
            for (_, _, processing) in messages {
                settle_one(&processing, COMMIT, Some(error.as_ref()));
            }
        }
    }
}

/// Moves the in-flight messages of `p` below `next` (still alive) into `out`.
fn take_below(p: &mut PartitionState, next: i64, out: &mut Vec<Held>) {
    let rest = p.inflight.split_off(&next);
    let below = std::mem::replace(&mut p.inflight, rest);
    out.extend(
        below
            .into_iter()
            .filter_map(|(offset, w)| w.upgrade().map(|m| (p.partition, offset, m))),
    );
}

/// Settles one message covered by a bulk operation, if it is not settled yet (its settle
/// span carries the message's partition, offset and group, from its process span).
fn settle_one(
    processing: &Processing,
    op: mqtrace::Operation,
    result: Option<Option<&SettleError>>,
) {
    let Some(span) = processing.take() else {
        return;
    };
    let pending = span.start_settle(Settle::new(op, Outcome::Ack));
    match result {
        Some(error) => pending.finish(error.cloned()),
        // Nothing will report the answer: ends as unreported.
        None => drop(pending),
    }
}

/// A consumer context that reports commit results to a [`CommitTracker`]; the traced
/// consumers need one.
///
/// [`TracedConsumerContext`] is the default (librdkafka's default behaviour otherwise). To use
/// a context of your own, give it a `CommitTracker`, return it here, hand commit results to it
/// from your `commit_callback`, and revoked partitions from your `pre_rebalance`:
///
/// ```
/// use mqtrace_rdkafka::{CommitReporting, CommitTracker};
/// use rdkafka::consumer::ConsumerContext;
/// use rdkafka::error::KafkaResult;
/// use rdkafka::topic_partition_list::TopicPartitionList;
///
/// #[derive(Default)]
/// struct MyContext {
///     commits: CommitTracker,
/// }
/// impl rdkafka::ClientContext for MyContext {}
/// impl ConsumerContext for MyContext {
///     fn pre_rebalance(&self, _: &rdkafka::consumer::BaseConsumer<Self>, r: &rdkafka::consumer::Rebalance<'_>) {
///         if let rdkafka::consumer::Rebalance::Revoke(partitions) = r {
///             self.commits.revoked(partitions);
///         }
///     }
///     fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
///         self.commits.report(&result, offsets);
///         // ... your own handling
///     }
/// }
/// impl CommitReporting for MyContext {
///     fn commit_tracker(&self) -> &CommitTracker {
///         &self.commits
///     }
/// }
/// ```
pub trait CommitReporting: ConsumerContext {
    /// The tracker this context's `commit_callback` reports to.
    fn commit_tracker(&self) -> &CommitTracker;
}

/// The default context of the traced consumers: librdkafka's defaults, plus commit results
/// reported to its [`CommitTracker`].
///
/// ```
/// use mqtrace_rdkafka::CommitReporting;
/// let context = mqtrace_rdkafka::TracedConsumerContext::default();
/// assert_eq!(context.commit_tracker().waiting(), 0);
/// ```
#[derive(Debug, Default)]
pub struct TracedConsumerContext {
    commits: CommitTracker,
}

impl ClientContext for TracedConsumerContext {}

impl ConsumerContext for TracedConsumerContext {
    fn pre_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Revoke(partitions) = rebalance {
            self.commits.revoked(partitions);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.commits.report(&result, offsets);
    }
}

impl CommitReporting for TracedConsumerContext {
    fn commit_tracker(&self) -> &CommitTracker {
        &self.commits
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use mqtrace::testing::TestTelemetry;
    use mqtrace::{
        MessagingSystem, Operation, OperationType,
        instrument::{Incoming, Instrumentation},
    };
    use std::collections::HashMap;

    fn pending(inst: &Instrumentation) -> PendingSettle {
        let h: HashMap<String, String> = HashMap::new();
        let span = inst.start_process(
            Incoming::new(Operation::new("process", OperationType::Process), "t", "t"),
            inst.extract(&h),
        );
        span.start_settle(Settle::new(COMMIT, Outcome::Ack))
    }

    fn committed(next: i64) -> TopicPartitionList {
        let mut tpl = TopicPartitionList::new();
        tpl.add_partition_offset("t", 0, Offset::Offset(next))
            .expect("offset");
        tpl
    }

    #[test]
    fn stores_join_the_open_range_and_a_report_seals_it() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let tracker = CommitTracker::new();
        assert!(!tracker.join("t", 0, 1), "no range yet");
        tracker.register("t", 0, 1, pending(&inst));
        for next in 2..=10_000 {
            assert!(tracker.join("t", 0, next));
        }
        assert_eq!(tracker.waiting(), 1);
        // A report of an earlier commit seals the range without ending it.
        tracker.report(&Ok(()), &committed(0));
        assert_eq!(tracker.waiting(), 1);
        assert!(!tracker.join("t", 0, 10_001), "sealed: a new range opens");
        tracker.register("t", 0, 10_001, pending(&inst));
        tracker.report(&Ok(()), &committed(10_000));
        assert_eq!(
            tracker.waiting(),
            1,
            "the first range ended, the second waits"
        );
        tracker.report(&Ok(()), &committed(10_001));
        assert_eq!(tracker.waiting(), 0);
        let spans = t.spans();
        let commits = spans.named("commit t");
        assert_eq!(commits.len(), 2);
        let counts: Vec<Option<i64>> = commits
            .iter()
            .map(|s| {
                s.attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == attr::MESSAGING_BATCH_MESSAGE_COUNT)
                    .and_then(|kv| match kv.value {
                        opentelemetry::Value::I64(v) => Some(v),
                        _ => None,
                    })
            })
            .collect();
        assert!(counts.contains(&Some(10_000)) && counts.contains(&None));
        assert!(commits.iter().all(|s| {
            s.events
                .iter()
                .all(|e| e.name != "mqtrace.settle.unreported")
        }));
    }

    #[test]
    fn ranges_are_bounded_by_joining_the_newest() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let tracker = CommitTracker::new();
        for next in 1..=i64::try_from(MAX_RANGES_PER_PARTITION).expect("cap") {
            assert!(!tracker.join("t", 0, next));
            tracker.register("t", 0, next, pending(&inst));
            tracker.report(&Ok(()), &TopicPartitionList::new()); // seals, ends nothing
        }
        assert!(tracker.join("t", 0, 1_000), "full: joins the newest range");
        assert_eq!(tracker.waiting(), MAX_RANGES_PER_PARTITION);
        tracker.report(&Ok(()), &committed(1_000));
        assert_eq!(tracker.waiting(), 0);
    }
}
