//! The global tracer provider installed *after* a client was built (the usual order when
//! telemetry is set up later in `main`) still records that client's spans.
//!
//! Its own test binary: it installs OpenTelemetry's global provider, which is per process.

use mqtrace::instrument::{Incoming, Instrumentation, MessagingSystem, Outgoing};
use mqtrace::testing::{SpanDataExt, TestTelemetry};
use mqtrace::{Config, Operation, OperationType, Outcome};
use std::collections::HashMap;

const SEND: Operation = Operation::new("send", OperationType::Send);
const PROCESS: Operation = Operation::new("process", OperationType::Process);

#[test]
fn a_provider_installed_after_the_client_was_built_records_its_spans() {
    // Built while the global provider is still OpenTelemetry's no-op default.
    let producer =
        Instrumentation::builder(MessagingSystem::Kafka, "late-test").build(Config::new());
    let consumer =
        Instrumentation::builder(MessagingSystem::Kafka, "late-test").build(Config::new());

    // A message sent before any provider exists: nothing to record, and no panic.
    let mut early: HashMap<String, String> = HashMap::new();
    producer
        .start_send(Outgoing::new(SEND, "early"), &mut early)
        .end_ok();

    // The application installs its provider afterwards.
    let telemetry = TestTelemetry::new();
    opentelemetry::global::set_tracer_provider(telemetry.provider().clone());

    let mut headers: HashMap<String, String> = HashMap::new();
    producer
        .start_send(Outgoing::new(SEND, "orders"), &mut headers)
        .end_ok();
    consumer
        .start_process(
            Incoming::new(PROCESS, "orders", "orders"),
            consumer.extract(&headers),
        )
        .finish(Outcome::Ack);

    let spans = telemetry.spans();
    assert!(spans.find("send early").is_none(), "{}", spans.tree());
    let send = spans.one("send orders");
    let process = spans.one("process orders");
    process.assert_child_of(send);
    assert_eq!(send.instrumentation_scope.name(), "late-test");

    // The provider found is kept: spans keep going to it.
    producer
        .start_send(
            Outgoing::new(SEND, "again"),
            &mut HashMap::<String, String>::new(),
        )
        .end_ok();
    assert!(telemetry.spans().find("send again").is_some());
}
