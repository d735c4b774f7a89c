//! Attribute keys: the semantic-convention names mqtrace records, and its own `mqtrace.*` keys
//! for what the conventions do not name.

pub use opentelemetry_semantic_conventions::attribute::{
    ERROR_TYPE, MESSAGING_BATCH_MESSAGE_COUNT, MESSAGING_CLIENT_ID, MESSAGING_CONSUMER_GROUP_NAME,
    MESSAGING_DESTINATION_NAME, MESSAGING_DESTINATION_PARTITION_ID,
    MESSAGING_DESTINATION_SUBSCRIPTION_NAME, MESSAGING_KAFKA_MESSAGE_KEY,
    MESSAGING_KAFKA_MESSAGE_TOMBSTONE, MESSAGING_KAFKA_OFFSET, MESSAGING_MESSAGE_BODY_SIZE,
    MESSAGING_MESSAGE_CONVERSATION_ID, MESSAGING_MESSAGE_ID, MESSAGING_OPERATION_NAME,
    MESSAGING_OPERATION_TYPE, MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY,
    MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG, MESSAGING_SYSTEM, NETWORK_PEER_ADDRESS,
    NETWORK_PEER_PORT, SERVER_ADDRESS, SERVER_PORT,
};

/// `messaging.kafka.cluster.id`: the id of the Kafka cluster the client talks to, as the
/// broker reports it.
pub const MESSAGING_KAFKA_CLUSTER_ID: &str = "messaging.kafka.cluster.id";

/// How the handling of the message ended: a value of [`crate::Outcome::as_str`].
pub const OUTCOME: &str = "mqtrace.outcome";
/// Why the message was settled that way (e.g. the dead-letter reason given by the handler).
pub const OUTCOME_REASON: &str = "mqtrace.outcome.reason";
/// Which delivery attempt of this message this is, starting at 1.
pub const DELIVERY_ATTEMPT: &str = "mqtrace.delivery.attempt";
/// True when the broker flagged the delivery as a redelivery.
pub const DELIVERY_REDELIVERED: &str = "mqtrace.delivery.redelivered";
/// Why the incoming trace context was rejected (in full or in part).
pub const CONTEXT_ERROR: &str = "mqtrace.context.error";
/// Which of mqtrace's own headers on the message were refused, and why (`header: why`,
/// `; `-separated): over their length bound, not valid, or from a source whose history is not
/// believed (see [`crate::retry::read_history`]).
pub const CONTEXT_REFUSED: &str = "mqtrace.context.refused";
/// True when the headers carried several `traceparent` values; the last valid one was used.
pub const CONTEXT_DUPLICATE: &str = "mqtrace.context.duplicate";
/// True when the message came from a source marked untrusted (its context is only linked).
pub const CONTEXT_UNTRUSTED: &str = "mqtrace.context.untrusted";
/// Why the message was dead-lettered, as reported by the broker (e.g. `rejected`).
pub const DEAD_LETTER_REASON: &str = "mqtrace.dead_letter.reason";
/// The queue or topic the message was dead-lettered from.
pub const DEAD_LETTER_SOURCE: &str = "mqtrace.dead_letter.source";
/// How many deliveries the retry policy allows in all.
pub const RETRY_MAX_ATTEMPTS: &str = "mqtrace.retry.max_attempts";
/// The delay before the next attempt, in seconds (set when the decision is to retry).
pub const RETRY_DELAY: &str = "mqtrace.retry.delay";
/// On a link: what the linked span is to this one (`origin`, `previous_attempt`).
pub const LINK_TYPE: &str = "mqtrace.link.type";
/// Seconds the message waited in the broker: from the broker's timestamp (Kafka record
/// timestamp, Pub/Sub `publish_time`, AMQP `timestamp_in_ms` header or `timestamp` property)
/// to the start of its process span; clamped at 0.
pub const MESSAGE_QUEUE_TIME: &str = "mqtrace.message.queue_time";
/// Seconds since the first message of the pipeline was sent (its origin time travels in the
/// `mqtrace-pipeline` header through every hop); clamped at 0.
pub const PIPELINE_LATENCY: &str = "mqtrace.pipeline.latency";
/// How many hops the message has made since the pipeline's first message (1 = first consumer).
pub const PIPELINE_STAGE: &str = "mqtrace.pipeline.stage";
/// `messaging.destination.temporary`: the destination is a temporary one (an exclusive or
/// auto-delete queue, direct reply-to); see [`crate::instrument::DestinationKind`].
pub const MESSAGING_DESTINATION_TEMPORARY: &str = "messaging.destination.temporary";
/// `messaging.destination.anonymous`: the destination is unnamed or server-named
/// (`amq.gen-*`); see [`crate::instrument::DestinationKind`].
pub const MESSAGING_DESTINATION_ANONYMOUS: &str = "messaging.destination.anonymous";
