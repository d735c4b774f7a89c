//! The traced delivery: a `lapin::message::Delivery` whose settle operations are recorded.

use crate::attempt::DeliveryHistory;
use crate::error::error_type;
use crate::headers::AmqpHeaders;
use crate::{ACK, NACK, PROCESS, REJECT, consume_destination};
use lapin::message::Delivery;
use lapin::options::{BasicAckOptions, BasicNackOptions, BasicRejectOptions};
use lapin::types::ShortString;
use mqtrace::attributes as attr;
use mqtrace::{
    Outcome, Traced,
    instrument::{
        Incoming, Instrumentation, OpenSpans, ProcessSpan, Processing, Registration, Settle,
        SettleError,
    },
};
use opentelemetry::KeyValue;
use std::borrow::Cow;
use std::future::Future;
use std::ops::Deref;
use std::sync::Arc;

/// A delivery with its process span.
///
/// The accessors every traced message has (`context`, `span_context`, `origin`, `attempt`,
/// `in_span`, `record_error`, `finish`) come from [`mqtrace::Traced`] (in
/// [`crate::prelude`]); the attempt is the one [`crate::DeliveryHistory`] reads (1 = first
/// delivery). It dereferences to the `lapin::message::Delivery` (`data`, `properties`, `routing_key`,
/// `delivery_tag`, `redelivered` are all there, unchanged). Settle it with [`ack`](Self::ack),
/// [`nack`](Self::nack), [`reject`](Self::reject) or [`dead_letter`](Self::dead_letter): each
/// performs lapin's operation under a CLIENT settle span and ends the process span with the
/// outcome. Dropped unsettled, the process span ends with outcome `unsettled` (an error),
/// or `auto_ack` for a `no_ack` consumer. Settling through `delivery.acker` directly bypasses
/// the recording.
///
/// ```no_run
/// # async fn demo(delivery: mqtrace_lapin::TracedDelivery) -> lapin::Result<()> {
/// use mqtrace_lapin::prelude::*;
/// println!("trace {}, attempt {}", delivery.span_context().trace_id(), delivery.attempt());
/// let parsed: Result<u32, _> = std::str::from_utf8(&delivery.data).unwrap_or("").parse();
/// match parsed {
///     Ok(_) => { delivery.ack(Default::default()).await?; }
///     Err(_) => { delivery.dead_letter("payload is not a number").await?; }
/// }
/// # Ok(()) }
/// ```
pub struct TracedDelivery {
    delivery: Delivery,
    processing: Arc<Processing>,
    /// Its place among its channel's deliveries in flight, for `multiple` acks and nacks.
    registration: Option<Registration>,
}

impl std::fmt::Debug for TracedDelivery {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedDelivery")
            .field("delivery_tag", &self.delivery.delivery_tag)
            .field("attempt", &self.attempt())
            .field("span_context", self.processing.span_context())
            .finish_non_exhaustive()
    }
}

fn check(result: &lapin::Result<bool>) -> Option<SettleError> {
    match result {
        Ok(true) => None,
        Ok(false) => Some(SettleError::new(
            "acker_unusable",
            "the delivery was already settled or its channel is closed",
        )),
        Err(e) => Some(SettleError::new(error_type(e), e)),
    }
}

/// The outcome of a nack or reject: the broker requeues the message, or discards it (or
/// dead-letters it through the queue's dead-letter exchange).
fn requeue_or_reject(requeue: bool) -> Outcome {
    if requeue {
        Outcome::Requeue
    } else {
        Outcome::Reject
    }
}

impl TracedDelivery {
    /// Starts the process span of `delivery`, consumed from `queue`.
    ///
    /// ```no_run
    /// # fn demo(d: lapin::message::Delivery) {
    /// let inst = mqtrace_lapin::instrumentation(mqtrace::Config::new(), None);
    /// let traced = mqtrace_lapin::TracedDelivery::new(d, &inst, "orders", false);
    /// # let _ = traced; }
    /// ```
    pub fn new(delivery: Delivery, inst: &Instrumentation, queue: &str, no_ack: bool) -> Self {
        Self::new_in(delivery, inst, PROCESS, queue, no_ack, None)
    }

