//! `enricher`: consumes the Kafka topic `orders.validated` (group `enricher`), adds the units
//! and a shipping priority, publishes the result to the Pub/Sub topic `orders.ready`, then
//! commits the offset.
//!
//! Each record has a process span that continues the validator's trace; the Pub/Sub publish
//! runs inside it, so its create span is a child and its context rides in the message
//! attributes. The offset is committed only after Pub/Sub accepted the message; if the publish
//! fails the program stops without committing, and the record is read again on restart.
#![forbid(unsafe_code)]

use google_cloud_pubsub::model::Message;
use mqtrace_examples::check::ENRICHER;
use mqtrace_examples::{Error, env, order, record_order_id};
use mqtrace_pubsub::TracedPublisher;
use mqtrace_pubsub::prelude::*;
use mqtrace_rdkafka::TracedStreamConsumer;
use rdkafka::ClientConfig;
use rdkafka::consumer::{CommitMode, Consumer};
use rdkafka::message::Message as _;
use serde_json::Value;

fn main() -> std::process::ExitCode {
    mqtrace_examples::run_worker(ENRICHER, run())
}

async fn run() -> Result<(), Error> {
    let emulator = env::pubsub_emulator();
    let topic = env::pubsub_topic(env::ORDERS_READY);
    emulator
        .check(&env::pubsub_project(), std::time::Duration::from_secs(10))
        .await?;
    let publisher = TracedPublisher::new(
        emulator.publisher(topic.clone()).build().await?,
        topic,
        emulator.instrumentation(mqtrace_examples::telemetry::mqtrace_config()),
    );

    let consumer = TracedStreamConsumer::create(
        ClientConfig::new()
            .set("bootstrap.servers", env::kafka_bootstrap_servers())
            .set("group.id", env::ENRICHER_GROUP)
            .set("auto.offset.reset", "earliest")
            .set("enable.auto.commit", "false")
            .set("session.timeout.ms", "6000")
            .set("heartbeat.interval.ms", "500"),
        mqtrace_examples::telemetry::mqtrace_config(),
    )?;
    consumer.subscribe(&[env::ORDERS_VALIDATED])?;
    eprintln!("[enricher] consuming {}", env::ORDERS_VALIDATED);

    let shutdown = mqtrace_examples::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let message = tokio::select! {
            _ = &mut shutdown => break,
            m = consumer.recv() => m?,
        };
        let published = message
            .in_span(async {
                let order: Value = match message.payload().map(serde_json::from_slice) {
                    Some(Ok(v)) => v,
                    _ => Value::Null,
                };
                let id = order::id(&order).unwrap_or("").to_owned();
                record_order_id(&id);
                let enriched = order::enrich(&order);
                let msg = Message::new()
                    .set_data(enriched.to_string())
                    .set_attributes([("order_id", id.as_str())]);
                publisher.publish(msg).await
            })
            .await;
        match published {
            Ok(id) => {
                // The commit span (`commit orders.validated`) ends when the broker answers.
                consumer.commit_message(&message, CommitMode::Async)?;
                eprintln!("[enricher] published {id}");
            }
            Err(e) => {
                message.record_error("pubsub_publish", &e);
                return Err(format!("publishing to Pub/Sub: {e}").into());
            }
        }
    }
    eprintln!("[enricher] stopping");
    Ok(())
}
