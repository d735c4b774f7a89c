//! The messages as the core sees them: one about to be sent ([`Outgoing`]) and one delivered
//! ([`Incoming`]). A broker crate fills them from its client's types; nothing here allocates.

use crate::carrier::HeaderExtractor;
use crate::operation::Operation;
use opentelemetry::KeyValue;
use std::time::SystemTime;

/// Adds the attributes of a sampled span to the list it is given; called only when the span
/// is recording, before the span is shared (see [`Outgoing::with_recorded`]).
pub type Record<'a> = &'a dyn Fn(&mut Vec<KeyValue>);

/// What the conventions say about a destination besides its name: whether it is temporary
/// (`messaging.destination.temporary`: it may not exist once its messages are processed, e.g.
/// an exclusive or auto-delete queue, RabbitMQ's direct reply-to) and whether it is anonymous
/// (`messaging.destination.anonymous`: unnamed or with a generated name, e.g. a server-named
/// `amq.gen-*` queue). Broker crates detect it; the core acts on it, the same way for every
/// broker: a destination that is either is left out of span names (`publish`, `process`,
/// `ack`: the operation alone, as the conventions ask of names that are not low-cardinality),
/// flagged on spans and metric points, and its name is kept out of metric attributes (one
/// series, not one per queue). The name itself stays on spans (`messaging.destination.name`).
///
/// ```
/// use mqtrace::instrument::DestinationKind;
/// let reply_to = DestinationKind::NAMED.with_temporary(true).with_anonymous(true);
/// assert!(reply_to.is_temporary() && reply_to.is_anonymous() && !reply_to.is_named());
/// assert!(DestinationKind::default().is_named());
/// ```
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Hash)]
pub struct DestinationKind {
    temporary: bool,
    anonymous: bool,
}

impl DestinationKind {
    /// A destination known by a stable name: neither temporary nor anonymous (the default).
    ///
    /// ```
    /// assert!(mqtrace::instrument::DestinationKind::NAMED.is_named());
    /// ```
    pub const NAMED: Self = Self {
        temporary: false,
        anonymous: false,
    };

    /// Marks the destination temporary (or not).
    ///
    /// ```
    /// let k = mqtrace::instrument::DestinationKind::NAMED.with_temporary(true);
    /// assert!(k.is_temporary());
    /// ```
    #[must_use]
    pub const fn with_temporary(mut self, temporary: bool) -> Self {
        self.temporary = temporary;
        self
    }

    /// Marks the destination anonymous (or not).
    ///
    /// ```
    /// let k = mqtrace::instrument::DestinationKind::NAMED.with_anonymous(true);
    /// assert!(k.is_anonymous());
    /// ```
    #[must_use]
    pub const fn with_anonymous(mut self, anonymous: bool) -> Self {
        self.anonymous = anonymous;
        self
    }

    /// `messaging.destination.temporary`.
    ///
    /// ```
    /// assert!(!mqtrace::instrument::DestinationKind::NAMED.is_temporary());
    /// ```
    pub const fn is_temporary(self) -> bool {
        self.temporary
    }

    /// `messaging.destination.anonymous`.
    ///
    /// ```
    /// assert!(!mqtrace::instrument::DestinationKind::NAMED.is_anonymous());
    /// ```
    pub const fn is_anonymous(self) -> bool {
        self.anonymous
    }

    /// Neither temporary nor anonymous: the name is fit for span names and metrics.
    ///
    /// ```
    /// assert!(mqtrace::instrument::DestinationKind::NAMED.is_named());
    /// ```
    pub const fn is_named(self) -> bool {
        !self.temporary && !self.anonymous
    }

    /// The span attributes saying so (only the `true` ones, as the conventions ask).
    pub(crate) fn attributes(self) -> impl Iterator<Item = KeyValue> {
        let t = self
            .temporary
            .then(|| KeyValue::new(crate::attributes::MESSAGING_DESTINATION_TEMPORARY, true));
        let a = self
            .anonymous
            .then(|| KeyValue::new(crate::attributes::MESSAGING_DESTINATION_ANONYMOUS, true));
        t.into_iter().chain(a)
    }
}

