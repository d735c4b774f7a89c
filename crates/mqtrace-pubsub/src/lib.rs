//! # mqtrace-pubsub
//!
//! Traced [`google_cloud_pubsub`] publishers and subscribers (Google Cloud Pub/Sub and its
//! emulator), built on the [`mqtrace`] core. Wrap the clients you build as usual and keep the
//! rest of your code:
//!
//! - [`TracedPublisher::publish`] starts a PRODUCER span `send {topic}` per message and writes
//!   its context into the message attributes twice: through the configured propagator
//!   (`traceparent` / `tracestate` / `baggage` by default) and as `googclient_traceparent` /
//!   `googclient_tracestate`, which Google's own client libraries (Python, Go, Java, Node) read.
//!   Your attributes are kept as they are. The span ends when the publish resolves, with
//!   `messaging.message.id`;
//!   (the client batches internally and tells nothing of its batches, so there is no batch send
//!   span for `create` spans to pair with: each message's own send span is its creation context);
//! - [`TracedSubscriber::subscribe`] opens a [`TracedMessageStream`], a `futures::Stream` of
//!   `(Message, TracedHandler)` (the client's `(Message, Handler)`): each handler carries a
//!   CONSUMER span `subscribe {subscription}` that continues the producer's trace from receipt
//!   until the message is acked, nacked (outcome `requeue`) or its handler is dropped (the
//!   client then nacks it, recorded as `requeue` with a reason), with CLIENT settle spans
//!   `ack {subscription}` / `nack {subscription}`; the accessors every traced message has, in
//!   every broker crate (`span_context`, `attempt`, `in_span`, `record_error`, ...), are the
//!   [`Traced`] trait's, in [`prelude`];
//! - [`RetryTopics`] retries a failed message after a delay through a retry topic and
//!   dead-letters it to a dead-letter topic, as a [`mqtrace::retry::RetryPolicy`] decides, with
//!   each attempt's process span linked to the attempt before and to the first publish;
//!   [`RetryStream`] reads a subscription and its retry subscription as one stream.
//!
//! ```no_run
//! use futures_util::StreamExt;
//! use google_cloud_pubsub::model::Message;
//! use mqtrace_pubsub::prelude::*; // the message accessors: in_span, span_context, attempt, ...
//! use mqtrace_pubsub::Emulator;
//!
//! # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
//! // Against the emulator (PUBSUB_EMULATOR_HOST); for Google Cloud, build the clients as usual.
//! let emulator = Emulator::from_env().expect("PUBSUB_EMULATOR_HOST is set");
//! let config = mqtrace::Config::new();
//!
//! let publisher = emulator.publisher("projects/p/topics/orders").build().await?;
//! let publisher = TracedPublisher::new(publisher, "projects/p/topics/orders", emulator.instrumentation(config.clone()));
//! let id = publisher.publish(Message::new().set_data("{}")).await?;
//!
//! let subscriber = TracedSubscriber::new(emulator.subscriber().build().await?, emulator.instrumentation(config));
//! let mut stream = subscriber.subscribe("projects/p/subscriptions/billing").build();
//! while let Some((message, handler)) = stream.next().await.transpose()? {
//!     handler.in_span(async { /* your handler: its spans join the trace */ }).await;
//!     handler.ack();
//! #   let _ = (message, &id); break;
//! }
//! # Ok(()) }
//! ```
//!
//! ## TLS provider
//!
//! This crate depends on `google-cloud-pubsub` without its default features, so it does not
//! choose a TLS crypto provider for you. Keep `google-cloud-pubsub`'s default features in your
//! own `Cargo.toml` (the aws-lc-rs provider), or install a rustls `CryptoProvider` (e.g. ring)
//! before building any client: the HTTP administration clients (`TopicAdmin`,
//! `SubscriptionAdmin`) need one even against the emulator. [`Emulator::check`] does not.
//!
//! ## Features
//!
//! - `emulator` (default): [`Emulator`], the clients for the Pub/Sub emulator (endpoint from
//!   `PUBSUB_EMULATOR_HOST`, anonymous credentials), which needs `google-cloud-auth` directly.
//!   A production build can leave it out with `default-features = false`.
//!
//! [`TracedMessageStream`] is a `futures::Stream` without any feature.
#![forbid(unsafe_code)]
#![warn(missing_docs)]

mod ack_id;
#[cfg(feature = "emulator")]
mod emulator;
mod error;
mod googclient;
mod handler;
mod publisher;
mod retry;
mod subscriber;

#[cfg(feature = "emulator")]
pub use emulator::{Emulator, EmulatorError};
pub use error::{ack_error_type, error_type, publish_error_type};
pub use googclient::{GOOGCLIENT_TRACEPARENT, GOOGCLIENT_TRACESTATE, GoogleContext};
pub use handler::TracedHandler;
pub use mqtrace::Traced;
pub use publisher::{PublishAnswer, TracedPublishFuture, TracedPublisher};
pub use retry::{Received, RetryError, RetryStream, RetryTopics};
pub use subscriber::{TracedMessageStream, TracedSubscribe, TracedSubscriber};

