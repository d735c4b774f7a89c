//! # mqtrace
//!
//! The broker-agnostic core of mqtrace: it makes message queues transparent to distributed
//! tracing. Broker crates (`mqtrace-lapin` for RabbitMQ, ...) wrap their client's producers and
//! consumers and drive this core, which owns everything that is the same for every broker:
//!
//! - [`carrier`]: reading and writing a broker's headers without intermediate maps;
//! - [`Propagation`]: the globally configured propagator (W3C trace context and baggage when
//!   none is installed), with a direct W3C codec ([`w3c`]) and a reason for every rejection;
//! - [`Instrumentation`]: spans named `{operation} {destination}` with the OpenTelemetry
//!   messaging conventions' kinds and attributes, the parent-or-link policy ([`ParentPolicy`])
//!   and the trust policy ([`Trust`]);
//! - [`ProcessSpan`]: the consumer span that covers the handler (across `.await`s, for
//!   OpenTelemetry and `tracing` spans alike) until the message is settled, recording the
//!   [`Outcome`] and a settle span; it never stays open;
//! - `envelope` (feature `json`): context carried in a JSON payload;
//! - `testing` (feature `testing`): an in-memory exporter fixture and trace-tree assertions.
//!
//! ```
//! use std::collections::HashMap;
//! use mqtrace::*;
//! use mqtrace::testing::{SpanDataExt, TestTelemetry};
//!
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! let telemetry = TestTelemetry::new();
//! let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "example").build(telemetry.config());
//!
//! // Producer side: a PRODUCER span, its context written into the headers.
//! let mut headers: HashMap<String, String> = HashMap::new();
//! let send = inst.start_send(Outgoing::new(Operation::new("publish", OperationType::Send), "orders"), &mut headers);
//! send.end_ok();
//!
//! // Consumer side: the context read back, a CONSUMER span that continues the trace.
//! let process = inst.start_process(
//!     Incoming::new(Operation::new("process", OperationType::Process), "orders", "orders"),
//!     inst.extract(&headers),
//! );
//! process.finish(Outcome::Ack);
//!
//! let spans = telemetry.spans();
//! spans.one("process orders").assert_child_of(spans.one("publish orders"));
//! # }
//! ```
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod attributes;
mod batch;
pub mod carrier;
mod config;
#[cfg(feature = "json")]
pub mod envelope;
mod instrumentation;
mod metrics;
mod operation;
mod outcome;
mod process;
mod processing;
mod producer;
pub mod propagation;
mod receive;
pub mod retry;
#[cfg(feature = "testing")]
pub mod testing;
pub mod w3c;

pub use config::{Config, ParentPolicy, SpanInfo, Trust};
pub use instrumentation::{Incoming, Instrumentation, InstrumentationBuilder, Outgoing};
pub use operation::{MessagingSystem, Operation, OperationType};
pub use outcome::Outcome;
pub use process::{PendingSettle, ProcessSpan, Settle, SettleError};
pub use processing::Processing;
pub use producer::SendSpan;
pub use propagation::{ContextIssue, Extracted, Propagation};
pub use receive::Receive;

/// Header mqtrace writes with the delivery attempt where the broker does not count attempts
/// (see [`retry::ATTEMPT_HEADER`]).
pub use retry::ATTEMPT_HEADER;
