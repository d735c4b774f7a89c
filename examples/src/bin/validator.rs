//! `validator`: consumes `orders.created` (RabbitMQ) with retries and a dead-letter queue, and
//! produces each valid order to the Kafka topic `orders.validated`.
//!
//! Every delivery goes through `RetryQueues::handle`, which runs the handler inside the
//! delivery's process span and carries out the policy's decision:
//!
//! - a transient failure (an order with `"simulate": "transient_failure"` fails its first two
//!   attempts, as if the inventory service were down) is retried after a delay through the
//!   delay queues `orders.created.retry.N`; each attempt links to the one before;
//! - a permanent failure (an invalid order: no items, no customer, ...) is dead-lettered to
//!   `orders.created.dlq` at once, with the reason;
//! - a valid order is sent to Kafka by a `TracedFutureProducer` inside the process span, so the
//!   Kafka record carries the trace on.
#![forbid(unsafe_code)]

use futures_util::StreamExt;
use lapin::ConnectionProperties;
use lapin::options::{
    BasicConsumeOptions, BasicQosOptions, ConfirmSelectOptions, QueueDeclareOptions,
};
use lapin::types::FieldTable;
use mqtrace::retry::{HandlerError, RetryPolicy};
use mqtrace_examples::check::VALIDATOR;
use mqtrace_examples::{Error, env, order, record_order_id};
use mqtrace_lapin::prelude::*;
use mqtrace_lapin::{RetryQueues, TracedConnection, TracedDelivery};
use mqtrace_rdkafka::TracedFutureProducer;
use opentelemetry::trace::{Status, TraceContextExt, Tracer};
use opentelemetry::{KeyValue, global};
use rdkafka::ClientConfig;
use rdkafka::producer::FutureRecord;
use serde_json::Value;
use std::time::Duration;

fn main() -> std::process::ExitCode {
    mqtrace_examples::run_worker(VALIDATOR, run())
}

async fn run() -> Result<(), Error> {
    let conn = TracedConnection::connect(
        &env::amqp_url(),
        ConnectionProperties::default(),
        mqtrace_examples::telemetry::mqtrace_config(),
    )
    .await?;
    let channel = conn.create_channel().await?;
    // Confirms, so a retry or dead-letter copy is stored before the original is acknowledged.
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel.basic_qos(10, BasicQosOptions::default()).await?;
    channel
        .queue_declare(
            env::ORDERS_CREATED.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    // Up to 5 attempts, 250 ms before the second, doubling (short, for the demo).
    let policy = RetryPolicy::exponential(5)
        .with_initial_delay(Duration::from_millis(250))
        .with_max_delay(Duration::from_secs(5))
        .with_jitter(0.1);
    let retries = RetryQueues::declare(channel.clone(), env::ORDERS_CREATED, policy)
        .await?
        .with_time_limit(Duration::from_secs(30));

    let producer = TracedFutureProducer::create(
        ClientConfig::new()
            .set("bootstrap.servers", env::kafka_bootstrap_servers())
            .set("message.timeout.ms", "10000")
            .set("linger.ms", "5"),
        mqtrace_examples::telemetry::mqtrace_config(),
    )?;

    let mut consumer = channel
        .basic_consume(
            env::ORDERS_CREATED.into(),
            "validator".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!("[validator] consuming {}", env::ORDERS_CREATED);
    let shutdown = mqtrace_examples::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let delivery = tokio::select! {
            _ = &mut shutdown => break,
            next = consumer.next() => match next {
                Some(d) => d?,
                None => return Err("the RabbitMQ consumer was cancelled".into()),
            },
        };
        // One message at a time keeps the example short; spawn a task per delivery (with a
        // clone of `retries`: it is an Arc inside) for concurrency.
        let decision = retries
            .handle(delivery, async |d| validate(d, &producer).await)
            .await?;
        eprintln!("[validator] {decision:?}");
    }
    eprintln!("[validator] stopping");
    Ok(())
}

/// The handler: runs inside the delivery's process span.
async fn validate(d: &TracedDelivery, producer: &TracedFutureProducer) -> Result<(), HandlerError> {
    let order: Value = serde_json::from_slice(&d.data)
        .map_err(|e| HandlerError::permanent(e).with_error_type("invalid_json"))?;
    let id = order::id(&order).unwrap_or("").to_owned();
    record_order_id(&id);

    // The handler's own work is a span of its own, a child of the process span.
    let tracer = global::tracer("mqtrace-examples/validator");
    let checked = tracer.in_span("validate order", |cx| {
        let span = cx.span();
        span.set_attribute(KeyValue::new(mqtrace_examples::ORDER_ID, id.clone()));
        let r = order::validate(&order);
        if let Err(e) = &r {
            span.set_status(Status::error(e.clone()));
        }
        r
    });
    if let Err(reason) = checked {
        return Err(HandlerError::permanent(reason).with_error_type("invalid_order"));
    }
    if order::fails_transiently(&order) && d.attempt() < 3 {
        return Err(HandlerError::transient(format!(
            "inventory service unavailable (attempt {})",
            d.attempt()
        ))
        .with_error_type("inventory_unavailable"));
    }

    // Inside the process span: the Kafka send span is its child, and its context goes into the
    // record's headers.
    producer
        .send(
            FutureRecord::to(env::ORDERS_VALIDATED)
                .key(&id)
                .payload(&d.data[..]),
            Duration::from_secs(5),
        )
        .await
        .map_err(|(e, _)| HandlerError::transient(e).with_error_type("kafka_send"))?;
    Ok(())
}
