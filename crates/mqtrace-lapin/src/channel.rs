//! The traced channel: `basic_publish` and `basic_consume` with trace context.

use crate::confirm::{ConfirmAnswer, TracedPublisherConfirm};
use crate::consumer::TracedConsumer;
use crate::delivery::TracedDelivery;
use crate::error::error_type;
use crate::headers::{AmqpHeaders, AmqpHeadersMut};
use crate::{ACK, NACK};
use crate::{PUBLISH, publish_destination};
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicNackOptions, BasicPublishOptions,
    QueueDeclareOptions,
};
use lapin::types::{FieldTable, ShortString};
use lapin::{BasicProperties, Channel};
use mqtrace::Outcome;
use mqtrace::attributes as attr;
use mqtrace::instrument::{
    Answer, Instrumentation, OpenSpans, Outgoing, SendSpan, Settle, SettleError,
};
use opentelemetry::KeyValue;
use std::ops::Deref;

/// Starts the PRODUCER span of a publish and returns it with the properties to publish: the
/// user's headers plus the span's context (a context forwarded with the user's headers is
/// replaced whole, never mixed), and the timestamp when mqtrace stamps one. What
/// [`TracedChannel::basic_publish`] does before it hands the message to lapin; use it to trace
/// a publish made through another path (a pooled `lapin::Channel`, a batching layer). End the
/// span with the broker's answer ([`SendSpan::end_ok`] / [`SendSpan::end_error`]).
///
/// ```
/// use lapin::BasicProperties;
/// let inst = mqtrace_lapin::instrumentation(mqtrace::Config::new(), Some(("127.0.0.1", 5672)));
/// let (span, props) = mqtrace_lapin::start_publish(&inst, "", "orders", b"{}", BasicProperties::default());
/// // channel.basic_publish("".into(), "orders".into(), options, b"{}", props).await? ...
/// span.end_ok();
/// # let _ = props;
/// ```
pub fn start_publish(
    inst: &Instrumentation,
    exchange: &str,
    routing_key: &str,
    payload: &[u8],
    properties: BasicProperties,
) -> (SendSpan, BasicProperties) {
    let destination = publish_destination(exchange, routing_key);
    let mut headers = properties.headers().clone();
    let stamped;
    let span = {
        let before = AmqpHeaders(properties.headers().as_ref());
        let routing = |kv: &mut Vec<KeyValue>| {
            if !routing_key.is_empty() {
                kv.push(KeyValue::new(
                    attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
                    routing_key.to_owned(),
                ));
            }
        };
        let existing = inst.existing_context(&before);
        // Only the default exchange routes by queue name.
        let kind = if exchange.is_empty() {
            crate::destination_kind(inst, routing_key)
        } else {
            mqtrace::instrument::DestinationKind::NAMED
        };
        let msg = Outgoing::new(PUBLISH, &destination)
            .with_recorded(&routing)
            .with_message_id(properties.message_id().as_ref().map(ShortString::as_str))
            .with_conversation_id(
                properties
                    .correlation_id()
                    .as_ref()
                    .map(ShortString::as_str),
            )
            .with_body_size(payload.len())
            .with_headers(&before)
            .with_metric_destination(if exchange.is_empty() {
                routing_key
            } else {
                exchange
            })
            .with_existing_context(&existing)
            .with_destination_kind(kind);
        let mut table = headers.take().unwrap_or_default();
        // A context on the user's headers is kept or replaced whole, never mixed.
        if !existing.keeps() {
            AmqpHeadersMut::remove_context(&mut table, inst.config().propagation());
        }
        let span = inst.start_send(msg, &mut AmqpHeadersMut(&mut table));
        stamped = crate::timestamp::stamp(&properties, &mut table);
        if properties.headers().is_some() || !table.inner().is_empty() {
            headers = Some(table);
        }
        span
    };
    let properties = match headers {
        Some(h) => properties.with_headers(h),
        None => properties,
    };
    let properties = match stamped {
        Some(secs) => properties.with_timestamp(secs),
        None => properties,
    };
    (span, properties)
}

