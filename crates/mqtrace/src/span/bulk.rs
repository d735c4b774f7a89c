//! Settling several messages with one broker operation: a RabbitMQ `ack`/`nack` with
//! `multiple`, a Kafka offset commit that covers every offset below it.
//!
//! A broker crate keeps one [`OpenSpans`] per settle scope (a RabbitMQ channel, whose delivery
//! tags are its positions; a Kafka partition, whose offsets are), registers each delivered
//! message's [`Processing`] at its position ([`OpenSpans::register`]) and holds the returned
//! [`Registration`] in its message type. A cumulative settle takes every open process span up
//! to a position ([`OpenSpans::take_up_to`], [`Registration::take_up_to_here`]) and settles
//! them with one operation ([`Covered::settle`], [`Covered::settle_blocking`]).
//!
//! What is recorded: one CLIENT settle span for the one broker operation, a child of the
//! process span at the highest covered position (the message the application settled), with
//! `messaging.batch.message_count` and a link to every other covered process span
//! (`mqtrace.link.type = settled`); every covered process span ends with the settle's outcome
//! (and its error, if the operation failed) and the others link back to the settle span
//! (`mqtrace.link.type = settle`), so each message's own trace shows how it was settled.
//!
//! The bookkeeping holds only messages in flight: an entry is removed when its message is
//! covered by a cumulative settle, when [`Registration::release`] is called after an
//! individual settle, and when the [`Registration`] is dropped with its message. Entries hold
//! the process span weakly, so a message dropped unsettled still ends its span (`unsettled`)
//! at once.

use super::{ProcessSpan, Processing, Settle, SettleError, settle::end_settle_span};
use crate::attributes as attr;
use opentelemetry::KeyValue;
use opentelemetry::trace::{Span, TraceContextExt};
use std::collections::VecDeque;
use std::fmt;
use std::future::Future;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError, Weak};

type Map = Mutex<Entries>;

fn lock(map: &Map) -> MutexGuard<'_, Entries> {
    map.lock().unwrap_or_else(PoisonError::into_inner)
}

/// The registered messages in position order. Positions nearly always arrive in increasing
/// order (delivery tags, offsets), so a registration is a push at the back and a cumulative
/// settle pops from the front; a message settled on its own leaves a hole (an empty `Weak`)
/// that is popped when it reaches the front, or swept once holes outnumber live entries.
#[derive(Default)]
struct Entries {
    queue: VecDeque<(u64, Weak<Processing>)>,
    holes: usize,
}

impl Entries {
    fn find(&self, position: u64) -> Result<usize, usize> {
        self.queue.binary_search_by_key(&position, |(p, _)| *p)
    }

    fn insert(&mut self, position: u64, weak: Weak<Processing>) {
        if self.queue.back().is_none_or(|(p, _)| *p < position) {
            self.queue.push_back((position, weak));
            return;
        }
        match self.find(position) {
            Ok(i) => {
                if is_hole(&self.queue[i].1) {
                    self.holes -= 1;
                }
                self.queue[i].1 = weak;
            }
            Err(i) => self.queue.insert(i, (position, weak)),
        }
    }

    /// Removes the entry at `position`, if `only` is none or the entry is `only`.
    fn remove(
        &mut self,
        position: u64,
        only: Option<&Weak<Processing>>,
    ) -> Option<Weak<Processing>> {
        let i = self.find(position).ok()?;
        let entry = &mut self.queue[i].1;
        if is_hole(entry) || only.is_some_and(|w| !w.ptr_eq(entry)) {
            return None;
        }
        let taken = std::mem::take(entry);
        self.holes += 1;
        self.trim();
        Some(taken)
    }

    /// Removes every entry up to and including `position`.
    fn take_up_to(&mut self, position: u64) -> Vec<Weak<Processing>> {
        let mut taken = Vec::new();
        while self.queue.front().is_some_and(|(p, _)| *p <= position) {
            if let Some((_, w)) = self.queue.pop_front() {
                if is_hole(&w) {
                    self.holes -= 1;
                } else {
                    taken.push(w);
                }
            }
        }
        taken
    }

