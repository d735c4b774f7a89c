//! `notifier`: subscribes to the Pub/Sub topic `orders.ready` through the subscription
//! `orders.ready.notifier`, "notifies the customer" and acks.
//!
//! Each message's handler carries a process span `subscribe orders.ready.notifier` that
//! continues the enricher's trace; the notification is a child span of it, and the ack is
//! recorded as a settle span (`ack orders.ready.notifier`). This is where a valid order's trace
//! ends.
#![forbid(unsafe_code)]

use futures_util::StreamExt;
use mqtrace_examples::check::NOTIFIER;
use mqtrace_examples::{Error, env, record_order_id};
use mqtrace_pubsub::TracedSubscriber;
use mqtrace_pubsub::prelude::*;
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};

fn main() -> std::process::ExitCode {
    mqtrace_examples::run_worker(NOTIFIER, run())
}

async fn run() -> Result<(), Error> {
    let emulator = env::pubsub_emulator();
    emulator
        .check(&env::pubsub_project(), std::time::Duration::from_secs(10))
        .await?;
    let subscriber = TracedSubscriber::new(
        emulator.subscriber().build().await?,
        emulator.instrumentation(mqtrace_examples::telemetry::mqtrace_config()),
    );
    let subscription = env::pubsub_subscription(env::NOTIFIER_SUBSCRIPTION);
    let mut stream = subscriber.subscribe(subscription.clone()).build();
    eprintln!("[notifier] subscribed to {subscription}");
    let tracer = global::tracer("mqtrace-examples/notifier");

    let shutdown = mqtrace_examples::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        let (message, handler) = tokio::select! {
            _ = &mut shutdown => break,
            next = stream.next() => match next {
                Some(m) => m?,
                None => return Err("the subscription stream ended".into()),
            },
        };
        let id = message
            .attributes
            .get("order_id")
            .cloned()
            .unwrap_or_default();
        handler
            .in_span(async {
                record_order_id(&id);
                // Stands in for an e-mail or a push notification: a span of the handler's own,
                // a child of the process span.
                let span = tracer.start("send notification");
                let cx = Context::current_with_span(span);
                cx.span()
                    .set_attribute(KeyValue::new(mqtrace_examples::ORDER_ID, id.clone()));
                tokio::time::sleep(std::time::Duration::from_millis(2))
                    .with_context(cx.clone())
                    .await;
                cx.span().end();
            })
            .await;
        handler.ack();
        eprintln!("[notifier] order {id} ready, customer notified");
    }
    eprintln!("[notifier] stopping");
    Ok(())
}
