//! What metrics cost per message when no meter provider is configured: nothing. Counted with a
//! counting global allocator: the inputs metrics need (broker timestamp, consumer attributes,
//! subscription) add no allocation to a message's send and process spans, and recording
//! metrics does add some (so the counter sees the metric path at all).
//!
//! One test in this file: the allocator counts every thread, so nothing runs beside it.

use mqtrace::instrument::{Incoming, Instrumentation, Outgoing};
use mqtrace::{Config, MessagingSystem, Operation, OperationType, Outcome, attributes};
use opentelemetry::KeyValue;
use opentelemetry_sdk::trace::{Sampler, SdkTracerProvider};
use stats_alloc::{INSTRUMENTED_SYSTEM, Region, StatsAlloc};
use std::alloc::System;
use std::collections::HashMap;
use std::time::SystemTime;

#[global_allocator]
static GLOBAL: &StatsAlloc<System> = &INSTRUMENTED_SYSTEM;

const SEND: Operation = Operation::new("send", OperationType::Send);
const PROCESS: Operation = Operation::new("process", OperationType::Process);
const N: usize = 200;

/// Allocations per message of a send and a process span, `with_inputs` or not: the least of
/// five runs (the count includes whatever the test harness's threads allocate meanwhile).
fn allocations_per_message(inst: &Instrumentation, with_inputs: bool) -> f64 {
    (0..5)
        .map(|_| run(inst, with_inputs))
        .fold(f64::INFINITY, f64::min)
}

fn run(inst: &Instrumentation, with_inputs: bool) -> f64 {
    let extra = [
        KeyValue::new(attributes::MESSAGING_CONSUMER_GROUP_NAME, "g"),
        KeyValue::new(attributes::MESSAGING_DESTINATION_PARTITION_ID, "0"),
    ];
    let sent_at = SystemTime::now();
    let mut headers: HashMap<String, String> = HashMap::with_capacity(8);
    // Warm up (lazy statics, the thread-local context).
    for _ in 0..10 {
        one(inst, with_inputs, &extra, sent_at, &mut headers);
    }
    let region = Region::new(GLOBAL);
    for _ in 0..N {
        one(inst, with_inputs, &extra, sent_at, &mut headers);
    }
    let stats = region.change();
    #[allow(clippy::cast_precision_loss)]
    let per = stats.allocations as f64 / N as f64;
    per
}

fn one(
    inst: &Instrumentation,
    with_inputs: bool,
    extra: &[KeyValue],
    sent_at: SystemTime,
    headers: &mut HashMap<String, String>,
) {
    headers.clear();
    inst.start_send(Outgoing::new(SEND, "orders"), headers)
        .end_ok();
    // The subscription is a sampler input too (in the span builder), so both runs give it.
    let mut msg = Incoming::new(PROCESS, "orders", "orders")
        .with_headers(headers)
        .with_subscription(Some("orders"));
    if with_inputs {
        msg = msg
            .with_sent_at(Some(sent_at))
            .with_attributes(extra)
            .with_counted_at_receive(false);
    }
    inst.start_process(msg, inst.extract(headers))
        .finish(Outcome::Ack);
}

#[test]
fn without_a_meter_provider_metrics_cost_no_allocation_per_message() {
    let unsampled = SdkTracerProvider::builder()
        .with_sampler(Sampler::AlwaysOff)
        .build();
    let off = Instrumentation::builder(MessagingSystem::Kafka, "cost")
        .build(Config::new().with_tracer_provider(unsampled.clone()));
    let without = allocations_per_message(&off, false);
    let with = allocations_per_message(&off, true);
    let meter = opentelemetry_sdk::metrics::SdkMeterProvider::builder().build();
    let on = Instrumentation::builder(MessagingSystem::Kafka, "cost").build(
        Config::new()
            .with_tracer_provider(unsampled)
            .with_meter_provider(meter),
    );
    let metered = allocations_per_message(&on, true);
    eprintln!(
        "allocations per message (send + process, unsampled): metrics off {without}, \
         metrics off with their inputs {with}, metrics on {metered}"
    );
    assert!(
        (with - without).abs() < f64::EPSILON,
        "metric inputs allocate without a meter provider: {without} -> {with}"
    );
    assert!(
        metered > with,
        "the counter must see the metric path: {metered} vs {with}"
    );
}