/// A `lapin::Channel` that traces what it publishes and consumes.
///
/// `basic_publish`, `basic_consume`, `basic_get`, `basic_ack` and `basic_nack` have lapin's
/// signatures; everything else
/// (declarations, bindings, `confirm_select`, `basic_qos`, ...) is the `Channel` itself,
/// reached through `Deref`. Swapping `lapin::Channel` for this type is a change of type.
///
/// ```no_run
/// # async fn demo(conn: mqtrace_lapin::TracedConnection) -> lapin::Result<()> {
/// use lapin::{BasicProperties, options::*, types::FieldTable};
/// let channel = conn.create_channel().await?;
/// channel.confirm_select(ConfirmSelectOptions::default()).await?; // lapin's own method
/// let confirm = channel
///     .basic_publish("".into(), "orders".into(), BasicPublishOptions::default(), b"{}", BasicProperties::default())
///     .await?
///     .await?; // the PRODUCER span ends here, at the broker's confirm
/// if confirm.is_nack() {
///     // the broker refused the message: the span recorded it as an error
/// }
/// # Ok(()) }
/// ```
#[derive(Clone)]
pub struct TracedChannel {
    channel: Channel,
    inst: Instrumentation,
    /// The process spans of this channel's deliveries in flight, by delivery tag: what an
    /// ack or nack with `multiple` settles.
    open: OpenSpans,
}

impl std::fmt::Debug for TracedChannel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedChannel")
            .field("id", &self.channel.id())
            .finish_non_exhaustive()
    }
}

impl TracedChannel {
    /// Wraps a channel.
    ///
    /// ```no_run
    /// # fn demo(channel: lapin::Channel) {
    /// let inst = mqtrace_lapin::instrumentation(mqtrace::Config::new(), Some(("127.0.0.1", 5672)));
    /// let traced = mqtrace_lapin::TracedChannel::new(channel, inst);
    /// # let _ = traced; }
    /// ```
    pub fn new(channel: Channel, inst: Instrumentation) -> Self {
        Self {
            channel,
            inst,
            open: OpenSpans::new(),
        }
    }