/// One message about to be sent, as the core needs to see it.
///
/// ```
/// use mqtrace::{Operation, OperationType, instrument::Outgoing};
/// let m = Outgoing::new(Operation::new("publish", OperationType::Send), "orders")
///     .with_message_id(Some("m-1"))
///     .with_body_size(42);
/// # let _ = m;
/// ```
#[derive(Clone, Copy)]
pub struct Outgoing<'a> {
    pub(crate) operation: Operation,
    pub(crate) destination: &'a str,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body_size: Option<usize>,
    pub(crate) headers: Option<&'a dyn HeaderExtractor>,
    pub(crate) attributes: &'a [KeyValue],
    pub(crate) recorded: Option<Record<'a>>,
    pub(crate) metric_destination: Option<&'a str>,
    pub(crate) kind: DestinationKind,
    pub(crate) existing: Option<&'a crate::instrument::ExistingOnMessage>,
}

impl<'a> Outgoing<'a> {
    /// A message for `operation` on `destination` (`messaging.destination.name`).
    ///
    /// ```
    /// let _ = mqtrace::instrument::Outgoing::new(mqtrace::Operation::new("send", mqtrace::OperationType::Send), "t");
    /// ```
    pub fn new(operation: Operation, destination: &'a str) -> Self {
        Self {
            operation,
            destination,
            message_id: None,
            conversation_id: None,
            body_size: None,
            headers: None,
            attributes: &[],
            recorded: None,
            metric_destination: None,
            kind: DestinationKind::NAMED,
            existing: None,
        }
    }

    /// Whether the destination is temporary or anonymous ([`DestinationKind`]).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Outgoing::new(Operation::new("publish", OperationType::Send), "amq.gen-1")
    ///     .with_destination_kind(DestinationKind::NAMED.with_anonymous(true));
    /// ```
    pub fn with_destination_kind(mut self, kind: DestinationKind) -> Self {
        self.kind = kind;
        self
    }

    /// The creation context already on the message, as [`Instrumentation::existing_context`]
    /// found it in the headers before injection: [`crate::instrument::Instrumentation::start_send`]
    /// keeps or replaces it per [`crate::ExistingContext`].
    ///
    /// [`Instrumentation::existing_context`]: crate::instrument::Instrumentation::existing_context
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let inst = Instrumentation::builder(MessagingSystem::Kafka, "doc").build(Config::new());
    /// let before: std::collections::HashMap<String, String> = Default::default();
    /// let existing = inst.existing_context(&before);
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_existing_context(&existing);
    /// ```
    pub fn with_existing_context(
        mut self,
        existing: &'a crate::instrument::ExistingOnMessage,
    ) -> Self {
        self.existing = Some(existing);
        self
    }

    /// The destination metrics name the message by, when it differs from the span's (e.g. the
    /// exchange, not `{exchange}:{routing key}`, whose per-message keys would make one series
    /// each). A temporary or anonymous destination ([`DestinationKind`]) has no name on metrics
    /// either way.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Outgoing::new(Operation::new("publish", OperationType::Send), "orders:eu.42")
    ///     .with_metric_destination("orders");
    /// ```
    pub fn with_metric_destination(mut self, destination: &'a str) -> Self {
        self.metric_destination = Some(destination);
        self
    }

    /// `messaging.message.id`.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_message_id(Some("id"));
    /// ```
    pub fn with_message_id(mut self, id: Option<&'a str>) -> Self {
        self.message_id = id;
        self
    }

    /// `messaging.message.conversation_id` (e.g. the AMQP correlation id).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_conversation_id(Some("c"));
    /// ```
    pub fn with_conversation_id(mut self, id: Option<&'a str>) -> Self {
        self.conversation_id = id;
        self
    }

    /// The body size, recorded only when [`crate::Config::with_body_size`] is on.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_body_size(3);
    /// ```
    pub fn with_body_size(mut self, size: usize) -> Self {
        self.body_size = Some(size);
        self
    }

