//! # mqtrace
//!
//! The broker-agnostic core of mqtrace: it makes message queues transparent to distributed
//! tracing. Applications use it through a broker crate (`mqtrace-lapin` for RabbitMQ,
//! `mqtrace-rdkafka` for Kafka, `mqtrace-pubsub` for Google Cloud Pub/Sub) and configure it
//! here:
//!
//! - [`Config`]: tracer and meter provider, [`Propagation`], the parent-or-link policy
//!   ([`ParentPolicy`]), which sources are trusted ([`Trust`]), capture options, an attribute
//!   hook ([`SpanInfo`]);
//! - [`Outcome`]: how a message was settled, one vocabulary for every broker;
//! - [`retry`]: [`retry::RetryPolicy`] and [`retry::HandlerError`] for the broker crates'
//!   retry and dead-letter types;
//! - [`Traced`]: what every broker's traced message offers (context, span context, origin,
//!   attempt, `in_span`, `record_error`, `finish`), in scope through each broker crate's
//!   `prelude`;
//! - [`w3c`], [`propagation`], [`carrier`]: the context codec and header access;
//! - `envelope` (feature `json`): context carried in a JSON payload;
//! - `testing` (feature `testing`): an in-memory exporter fixture and trace-tree assertions.
//!
//! What a broker crate builds on (the instrumentation engine, the span types, the message
//! descriptions) is in [`instrument`], documented there as "how to add a broker".
//!
//! ```
//! use mqtrace::{Config, ParentPolicy, Propagation, Trust};
//! let config = Config::new()
//!     .with_propagation(Propagation::Global)
//!     .with_parent_policy(ParentPolicy::CreationContext)
//!     .with_trust(Trust::untrusted_sources(["public-webhooks"]));
//! assert_eq!(config.parent_policy(), ParentPolicy::CreationContext);
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attributes;
pub mod carrier;
mod config;
#[cfg(feature = "json")]
pub mod envelope;
pub mod instrument;
mod metrics;
mod operation;
mod outcome;
mod pipeline;
pub mod propagation;
pub mod retry;
mod span;
#[cfg(feature = "testing")]
pub mod testing;
mod traced;
pub mod w3c;

pub use config::{Config, ExistingContext, ParentPolicy, SpanInfo, Trust};
pub use operation::{MessagingSystem, Operation, OperationType};
pub use outcome::Outcome;
pub use propagation::{ContextIssue, Propagation};
pub use traced::Traced;

/// Header mqtrace writes with the delivery attempt where the broker does not count attempts
/// (see [`retry::ATTEMPT_HEADER`]).
pub use retry::ATTEMPT_HEADER;
/// Header mqtrace writes on a message sent inside a process span (in a stage that records
/// metrics or a sampled span): `{origin unix ms};{stage}`, the broker timestamp of the
/// pipeline's first message and the sending stage's hop count, so the next consumer records
/// `mqtrace.pipeline.latency` and `mqtrace.pipeline.stage`. A message sent outside any process
/// span starts a pipeline and carries no such header.
pub const PIPELINE_HEADER: &str = "mqtrace-pipeline";