    fn trim(&mut self) {
        while self.queue.front().is_some_and(|(_, w)| is_hole(w)) {
            self.queue.pop_front();
            self.holes -= 1;
        }
        if self.holes > 32 && self.holes > self.queue.len() / 2 {
            self.queue.retain(|(_, w)| !is_hole(w));
            self.holes = 0;
        }
    }

    fn len(&self) -> usize {
        self.queue.len() - self.holes
    }
}

/// A removed entry: `Weak::new()`, which points nowhere.
fn is_hole(w: &Weak<Processing>) -> bool {
    w.ptr_eq(&Weak::new())
}

/// The open process spans of one settle scope (a channel, a partition), by position (a
/// delivery tag, an offset). Cloning shares the same registry.
///
/// ```
/// use std::{collections::HashMap, sync::Arc};
/// use mqtrace::{*, instrument::*};
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
/// let h: HashMap<String, String> = HashMap::new();
/// let open = OpenSpans::new();
/// let deliveries: Vec<_> = (1..=3_u64)
///     .map(|tag| {
///         let p = Arc::new(Processing::new(inst.start_process(
///             Incoming::new(Operation::new("process", OperationType::Process), "q", "q"),
///             inst.extract(&h),
///         )));
///         let registration = open.register(tag, &p);
///         (p, registration)
///     })
///     .collect();
/// // one broker operation acknowledges tags 1 and 2
/// let covered = open.take_up_to(2);
/// assert_eq!(covered.len(), 2);
/// let r: Result<(), std::io::Error> = covered
///     .settle(Settle::new(Operation::new("ack", OperationType::Settle), Outcome::Ack), async { Ok(()) }, |_| None)
///     .await;
/// assert!(r.is_ok());
/// assert!(deliveries[0].0.is_settled() && deliveries[1].0.is_settled() && !deliveries[2].0.is_settled());
/// assert_eq!(open.len(), 1);
/// # }
/// ```
#[derive(Clone, Default)]
pub struct OpenSpans {
    map: Arc<Map>,
}

impl fmt::Debug for OpenSpans {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpenSpans")
            .field("len", &self.len())
            .finish()
    }
}

impl OpenSpans {
    /// An empty registry.
    ///
    /// ```
    /// assert!(mqtrace::instrument::OpenSpans::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Registers `processing` at `position`, until the returned [`Registration`] is released
    /// or dropped, or a cumulative settle covers it. A later registration at the same
    /// position replaces it.
    ///
    /// See the example on [`OpenSpans`].
    pub fn register(&self, position: u64, processing: &Arc<Processing>) -> Registration {
        let weak = Arc::downgrade(processing);
        lock(&self.map).insert(position, weak.clone());
        Registration {
            map: Arc::downgrade(&self.map),
            position,
            processing: weak,
            released: AtomicBool::new(false),
        }
    }

    /// How many messages are registered (in flight).
    ///
    /// See the example on [`OpenSpans`].
    pub fn len(&self) -> usize {
        lock(&self.map).len()
    }

    /// Whether no message is registered.
    ///
    /// ```
    /// assert!(mqtrace::instrument::OpenSpans::new().is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        lock(&self.map).len() == 0
    }

    /// Removes every message registered at a position up to and including `position`, and
    /// takes the process spans of those not settled yet, in position order.
    ///
    /// See the example on [`OpenSpans`].
    pub fn take_up_to(&self, position: u64) -> Covered {
        let taken = lock(&self.map).take_up_to(position);
        Covered::from_entries(taken)
    }

    /// Removes the message registered at `position` and takes its process span, if it is not
    /// settled yet (an individual settle by position, e.g. a channel-level `basic_ack`).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let p = Arc::new(Processing::new(inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h))));
    /// let open = OpenSpans::new();
    /// let _registration = open.register(7, &p);
    /// assert_eq!(open.take_at(7).len(), 1);
    /// assert!(open.is_empty() && p.is_settled());
    /// ```
    pub fn take_at(&self, position: u64) -> Covered {
        let taken = lock(&self.map).remove(position, None);
        Covered::from_entries(taken)
    }
}