    /// The user's headers as they are before injection, for the attribute hook.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let h = std::collections::HashMap::<String, String>::new();
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_headers(&h);
    /// ```
    pub fn with_headers(mut self, headers: &'a dyn HeaderExtractor) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Attributes of the broker's own, set at span creation so samplers see them (e.g.
    /// `messaging.destination.partition.id`, `messaging.consumer.group.name`).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let kv = [opentelemetry::KeyValue::new("messaging.destination.partition.id", "0")];
    /// let _ = Outgoing::new(Operation::new("send", OperationType::Send), "t").with_attributes(&kv);
    /// ```
    pub fn with_attributes(mut self, attributes: &'a [KeyValue]) -> Self {
        self.attributes = attributes;
        self
    }

    /// The broker's attributes that samplers do not need (routing key, message key,
    /// tombstone, ordering key...): `record` adds them when the span is sampled, before it is
    /// shared, and is not called otherwise, so an unsampled span builds none of them.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let record = |kv: &mut Vec<opentelemetry::KeyValue>| {
    ///     kv.push(opentelemetry::KeyValue::new("messaging.rabbitmq.destination.routing_key", "eu"));
    /// };
    /// let _ = Outgoing::new(Operation::new("publish", OperationType::Send), "orders:eu").with_recorded(&record);
    /// ```
    pub fn with_recorded(mut self, record: Record<'a>) -> Self {
        self.recorded = Some(record);
        self
    }
}

/// One delivered message, as the core needs to see it.
///
/// ```
/// use mqtrace::{Operation, OperationType, instrument::Incoming};
/// let m = Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders")
///     .with_attempt(Some(2));
/// # let _ = m;
/// ```
#[derive(Clone, Copy)]
pub struct Incoming<'a> {
    pub(crate) operation: Operation,
    pub(crate) destination: &'a str,
    pub(crate) source: &'a str,
    pub(crate) message_id: Option<&'a str>,
    pub(crate) conversation_id: Option<&'a str>,
    pub(crate) body_size: Option<usize>,
    pub(crate) attempt: Option<u32>,
    pub(crate) headers: Option<&'a dyn HeaderExtractor>,
    pub(crate) attributes: &'a [KeyValue],
    pub(crate) recorded: Option<Record<'a>>,
    pub(crate) settled: Option<Record<'a>>,
    pub(crate) sent_at: Option<SystemTime>,
    pub(crate) counted_at_receive: bool,
    pub(crate) subscription: Option<&'a str>,
    pub(crate) kind: DestinationKind,
}

impl<'a> Incoming<'a> {
    /// A message handled by `operation`, delivered from `destination`
    /// (`messaging.destination.name`); `source` is the name the trust policy is asked about
    /// (queue, topic or subscription).
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "ex:rk:q", "q");
    /// ```
    pub fn new(operation: Operation, destination: &'a str, source: &'a str) -> Self {
        Self {
            operation,
            destination,
            source,
            message_id: None,
            conversation_id: None,
            body_size: None,
            attempt: None,
            headers: None,
            attributes: &[],
            recorded: None,
            settled: None,
            sent_at: None,
            counted_at_receive: false,
            subscription: None,
            kind: DestinationKind::NAMED,
        }
    }

    /// Whether the destination is temporary or anonymous ([`DestinationKind`]): the process
    /// span and its settle spans are then named by their operation alone.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "amq.gen-1", "amq.gen-1")
    ///     .with_destination_kind(DestinationKind::NAMED.with_temporary(true).with_anonymous(true));
    /// ```
    pub fn with_destination_kind(mut self, kind: DestinationKind) -> Self {
        self.kind = kind;
        self
    }

    /// The subscription the message was delivered through: `messaging.destination.subscription.name`
    /// on the process span (given to samplers), the settle spans of a sampled process span,
    /// and the consumer metrics.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("receive", OperationType::Process), "orders-sub", "orders-sub")
    ///     .with_subscription(Some("orders-sub"));
    /// ```
    pub fn with_subscription(mut self, subscription: Option<&'a str>) -> Self {
        self.subscription = subscription;
        self
    }