    /// The instrumentation this channel uses.
    ///
    /// ```no_run
    /// # fn demo(ch: mqtrace_lapin::TracedChannel) {
    /// let _ = ch.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.inst
    }

    /// The wrapped channel.
    ///
    /// ```no_run
    /// # fn demo(ch: mqtrace_lapin::TracedChannel) {
    /// let raw: lapin::Channel = ch.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> Channel {
        self.channel
    }

    /// Publishes like [`Channel::basic_publish`], under a PRODUCER span named
    /// `publish {exchange}:{routing key}` whose context is added to the message headers as
    /// AMQP long strings. The user's headers are kept as they are (a message without headers
    /// only gets a table when there is context to carry). A context the headers already carry
    /// (forwarded from a received message, or injected by the application) is kept or replaced
    /// whole per [`mqtrace::ExistingContext`]; kept, the span is a CLIENT span linking it. To a
    /// temporary or anonymous queue through the default exchange ([`crate::destination_kind`]),
    /// the span is named `publish`.
    ///
    /// In confirm mode the span ends when the returned future resolves to the broker's
    /// confirm (a nack or a returned mandatory message is recorded as an error); if that
    /// future is dropped unawaited, the span still ends at the confirm, in a background task.
    /// Without confirms the span ends once the message is handed to the connection.
    ///
    /// ```no_run
    /// # async fn demo(channel: mqtrace_lapin::TracedChannel) -> lapin::Result<()> {
    /// use lapin::{BasicProperties, options::BasicPublishOptions};
    /// channel.basic_publish("orders".into(), "created".into(), BasicPublishOptions::default(),
    ///     br#"{"id":1}"#, BasicProperties::default().with_message_id("m-1".into())).await?;
    /// # Ok(()) }
    /// ```
    pub async fn basic_publish(
        &self,
        exchange: ShortString,
        routing_key: ShortString,
        options: BasicPublishOptions,
        payload: &[u8],
        properties: BasicProperties,
    ) -> lapin::Result<TracedPublisherConfirm> {
        let (span, properties) = start_publish(
            &self.inst,
            exchange.as_str(),
            routing_key.as_str(),
            payload,
            properties,
        );
        let confirm_mode = self.channel.status().confirm();
        match self
            .channel
            .basic_publish(exchange, routing_key, options, payload, properties)
            .await
        {
            Err(e) => {
                span.end_error(error_type(&e), &e);
                Err(e)
            }
            Ok(confirm) if confirm_mode => Ok(Answer::new(confirm, Some(span), ConfirmAnswer)),
            Ok(confirm) => {
                span.end_ok();
                Ok(Answer::new(confirm, None, ConfirmAnswer))
            }
        }
    }

    /// Fetches one message like [`Channel::basic_get`]. A pull is what the messaging
    /// conventions call a receive: the message carries a CLIENT span `receive {queue}`
    /// (`messaging.operation.type = receive`), not a CONSUMER process span. Otherwise it is
    /// what a consumer's delivery is: its parent and links follow the [`mqtrace::ParentPolicy`]
    /// (by default the creation context is the parent and a link, so the trace continues), it
    /// is the context of whatever runs in [`mqtrace::Traced::in_span`], it stays open until
    /// the message is settled (settle spans are its children, the outcome is recorded on it;
    /// with `no_ack: true`, outcome `auto_ack` when dropped).
    ///
    /// ```no_run
    /// # async fn demo(channel: mqtrace_lapin::TracedChannel) -> lapin::Result<()> {
    /// use lapin::options::{BasicAckOptions, BasicGetOptions};
    /// if let Some(message) = channel.basic_get("orders".into(), BasicGetOptions::default()).await? {
    ///     println!("{} more waiting", message.message_count);
    ///     message.delivery.ack(BasicAckOptions::default()).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn basic_get(
        &self,
        queue: ShortString,
        options: BasicGetOptions,
    ) -> lapin::Result<Option<TracedGetMessage>> {
        let no_ack = options.no_ack;
        let got = self.channel.basic_get(queue.clone(), options).await?;
        Ok(got.map(|m| TracedGetMessage {
            delivery: TracedDelivery::new_in(
                m.delivery,
                &self.inst,
                crate::RECEIVE,
                queue.as_str(),
                no_ack,
                Some(&self.open),
            ),
            message_count: m.message_count,
        }))
    }

    /// Declares a queue like [`Channel::queue_declare`], and remembers for this connection's
    /// spans and metrics whether it is anonymous (declared with an empty name: the server names
    /// it) or temporary (`exclusive` or `auto_delete`): its messages' spans are then named by
    /// their operation alone (`publish`, `process`, `ack`), carry
    /// `messaging.destination.anonymous` / `messaging.destination.temporary`, and metrics leave
    /// its name out (see [`crate::destination_kind`]).
    ///
    /// ```no_run
    /// # async fn demo(channel: mqtrace_lapin::TracedChannel) -> lapin::Result<()> {
    /// use lapin::{options::QueueDeclareOptions, types::FieldTable};
    /// let replies = channel
    ///     .queue_declare("".into(), QueueDeclareOptions { exclusive: true, ..Default::default() }, FieldTable::default())
    ///     .await?;
    /// println!("replies go to {}", replies.name()); // amq.gen-...
    /// # Ok(()) }
    /// ```
    pub async fn queue_declare(
        &self,
        queue: ShortString,
        options: QueueDeclareOptions,
        arguments: FieldTable,
    ) -> lapin::Result<lapin::Queue> {
        let anonymous = queue.as_str().is_empty();
        let declared = self
            .channel
            .queue_declare(queue, options, arguments)
            .await?;
        let kind = mqtrace::instrument::DestinationKind::NAMED
            .with_anonymous(anonymous)
            .with_temporary(options.exclusive || options.auto_delete);
        if !kind.is_named() {
            self.inst
                .declare_destination(declared.name().as_str(), kind);
        }
        Ok(declared)
    }

    /// Starts a consumer like [`Channel::basic_consume`]; its deliveries carry process spans.
    ///
    /// With `no_ack: true` the broker settles on delivery and each process span ends with
    /// outcome `auto_ack` when the delivery is dropped.
    ///
    /// ```no_run
    /// # async fn demo(channel: mqtrace_lapin::TracedChannel) -> lapin::Result<()> {
    /// use futures_util::StreamExt;
    /// use lapin::{options::*, types::FieldTable};
    /// use mqtrace_lapin::prelude::*;
    /// let mut consumer = channel
    ///     .basic_consume("orders".into(), "worker".into(), BasicConsumeOptions::default(), FieldTable::default())
    ///     .await?;
    /// while let Some(delivery) = consumer.next().await {
    ///     let delivery = delivery?;
    ///     delivery.in_span(async { /* handle the message */ }).await;
    ///     delivery.ack(BasicAckOptions::default()).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub async fn basic_consume(
        &self,
        queue: ShortString,
        consumer_tag: ShortString,
        options: BasicConsumeOptions,
        arguments: FieldTable,
    ) -> lapin::Result<TracedConsumer> {
        let no_ack = options.no_ack;
        let consumer = self
            .channel
            .basic_consume(queue.clone(), consumer_tag, options, arguments)
            .await?;
        Ok(TracedConsumer::on_channel(
            consumer,
            self.inst.clone(),
            queue,
            no_ack,
            self.open.clone(),
        ))
    }

    /// Acknowledges by delivery tag, like [`Channel::basic_ack`], and records it on the
    /// deliveries it covers: the one with `delivery_tag`, or with `multiple: true` every
    /// delivery of this channel not settled yet up to it (all of them for tag 0, as AMQP
    /// says). Each covered process span ends with outcome `ack`; one settle span, a child of
    /// the covered delivery with the highest tag, carries `messaging.batch.message_count`
    /// when it covers several and links the others.
    ///
    /// ```no_run
    /// # async fn demo(channel: mqtrace_lapin::TracedChannel, last: mqtrace_lapin::TracedDelivery) -> lapin::Result<()> {
    /// use lapin::options::BasicAckOptions;
    /// // every delivery up to `last` is acknowledged, and each process span ends `ack`
    /// channel.basic_ack(last.delivery_tag, BasicAckOptions { multiple: true }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn basic_ack(
        &self,
        delivery_tag: u64,
        options: BasicAckOptions,
    ) -> lapin::Result<()> {
        self.covered(delivery_tag, options.multiple)
            .settle(
                Settle::new(ACK, Outcome::Ack),
                self.channel.basic_ack(delivery_tag, options),
                check_unit,
            )
            .await
    }

    /// Negatively acknowledges by delivery tag, like [`Channel::basic_nack`]: outcome
    /// `requeue` when `requeue` is set, `reject` otherwise, recorded on the deliveries it
    /// covers as for [`Self::basic_ack`].
    ///
    /// ```no_run
    /// # async fn demo(channel: mqtrace_lapin::TracedChannel, last: mqtrace_lapin::TracedDelivery) -> lapin::Result<()> {
    /// use lapin::options::BasicNackOptions;
    /// channel.basic_nack(last.delivery_tag, BasicNackOptions { multiple: true, requeue: true }).await?;
    /// # Ok(()) }
    /// ```
    pub async fn basic_nack(
        &self,
        delivery_tag: u64,
        options: BasicNackOptions,
    ) -> lapin::Result<()> {
        let outcome = if options.requeue {
            Outcome::Requeue
        } else {
            Outcome::Reject
        };
        self.covered(delivery_tag, options.multiple)
            .settle(
                Settle::new(NACK, outcome),
                self.channel.basic_nack(delivery_tag, options),
                check_unit,
            )
            .await
    }

    /// The open process spans an ack or nack of `delivery_tag` settles.
    fn covered(&self, delivery_tag: u64, multiple: bool) -> mqtrace::instrument::Covered {
        match (multiple, delivery_tag) {
            (true, 0) => self.open.take_up_to(u64::MAX),
            (true, tag) => self.open.take_up_to(tag),
            (false, tag) => self.open.take_at(tag),
        }
    }
}

