//! The broker-facing API: what a broker crate (`mqtrace-lapin`, `mqtrace-rdkafka`,
//! `mqtrace-pubsub`, or a fourth one) builds on. Applications do not need this module; they
//! use the crate root ([`crate::Config`], [`crate::Outcome`], [`crate::retry::RetryPolicy`]…)
//! and the broker crates' traced types.
//!
//! # How to add a broker
//!
//! A broker crate is thin: it knows its client's types, its header format and its settle
//! operations, and nothing else (ARCHITECTURE.md walks through it step by step).
//!
//! 1. Create one [`Instrumentation`] per client ([`Instrumentation::builder`] with the
//!    [`MessagingSystem`], the crate's name and version, the broker's address).
//! 2. Implement [`HeaderExtractor`] and [`Injector`] directly on the client's header type
//!    (no intermediate maps).
//! 3. On send: describe the message as an [`Outgoing`] and call
//!    [`Instrumentation::start_send`], which starts the span and injects the context; end the
//!    returned [`SendSpan`] when the broker has answered.
//! 4. On delivery: describe it as an [`Incoming`], read its context with
//!    [`Instrumentation::extract`], start its span with [`Instrumentation::start_process`]
//!    and hold it in a [`Processing`] inside the crate's message wrapper.
//! 5. On settle: [`Processing::settle`] with a [`Settle`] around the client's ack future, or
//!    a [`PendingSettle`] when the answer comes later through a callback.
//! 6. Publish futures: wrap the client's answer future in an [`Answer`] with an
//!    [`OnAnswer`] that ends the [`SendSpan`] from the broker's answer; message wrappers
//!    implement [`crate::Traced`] by returning their [`Processing`].
//! 7. Cumulative settles (one operation settling every message up to a position: a RabbitMQ
//!    `multiple` ack, a Kafka offset commit): keep an [`OpenSpans`] per settle scope (channel,
//!    partition), register each message's [`Processing`] at its position and keep the
//!    [`Registration`] in the message type; settle with [`OpenSpans::take_up_to`] and
//!    [`Covered::settle`].
//! 8. Batches: [`Instrumentation::record_receive`] for a poll ([`Receive`]),
//!    [`Instrumentation::start_batch_send`] for a batch publish.
//!
//! ```
//! use std::collections::HashMap;
//! use mqtrace::{Config, Outcome};
//! use mqtrace::instrument::*;
//! use mqtrace::testing::{SpanDataExt, TestTelemetry};
//!
//! let telemetry = TestTelemetry::new();
//! let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "example").build(telemetry.config());
//!
//! let mut headers: HashMap<String, String> = HashMap::new();
//! inst.start_send(Outgoing::new(Operation::new("publish", OperationType::Send), "orders"), &mut headers)
//!     .end_ok();
//! let process = inst.start_process(
//!     Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders"),
//!     inst.extract(&headers),
//! );
//! process.finish(Outcome::Ack);
//!
//! let spans = telemetry.spans();
//! spans.one("process orders").assert_child_of(spans.one("publish orders"));
//! ```

mod instrumentation;
mod message;

pub use crate::carrier::{HeaderExtractor, Injector, InvalidHeader};
pub use crate::config::{ConfiguredTracer, GlobalTracer};
pub use crate::operation::{MessagingSystem, Operation, OperationType};
pub use crate::propagation::Extracted;
pub use crate::span::{
    ABANDON_REASON, Answer, Covered, ExistingOnMessage, NO_RUNTIME, OnAnswer, OpenSpans,
    PendingSettle, PolledAfterCompletion, ProcessSpan, Processing, Receive, Registration, SendSpan,
    Settle, SettleError,
};
pub use instrumentation::{Instrumentation, InstrumentationBuilder, unique_client_id};
pub(crate) use instrumentation::{SpanFacts, span_name, span_name_for};
pub use message::{DestinationKind, Incoming, Outgoing, Record};