/// A message's place in an [`OpenSpans`]; dropping it removes the entry.
///
/// ```
/// # use std::sync::Arc;
/// # use mqtrace::{*, instrument::*};
/// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
/// # let h: std::collections::HashMap<String, String> = Default::default();
/// # let p = Arc::new(Processing::new(inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h))));
/// let open = OpenSpans::new();
/// let registration = open.register(1, &p);
/// assert_eq!(registration.position(), 1);
/// drop(registration);
/// assert!(open.is_empty());
/// ```
pub struct Registration {
    map: Weak<Map>,
    position: u64,
    processing: Weak<Processing>,
    released: AtomicBool,
}

impl fmt::Debug for Registration {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Registration")
            .field("position", &self.position)
            .finish_non_exhaustive()
    }
}

impl Registration {
    /// The position registered.
    ///
    /// See the example on [`Registration`].
    pub fn position(&self) -> u64 {
        self.position
    }

    /// Removes the entry now (after an individual settle), if it is still this message's.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let p = Arc::new(Processing::new(inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h))));
    /// let open = OpenSpans::new();
    /// let registration = open.register(1, &p);
    /// p.finish(Outcome::Ack);
    /// registration.release();
    /// assert!(open.is_empty());
    /// ```
    pub fn release(&self) {
        if self.released.swap(true, Ordering::Relaxed) {
            return;
        }
        if let Some(map) = self.map.upgrade() {
            lock(&map).remove(self.position, Some(&self.processing));
        }
    }

    /// Takes every open process span of the registry up to and including this message's
    /// position (see [`OpenSpans::take_up_to`]): what a cumulative settle by this message
    /// covers.
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// # let p = Arc::new(Processing::new(inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "q", "q"), inst.extract(&h))));
    /// let open = OpenSpans::new();
    /// let registration = open.register(1, &p);
    /// assert_eq!(registration.take_up_to_here().len(), 1);
    /// ```
    pub fn take_up_to_here(&self) -> Covered {
        match self.map.upgrade() {
            Some(map) => OpenSpans { map }.take_up_to(self.position),
            None => Covered::default(),
        }
    }
}

impl Drop for Registration {
    fn drop(&mut self) {
        self.release();
    }
}

/// The open process spans taken by a cumulative settle, in position order; settle them with
/// [`Covered::settle`] or [`Covered::settle_blocking`]. Dropped unsettled, each ends as its
/// [`ProcessSpan`] does when dropped.
///
/// See the example on [`OpenSpans`].
#[derive(Debug, Default)]
#[must_use = "covered process spans end as unsettled unless settled"]
pub struct Covered {
    spans: Vec<ProcessSpan>,
}

/// A started bulk settle: its span, the covered process spans, what to end them with.
struct Started {
    settle: Settle,
    span: opentelemetry::global::BoxedSpan,
    measure: Option<crate::metrics::Measure>,
    spans: Vec<ProcessSpan>,
}

impl Covered {
    fn from_entries(entries: impl IntoIterator<Item = Weak<Processing>>) -> Self {
        Self {
            spans: entries
                .into_iter()
                .filter_map(|w| w.upgrade().and_then(|p| p.take()))
                .collect(),
        }
    }

    /// How many open process spans are covered.
    ///
    /// See the example on [`OpenSpans`].
    pub fn len(&self) -> usize {
        self.spans.len()
    }