fn check_unit(result: &lapin::Result<()>) -> Option<SettleError> {
    result
        .as_ref()
        .err()
        .map(|e| SettleError::new(error_type(e), e))
}

impl Deref for TracedChannel {
    type Target = Channel;

    fn deref(&self) -> &Channel {
        &self.channel
    }
}

/// A message fetched with [`TracedChannel::basic_get`], like `lapin::message::BasicGetMessage`.
///
/// ```no_run
/// # async fn demo(m: mqtrace_lapin::TracedGetMessage) -> lapin::Result<()> {
/// let _body = &m.data; // through Deref to the traced delivery
/// m.delivery.ack(Default::default()).await?;
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub struct TracedGetMessage {
    /// The message, with its process span.
    pub delivery: TracedDelivery,
    /// Messages left in the queue after this one.
    pub message_count: u32,
}

impl mqtrace::Traced for TracedGetMessage {
    /// The fetched delivery's process span.
    ///
    /// ```no_run
    /// # fn demo(m: mqtrace_lapin::TracedGetMessage) {
    /// use mqtrace_lapin::prelude::*;
    /// println!("attempt {} of trace {}", m.attempt(), m.span_context().trace_id());
    /// # }
    /// ```
    fn processing(&self) -> &mqtrace::instrument::Processing {
        self.delivery.processing()
    }
}

impl Deref for TracedGetMessage {
    type Target = TracedDelivery;

    fn deref(&self) -> &TracedDelivery {
        &self.delivery
    }
}