    /// As [`Self::new`], registered among the deliveries in flight of its channel, `open`.
    pub(crate) fn new_in(
        delivery: Delivery,
        inst: &Instrumentation,
        operation: mqtrace::Operation,
        queue: &str,
        no_ack: bool,
        open: Option<&OpenSpans>,
    ) -> Self {
        let table = delivery.properties.headers().as_ref();
        let headers = AmqpHeaders(table);
        let history = DeliveryHistory::read_believing(
            table,
            delivery.redelivered,
            queue,
            inst.believes_history(queue),
        );
        let destination = consume_destination(
            delivery.exchange.as_str(),
            delivery.routing_key.as_str(),
            queue,
        );
        let record = |kv: &mut Vec<KeyValue>| {
            if !delivery.routing_key.as_str().is_empty() {
                kv.push(KeyValue::new(
                    attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                    delivery.routing_key.as_str().to_owned(),
                ));
            }
            if delivery.redelivered {
                kv.push(KeyValue::new(attr::DELIVERY_REDELIVERED, true));
            }
            if let Some(r) = &history.dead_letter_reason {
                kv.push(KeyValue::new(attr::DEAD_LETTER_REASON, r.clone()));
            }
            if let Some(q) = &history.dead_letter_queue {
                kv.push(KeyValue::new(attr::DEAD_LETTER_SOURCE, q.clone()));
            }
        };
        // What its settle spans (ack, nack, reject) record too.
        let settled = |kv: &mut Vec<KeyValue>| {
            kv.push(KeyValue::new(
                attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
                i64::try_from(delivery.delivery_tag).unwrap_or(i64::MAX),
            ));
        };
        let msg = Incoming::new(operation, &destination, queue)
            .with_destination_kind(crate::destination_kind(inst, queue))
            .with_message_id(
                delivery
                    .properties
                    .message_id()
                    .as_ref()
                    .map(ShortString::as_str),
            )
            .with_conversation_id(
                delivery
                    .properties
                    .correlation_id()
                    .as_ref()
                    .map(ShortString::as_str),
            )
            .with_body_size(delivery.data.len())
            .with_attempt(Some(history.attempt))
            .with_headers(&headers)
            .with_recorded(&record)
            .with_settle_recorded(&settled)
            .with_sent_at(crate::timestamp::sent_at(&delivery.properties));
        let mut span = inst.start_process(msg, inst.extract(&headers));
        if no_ack {
            span.set_drop_outcome(Outcome::AutoAck);
        }
        let processing = Arc::new(Processing::new(span));
        let registration = open
            .filter(|_| !no_ack)
            .map(|open| open.register(delivery.delivery_tag, &processing));
        Self {
            processing,
            registration,
            delivery,
        }
    }

    pub(crate) async fn settle_with(
        &self,
        settle: Settle,
        op: impl Future<Output = lapin::Result<bool>>,
    ) -> lapin::Result<bool> {
        if let Some(r) = &self.registration {
            r.release();
        }
        self.processing.settle(settle, op, check).await
    }

    /// Settles with `multiple`: every delivery of the channel in flight up to this one's tag
    /// ends with the outcome, under one settle span on this delivery (see
    /// [`mqtrace::instrument::Covered::settle`]); without it, this delivery only.
    async fn settle_up_to(
        &self,
        multiple: bool,
        settle: Settle,
        op: impl Future<Output = lapin::Result<bool>>,
    ) -> lapin::Result<bool> {
        match self.registration.as_ref().filter(|_| multiple) {
            Some(r) => r.take_up_to_here().settle(settle, op, check).await,
            None => self.settle_with(settle, op).await,
        }
    }

