//! The consumer context that reports commit results: offsets committed by librdkafka's
//! auto-commit arrive through `ConsumerContext::commit_callback`.

use crate::error::settle_error;
use mqtrace::instrument::PendingSettle;
use rdkafka::ClientContext;
use rdkafka::consumer::ConsumerContext;
use rdkafka::error::KafkaResult;
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use std::collections::VecDeque;
use std::fmt;
use std::sync::{Mutex, PoisonError};

/// At most this many settle spans wait for a commit result per partition; older ones end
/// as unreported (the consumer stopped polling, or the commits stopped being reported).
const MAX_PENDING_PER_PARTITION: usize = 4096;

struct PartitionCommits {
    topic: String,
    partition: i32,
    /// `(next offset to commit, settle span)`, in the order offsets were stored.
    waiting: VecDeque<(i64, PendingSettle)>,
}

/// Settle spans waiting for librdkafka to report the commit of their offset.
///
/// When a consumer with `enable.auto.commit` stores a message's offset
/// (`store_offset_from_message`), its `commit {topic}` span stays open until an auto-commit
/// covering that offset is reported to [`ConsumerContext::commit_callback`], which hands the
/// result to [`CommitTracker::report`]; a failed commit is recorded on the span with its
/// `error.type`. Commit reports that cover no waiting span (most auto-commits) create no
/// span. Spans still waiting when the consumer is dropped end as unreported.
///
/// ```
/// use rdkafka::topic_partition_list::TopicPartitionList;
/// let tracker = mqtrace_rdkafka::CommitTracker::new();
/// tracker.report(&Ok(()), &TopicPartitionList::new()); // nothing was waiting: nothing recorded
/// assert_eq!(tracker.waiting(), 0);
/// ```
#[derive(Default)]
pub struct CommitTracker {
    partitions: Mutex<Vec<PartitionCommits>>,
}

impl fmt::Debug for CommitTracker {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CommitTracker")
            .field("waiting", &self.waiting())
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

    /// How many settle spans wait for a commit result.
    ///
    /// ```
    /// assert_eq!(mqtrace_rdkafka::CommitTracker::new().waiting(), 0);
    /// ```
    pub fn waiting(&self) -> usize {
        self.partitions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .iter()
            .map(|p| p.waiting.len())
            .sum()
    }

    /// Waits for the commit of `next_offset` (the offset after the message's) on
    /// `topic`/`partition`.
    pub(crate) fn register(
        &self,
        topic: &str,
        partition: i32,
        next_offset: i64,
        settle: PendingSettle,
    ) {
        let evicted = {
            let mut all = self
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            let index = match all
                .iter()
                .position(|p| p.partition == partition && p.topic == topic)
            {
                Some(i) => i,
                None => {
                    all.push(PartitionCommits {
                        topic: topic.to_owned(),
                        partition,
                        waiting: VecDeque::new(),
                    });
                    all.len() - 1
                }
            };
            let waiting = &mut all[index].waiting;
            waiting.push_back((next_offset, settle));
            (waiting.len() > MAX_PENDING_PER_PARTITION)
                .then(|| waiting.pop_front())
                .flatten()
        };
        // Ends outside the lock (dropping a pending settle ends its span as unreported).
        drop(evicted);
    }

    /// Hands a commit result (as given to [`ConsumerContext::commit_callback`]) to the settle
    /// spans it covers: each waiting span whose offset is at or below the committed offset of
    /// its partition ends, with the commit's error (overall or for that partition) if any.
    ///
    /// See the example on [`CommitTracker`].
    pub fn report(&self, result: &KafkaResult<()>, offsets: &TopicPartitionList) {
        let mut done: Vec<(PendingSettle, Option<mqtrace::instrument::SettleError>)> = Vec::new();
        {
            let mut all = self
                .partitions
                .lock()
                .unwrap_or_else(PoisonError::into_inner);
            if all.iter().all(|p| p.waiting.is_empty()) {
                return;
            }
            for elem in offsets.elements() {
                let Offset::Offset(committed) = elem.offset() else {
                    continue;
                };
                let Some(p) = all
                    .iter_mut()
                    .find(|p| p.partition == elem.partition() && p.topic == elem.topic())
                else {
                    continue;
                };
                let error = match result {
                    Err(e) => Some(settle_error(e)),
                    Ok(()) => elem.error().err().map(|e| settle_error(&e)),
                };
                while p.waiting.front().is_some_and(|(o, _)| *o <= committed) {
                    if let Some((_, settle)) = p.waiting.pop_front() {
                        done.push((settle, error.clone()));
                    }
                }
            }
            all.retain(|p| !p.waiting.is_empty());
        }
        for (settle, error) in done {
            settle.finish(error);
        }
    }
}

/// A consumer context that reports commit results to a [`CommitTracker`]; the traced
/// consumers need one.
///
/// [`TracedConsumerContext`] is the default (librdkafka's default behaviour otherwise). To use
/// a context of your own, give it a `CommitTracker`, return it here, and hand commit results
/// to it from your `commit_callback`:
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
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.commits.report(&result, offsets);
    }
}

impl CommitReporting for TracedConsumerContext {
    fn commit_tracker(&self) -> &CommitTracker {
        &self.commits
    }
}