/// One import for the traced types' methods: `use mqtrace_pubsub::prelude::*;` (with
/// `futures_util::StreamExt` for `next()` on a [`TracedMessageStream`]).
///
/// ```no_run
/// use mqtrace_pubsub::prelude::*;
/// # async fn demo(h: TracedHandler) {
/// h.in_span(async { /* the handler */ }).await;
/// # }
/// ```
pub mod prelude {
    pub use crate::{TracedHandler, TracedMessageStream, TracedPublisher, TracedSubscriber};
    pub use mqtrace::Traced;
}

use mqtrace::{Config, Operation, OperationType, instrument::Instrumentation};

/// `create`: the conventions' per-message span of a batch send. The traced publisher does not
/// use it (the client offers no batch hook a `send` could be recorded at; each message gets a
/// PRODUCER [`SEND`] span instead); kept for code that records its own batches.
pub const CREATE: Operation = Operation::new("create", OperationType::Create);
/// `send`: the PRODUCER span of one published message (its creation context).
pub const SEND: Operation = Operation::new("send", OperationType::Send);
/// `subscribe`: the CONSUMER process span, from receipt until ack, nack or expiry (the name the
/// Pub/Sub conventions give it).
pub const SUBSCRIBE: Operation = Operation::new("subscribe", OperationType::Process);
/// `ack`: a settle operation.
pub const ACK: Operation = Operation::new("ack", OperationType::Settle);
/// `nack`: a settle operation.
pub const NACK: Operation = Operation::new("nack", OperationType::Settle);

/// Attribute keys of the Pub/Sub conventions, and the attributes Pub/Sub itself adds.
pub mod attributes {
    /// `messaging.gcp_pubsub.message.ordering_key`.
    pub const ORDERING_KEY: &str = "messaging.gcp_pubsub.message.ordering_key";
    /// `messaging.gcp_pubsub.message.ack_id`.
    pub const ACK_ID: &str = "messaging.gcp_pubsub.message.ack_id";
    /// `messaging.gcp_pubsub.message.delivery_attempt`.
    pub const DELIVERY_ATTEMPT: &str = "messaging.gcp_pubsub.message.delivery_attempt";
    /// `mqtrace.gcp_pubsub.topic`: the topic's full resource name
    /// (`projects/{project}/topics/{topic}`), on create spans; `messaging.destination.name`
    /// is the short name, as the conventions show it, which two projects can share.
    pub const TOPIC: &str = "mqtrace.gcp_pubsub.topic";
    /// `mqtrace.gcp_pubsub.subscription`: the subscription's full resource name
    /// (`projects/{project}/subscriptions/{subscription}`), on subscribe and settle spans
    /// (`messaging.destination.subscription.name` is the short name).
    pub const SUBSCRIPTION: &str = "mqtrace.gcp_pubsub.subscription";
    /// The message attribute Pub/Sub adds when it dead-letters a message: the subscription the
    /// message came from.
    pub const DEAD_LETTER_SOURCE_SUBSCRIPTION: &str = "CloudPubSubDeadLetterSourceSubscription";
}

/// Builds the Pub/Sub [`Instrumentation`] for a service at `host:port` (the values recorded as
/// `server.address` / `server.port`), with a `messaging.client.id` of its own
/// (`pubsub-{process}-{n}`: Google's clients have no id). Build one per client.
///
/// ```
/// let inst = mqtrace_pubsub::instrumentation(mqtrace::Config::new(), Some(("pubsub.googleapis.com", 443)));
/// assert_eq!(inst.system(), mqtrace::MessagingSystem::GcpPubSub);
/// ```
pub fn instrumentation(config: Config, server: Option<(&str, u16)>) -> Instrumentation {
    let mut b = Instrumentation::builder(mqtrace::MessagingSystem::GcpPubSub, "mqtrace-pubsub")
        .version(env!("CARGO_PKG_VERSION"))
        .client_id(mqtrace::instrument::unique_client_id("pubsub"));
    if let Some((host, port)) = server {
        b = b.server(host, port);
    }
    b.build(config)
}

/// The short name of a topic or subscription (`projects/p/topics/orders` → `orders`), used as
/// `messaging.destination.name` and in span names; a name without `/` is returned as it is.
///
/// ```
/// assert_eq!(mqtrace_pubsub::short_name("projects/p/topics/orders"), "orders");
/// assert_eq!(mqtrace_pubsub::short_name("projects/p/subscriptions/billing"), "billing");
/// assert_eq!(mqtrace_pubsub::short_name("orders"), "orders");
/// ```
pub fn short_name(resource: &str) -> &str {
    resource.rsplit('/').next().unwrap_or(resource)
}

#[cfg(test)]
mod tests {
    fn send<T: Send + 'static>() {}
    fn sync<T: Sync>() {}

    #[test]
    fn wrappers_move_across_tasks() {
        send::<crate::TracedPublisher>();
        sync::<crate::TracedPublisher>();
        send::<crate::TracedPublishFuture>();
        send::<crate::TracedSubscriber>();
        send::<crate::TracedMessageStream>();
        send::<crate::TracedHandler>();
        sync::<crate::TracedHandler>();
        send::<crate::RetryTopics>();
        sync::<crate::RetryTopics>();
        send::<crate::RetryStream>();
        send::<crate::Received>();
        sync::<crate::Received>();
        send::<crate::RetryError>();
    }
}
