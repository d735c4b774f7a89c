//! `dead-letters`: consumes `orders.created.dlq`, where the validator's `RetryQueues` put the
//! orders it gave up on, records why, and acks.
//!
//! The dead-lettered copy carries the trace context of the validator's last attempt, so its
//! process span (with `mqtrace.dead_letter.reason`) ends the poison order's trace in the same
//! trace as the HTTP request. A real service would alert, store the order for inspection, or
//! offer a way to replay it.
#![forbid(unsafe_code)]

use futures_util::StreamExt;
use lapin::ConnectionProperties;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable};
use mqtrace_examples::check::DEAD_LETTERS;
use mqtrace_examples::{Error, env, record_order_id};
use mqtrace_lapin::TracedConnection;
use mqtrace_lapin::prelude::*;
use opentelemetry::trace::TraceContextExt;
use opentelemetry::{Context, KeyValue};

fn main() -> std::process::ExitCode {
    mqtrace_examples::run_worker(DEAD_LETTERS, run())
}

async fn run() -> Result<(), Error> {
    let conn = TracedConnection::connect(
        &env::amqp_url(),
        ConnectionProperties::default(),
        mqtrace_examples::telemetry::mqtrace_config(),
    )
    .await?;
    let channel = conn.create_channel().await?;
    channel
        .queue_declare(
            env::ORDERS_DEAD_LETTERS.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let mut consumer = channel
        .basic_consume(
            env::ORDERS_DEAD_LETTERS.into(),
            "dead-letters".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    eprintln!("[dead-letters] consuming {}", env::ORDERS_DEAD_LETTERS);
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
        let id = delivery
            .properties
            .message_id()
            .as_ref()
            .map(|m| m.as_str().to_owned())
            .unwrap_or_default();
        // Why the validator gave up: RetryQueues writes it into this header (mqtrace-lapin
        // records RabbitMQ's own x-death reason by itself).
        let reason = match delivery
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get(mqtrace::retry::DEAD_LETTER_REASON_HEADER))
        {
            Some(AMQPValue::LongString(s)) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
            _ => String::new(),
        };
        delivery
            .in_span(async {
                record_order_id(&id);
                if !reason.is_empty() {
                    Context::current().span().set_attribute(KeyValue::new(
                        mqtrace::attributes::DEAD_LETTER_REASON,
                        reason.clone(),
                    ));
                }
            })
            .await;
        delivery.ack(BasicAckOptions::default()).await?;
        eprintln!("[dead-letters] order {id}: {reason}");
    }
    eprintln!("[dead-letters] stopping");
    Ok(())
}