    /// Acknowledges, like `Acker::ack`: outcome `ack`. With `multiple: true`, every delivery
    /// of this channel not settled yet, up to this one, is acknowledged by the broker and
    /// recorded as such: each process span ends with outcome `ack`, and one settle span (a
    /// child of this delivery's process span) carries `messaging.batch.message_count` and
    /// links the others.
    ///
    /// ```no_run
    /// # async fn demo(d: mqtrace_lapin::TracedDelivery) -> lapin::Result<()> {
    /// d.ack(lapin::options::BasicAckOptions::default()).await?;
    /// # Ok(()) }
    /// ```
    pub async fn ack(&self, options: BasicAckOptions) -> lapin::Result<bool> {
        self.settle_up_to(
            options.multiple,
            Settle::new(ACK, Outcome::Ack),
            self.delivery.acker.ack(options),
        )
        .await
    }

    /// Negatively acknowledges, like `Acker::nack`: outcome `requeue` when `requeue` is set,
    /// `reject` otherwise (discarded, or dead-lettered by the queue's dead-letter exchange).
    /// With `multiple: true`, recorded on every delivery it covers, as for [`Self::ack`].
    ///
    /// ```no_run
    /// # async fn demo(d: mqtrace_lapin::TracedDelivery) -> lapin::Result<()> {
    /// d.nack(lapin::options::BasicNackOptions { requeue: true, ..Default::default() }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn nack(&self, options: BasicNackOptions) -> lapin::Result<bool> {
        self.settle_up_to(
            options.multiple,
            Settle::new(NACK, requeue_or_reject(options.requeue)),
            self.delivery.acker.nack(options),
        )
        .await
    }

    /// Rejects, like `Acker::reject`: outcome `requeue` or `reject`, as for [`Self::nack`].
    ///
    /// ```no_run
    /// # async fn demo(d: mqtrace_lapin::TracedDelivery) -> lapin::Result<()> {
    /// d.reject(lapin::options::BasicRejectOptions { requeue: false }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn reject(&self, options: BasicRejectOptions) -> lapin::Result<bool> {
        let settle = Settle::new(REJECT, requeue_or_reject(options.requeue));
        self.settle_with(settle, self.delivery.acker.reject(options))
            .await
    }

    /// Rejects without requeue so the queue's dead-letter exchange takes the message, and
    /// records outcome `dead_letter` with `reason`. The queue must have a dead-letter exchange
    /// (`x-dead-letter-exchange`), otherwise RabbitMQ discards the message.
    ///
    /// ```no_run
    /// # async fn demo(d: mqtrace_lapin::TracedDelivery) -> lapin::Result<()> {
    /// d.dead_letter("order has no items").await?;
    /// # Ok(()) }
    /// ```
    pub async fn dead_letter(&self, reason: impl Into<Cow<'static, str>>) -> lapin::Result<bool> {
        self.settle_with(
            Settle::new(REJECT, Outcome::DeadLetter).with_reason(reason),
            self.delivery
                .acker
                .reject(BasicRejectOptions { requeue: false }),
        )
        .await
    }

    /// The wrapped delivery and its process span, for settling by other means (the span ends
    /// when you finish or drop it).
    ///
    /// ```no_run
    /// # fn demo(d: mqtrace_lapin::TracedDelivery) {
    /// let (delivery, span) = d.into_parts();
    /// if let Some(span) = span { span.finish(mqtrace::Outcome::Ack); }
    /// # let _ = delivery; }
    /// ```
    pub fn into_parts(self) -> (Delivery, Option<ProcessSpan>) {
        let span = self.processing.take();
        (self.delivery, span)
    }
}

impl Traced for TracedDelivery {
    /// The process span this delivery holds until it is settled.
    ///
    /// ```no_run
    /// # fn demo(d: mqtrace_lapin::TracedDelivery) {
    /// use mqtrace_lapin::prelude::*;
    /// assert_eq!(d.processing().attempt(), Some(d.attempt()));
    /// # }
    /// ```
    fn processing(&self) -> &Processing {
        &self.processing
    }
}

impl Deref for TracedDelivery {
    type Target = Delivery;

    fn deref(&self) -> &Delivery {
        &self.delivery
    }
}
