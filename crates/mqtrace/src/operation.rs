//! Messaging systems and operations, as the semantic conventions name them.

use opentelemetry::trace::SpanKind;

/// The messaging system, recorded as `messaging.system`.
///
/// ```
/// assert_eq!(mqtrace::MessagingSystem::RabbitMq.as_str(), "rabbitmq");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum MessagingSystem {
    /// RabbitMQ (AMQP 0-9-1).
    RabbitMq,
    /// Apache Kafka and Kafka-protocol brokers.
    Kafka,
    /// Google Cloud Pub/Sub.
    GcpPubSub,
}

impl MessagingSystem {
    /// The semantic-convention value.
    ///
    /// ```
    /// assert_eq!(mqtrace::MessagingSystem::GcpPubSub.as_str(), "gcp_pubsub");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::RabbitMq => "rabbitmq",
            Self::Kafka => "kafka",
            Self::GcpPubSub => "gcp_pubsub",
        }
    }
}

/// The type of a messaging operation (`messaging.operation.type`).
///
/// ```
/// use mqtrace::OperationType;
/// use opentelemetry::trace::SpanKind;
/// assert_eq!(OperationType::Process.span_kind(), SpanKind::Consumer);
/// assert_eq!(OperationType::Settle.as_str(), "settle");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum OperationType {
    /// A message is created (one span per message of a batch publish).
    Create,
    /// One or more messages are handed to the broker.
    Send,
    /// A pull or poll that returns messages.
    Receive,
    /// The handling of one message.
    Process,
    /// An acknowledgement, negative acknowledgement, rejection or commit.
    Settle,
}

impl OperationType {
    /// The semantic-convention value.
    ///
    /// ```
    /// assert_eq!(mqtrace::OperationType::Create.as_str(), "create");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Create => "create",
            Self::Send => "send",
            Self::Receive => "receive",
            Self::Process => "process",
            Self::Settle => "settle",
        }
    }

    /// The span kind the conventions give this operation type.
    ///
    /// ```
    /// assert_eq!(mqtrace::OperationType::Send.span_kind(), opentelemetry::trace::SpanKind::Producer);
    /// ```
    pub fn span_kind(self) -> SpanKind {
        match self {
            Self::Create | Self::Send => SpanKind::Producer,
            Self::Receive | Self::Settle => SpanKind::Client,
            Self::Process => SpanKind::Consumer,
        }
    }
}

/// A messaging operation: its system-specific name (`messaging.operation.name`, the first
/// word of the span name) and its type.
///
/// ```
/// use mqtrace::{Operation, OperationType};
/// const PUBLISH: Operation = Operation::new("publish", OperationType::Send);
/// assert_eq!(PUBLISH.name(), "publish");
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    name: &'static str,
    kind: OperationType,
}

impl Operation {
    /// An operation named `name` of type `kind`.
    ///
    /// ```
    /// let op = mqtrace::Operation::new("ack", mqtrace::OperationType::Settle);
    /// assert_eq!(op.kind(), mqtrace::OperationType::Settle);
    /// ```
    pub const fn new(name: &'static str, kind: OperationType) -> Self {
        Self { name, kind }
    }

    /// `messaging.operation.name`.
    ///
    /// ```
    /// assert_eq!(mqtrace::Operation::new("poll", mqtrace::OperationType::Receive).name(), "poll");
    /// ```
    pub const fn name(self) -> &'static str {
        self.name
    }

    /// `messaging.operation.type`.
    ///
    /// ```
    /// assert_eq!(mqtrace::Operation::new("send", mqtrace::OperationType::Send).kind().as_str(), "send");
    /// ```
    pub const fn kind(self) -> OperationType {
        self.kind
    }
}