    /// Whether none is (every covered message was settled already).
    ///
    /// ```
    /// assert!(mqtrace::instrument::OpenSpans::new().take_up_to(10).is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.spans.is_empty()
    }

    /// Performs the one broker operation `fut` under one settle span and ends every covered
    /// process span with the settle's outcome (and the error `check` finds in the result).
    /// With one covered span this is [`ProcessSpan::settle`]; with none, only `fut` runs.
    ///
    /// See the example on [`OpenSpans`].
    pub async fn settle<R, F>(
        mut self,
        settle: Settle,
        fut: F,
        check: impl FnOnce(&R) -> Option<SettleError>,
    ) -> R
    where
        F: Future<Output = R>,
    {
        if self.spans.len() <= 1 {
            return match self.spans.pop() {
                Some(span) => span.settle(settle, fut, check).await,
                None => fut.await,
            };
        }
        let started = self.start(settle);
        let result = fut.await;
        let error = check(&result);
        started.finish(error);
        result
    }

    /// As [`Covered::settle`], for a blocking operation `f` (e.g. a synchronous offset commit).
    ///
    /// ```
    /// # use std::sync::Arc;
    /// # use mqtrace::{*, instrument::*};
    /// # let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// # let h: std::collections::HashMap<String, String> = Default::default();
    /// let open = OpenSpans::new();
    /// let messages: Vec<_> = (10..13_u64).map(|offset| {
    ///     let p = Arc::new(Processing::new(inst.start_process(Incoming::new(Operation::new("process", OperationType::Process), "t", "t"), inst.extract(&h))));
    ///     let r = open.register(offset, &p);
    ///     (p, r)
    /// }).collect();
    /// // committing offset 13 covers offsets 10..=12
    /// let committed: Result<(), String> = open.take_up_to(12).settle_blocking(
    ///     Settle::new(Operation::new("commit", OperationType::Settle), Outcome::Ack),
    ///     || Ok(()),
    ///     |r| r.as_ref().err().map(|e| SettleError::new("commit_failed", e)),
    /// );
    /// assert!(committed.is_ok() && messages.iter().all(|(p, _)| p.is_settled()));
    /// ```
    pub fn settle_blocking<R>(
        self,
        settle: Settle,
        f: impl FnOnce() -> R,
        check: impl FnOnce(&R) -> Option<SettleError>,
    ) -> R {
        if self.spans.is_empty() {
            return f();
        }
        let started = self.start(settle);
        let result = f();
        let error = check(&result);
        started.finish(error);
        result
    }

    /// Starts the settle span on the last covered process span, with the batch size and the
    /// links both ways.
    fn start(mut self, settle: Settle) -> Started {
        let count = i64::try_from(self.spans.len()).unwrap_or(i64::MAX);
        // `start` is only called with at least one span.
        let settling = self.spans.len() - 1;
        let parent = &self.spans[settling];
        let measure = parent.settle_measure(settle.operation);
        let mut span = parent.start_settle_span(
            settle.operation,
            &[KeyValue::new(attr::MESSAGING_BATCH_MESSAGE_COUNT, count)],
        );
        if span.is_recording() {
            let settle_sc = span.span_context().clone();
            for other in &self.spans[..settling] {
                span.add_link(
                    other.span_context().clone(),
                    vec![KeyValue::new(attr::LINK_TYPE, "settled")],
                );
                let process = other.cx.span();
                if process.is_recording() {
                    process.add_link(
                        settle_sc.clone(),
                        vec![KeyValue::new(attr::LINK_TYPE, "settle")],
                    );
                }
            }
        }
        Started {
            settle,
            span,
            measure,
            spans: std::mem::take(&mut self.spans),
        }
    }
}