    /// When the broker says the message was sent (Kafka record timestamp, Pub/Sub
    /// `publish_time`, AMQP timestamp): the start of its time in queue
    /// (`mqtrace.message.queue_time`), and the pipeline's origin when the message starts one.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q")
    ///     .with_sent_at(Some(std::time::SystemTime::now()));
    /// ```
    pub fn with_sent_at(mut self, sent_at: Option<SystemTime>) -> Self {
        self.sent_at = sent_at;
        self
    }

    /// The message was already counted in `messaging.client.consumed.messages` by the receive
    /// span of its batch ([`super::Instrumentation::record_receive`]), so its process span does
    /// not count it again.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q")
    ///     .with_counted_at_receive(true);
    /// ```
    pub fn with_counted_at_receive(mut self, counted: bool) -> Self {
        self.counted_at_receive = counted;
        self
    }

    /// `messaging.message.id`.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_message_id(Some("m"));
    /// ```
    pub fn with_message_id(mut self, id: Option<&'a str>) -> Self {
        self.message_id = id;
        self
    }

    /// `messaging.message.conversation_id`.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_conversation_id(Some("c"));
    /// ```
    pub fn with_conversation_id(mut self, id: Option<&'a str>) -> Self {
        self.conversation_id = id;
        self
    }

    /// The body size, recorded only when [`crate::Config::with_body_size`] is on.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_body_size(1);
    /// ```
    pub fn with_body_size(mut self, size: usize) -> Self {
        self.body_size = Some(size);
        self
    }

    /// The delivery attempt (1 for the first delivery), when known.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_attempt(Some(1));
    /// ```
    pub fn with_attempt(mut self, attempt: Option<u32>) -> Self {
        self.attempt = attempt;
        self
    }

    /// The message's headers, for the attribute hook.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let h = std::collections::HashMap::<String, String>::new();
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_headers(&h);
    /// ```
    pub fn with_headers(mut self, headers: &'a dyn HeaderExtractor) -> Self {
        self.headers = Some(headers);
        self
    }

    /// Attributes of the broker's own, set at span creation so samplers see them (e.g.
    /// `messaging.destination.partition.id`, `messaging.consumer.group.name`): the process
    /// span starts with them, and so do the settle spans of a sampled process span.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let kv = [opentelemetry::KeyValue::new("messaging.destination.partition.id", "0")];
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "t", "t").with_attributes(&kv);
    /// ```
    pub fn with_attributes(mut self, attributes: &'a [KeyValue]) -> Self {
        self.attributes = attributes;
        self
    }

    /// The broker's attributes of the process span that samplers do not need (routing key,
    /// redelivered flag, message key...): `record` adds them when the span is sampled, before
    /// it is shared, and is not called otherwise.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let record = |kv: &mut Vec<opentelemetry::KeyValue>| {
    ///     kv.push(opentelemetry::KeyValue::new("messaging.kafka.message.tombstone", true));
    /// };
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "t", "t").with_recorded(&record);
    /// ```
    pub fn with_recorded(mut self, record: Record<'a>) -> Self {
        self.recorded = Some(record);
        self
    }

    /// The broker's attributes of the message that its settle spans carry as well as its
    /// process span (delivery tag, offset, delivery attempt, ack id): `record` runs once,
    /// when the process span is sampled, and its attributes are kept for the settle spans.
    ///
    /// ```
    /// # use mqtrace::{*, instrument::*};
    /// let record = |kv: &mut Vec<opentelemetry::KeyValue>| {
    ///     kv.push(opentelemetry::KeyValue::new("messaging.rabbitmq.message.delivery_tag", 7_i64));
    /// };
    /// let _ = Incoming::new(Operation::new("process", OperationType::Process), "q", "q").with_settle_recorded(&record);
    /// ```
    pub fn with_settle_recorded(mut self, record: Record<'a>) -> Self {
        self.settled = Some(record);
        self
    }
}