impl Started {
    fn finish(self, error: Option<SettleError>) {
        let Some(first) = self.spans.first() else {
            return;
        };
        let inst = first.inst.clone();
        end_settle_span(
            &inst,
            Some(self.span),
            self.measure,
            self.settle.outcome,
            error.as_ref(),
        );
        for mut process in self.spans.into_iter().rev() {
            process.end(
                self.settle.outcome,
                self.settle.reason.clone(),
                error.clone(),
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{instrument::*, *};
    use std::collections::HashMap;

    const ACK: Operation = Operation::new("ack", OperationType::Settle);

    fn open_at(
        inst: &Instrumentation,
        open: &OpenSpans,
        positions: impl IntoIterator<Item = u64>,
    ) -> Vec<(Arc<Processing>, Registration)> {
        let h: HashMap<String, String> = HashMap::new();
        positions
            .into_iter()
            .map(|pos| {
                let p = Arc::new(Processing::new(inst.start_process(
                    Incoming::new(Operation::new("process", OperationType::Process), "q", "q"),
                    inst.extract(&h),
                )));
                let r = open.register(pos, &p);
                (p, r)
            })
            .collect()
    }

    #[test]
    fn cumulative_settle_ends_every_covered_span_with_one_settle_span() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "test").build(t.config());
        let open = OpenSpans::new();
        let held = open_at(&inst, &open, 1..=4);
        let r: Result<(), ()> =
            open.take_up_to(3)
                .settle_blocking(Settle::new(ACK, Outcome::Ack), || Ok(()), |_| None);
        assert!(r.is_ok());
        assert_eq!(open.len(), 1);
        assert!(!held[3].0.is_settled());
        let spans = t.spans();
        let ack = spans.one("ack q");
        assert_eq!(spans.named("process q").len(), 3);
        ack.assert_parent_context(held[2].0.span_context());
        assert_eq!(ack.attr_i64("messaging.batch.message_count"), Some(3));
        assert_eq!(ack.links.len(), 2);
        assert!(ack.links_to(held[0].0.span_context()) && ack.links_to(held[1].0.span_context()));
        for s in spans.named("process q") {
            s.assert_attr("mqtrace.outcome", "ack");
            assert!(!s.is_error());
        }
        drop(held);
        assert_eq!(
            t.spans()
                .named("process q")
                .iter()
                .filter(|s| s.is_error())
                .count(),
            1,
            "only the uncovered delivery ends unsettled"
        );
    }

    #[test]
    fn failed_bulk_settle_marks_every_covered_span() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "test").build(t.config());
        let open = OpenSpans::new();
        let _held = open_at(&inst, &open, [5, 9]);
        let _: Result<(), &str> = open.take_up_to(u64::MAX).settle_blocking(
            Settle::new(ACK, Outcome::Ack),
            || Err("closed"),
            |r| r.err().map(|e| SettleError::new("channel_closed", e)),
        );
        let spans = t.spans();
        assert!(spans.one("ack q").is_error());
        assert!(spans.named("process q").iter().all(|s| s.is_error()));
        assert!(open.is_empty());
    }

    #[test]
    fn positions_out_of_order_and_holes_behind_a_held_message_stay_bounded() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let open = OpenSpans::new();
        let out_of_order = open_at(&inst, &open, [5, 3, 4]);
        assert_eq!(open.take_up_to(4).len(), 2);
        assert!(!out_of_order[0].0.is_settled());
        drop(out_of_order);
        assert!(open.is_empty());
        // The first message is held while 1000 others are settled one by one.
        let mut held = open_at(&inst, &open, 0..1000);
        for (p, r) in held.drain(1..) {
            p.finish(Outcome::Ack);
            r.release();
        }
        assert_eq!(open.len(), 1);
        assert!(lock(&open.map).queue.len() <= 64, "holes are swept");
        assert_eq!(open.take_up_to(u64::MAX).len(), 1);
    }

    #[test]
    fn released_and_dropped_registrations_leave_nothing() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "test").build(t.config());
        let open = OpenSpans::new();
        let mut held = open_at(&inst, &open, 1..=3);
        held[0].0.finish(Outcome::Ack);
        held[0].1.release();
        assert_eq!(open.len(), 2);
        held.pop();
        assert_eq!(open.len(), 1);
        assert!(open.take_up_to(1).is_empty());
        assert_eq!(open.len(), 1);
    }
}
