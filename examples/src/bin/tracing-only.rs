//! `tracing-only`: an application that uses only the `tracing` crate (with the
//! `tracing-opentelemetry` layer) and mqtrace, on RabbitMQ.
//!
//! Its tracer provider is *not* installed as OpenTelemetry's global: the application hands it
//! to its `tracing` layer and, with [`mqtrace::Config::with_tracer_provider`], to mqtrace, so
//! both record into the same provider. Then:
//!
//! - `place order` is a `#[tracing::instrument]` function; mqtrace's `publish` span, started
//!   inside it, is its child (tracing-opentelemetry activates the OpenTelemetry context of the
//!   entered `tracing` span);
//! - the consumer's `process` span continues that trace (child of `publish`), and
//!   `delivery.in_span(handle(..))` makes the `tracing` spans of the handler (`handle order`,
//!   and `reserve stock` inside it) children of the process span;
//! - the `ack` settle span is a child of the process span too.
//!
//! The program prints the trace as a tree and exits non-zero if that nesting is not what it
//! got. It needs RabbitMQ (`AMQP_URL`, default loopback) and uses a queue of its own.
//!
//! ```text
//! scripts/start-brokers.sh rabbitmq
//! cargo run -p mqtrace-examples --bin tracing-only
//! ```
#![forbid(unsafe_code)]

use futures_util::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, ConnectionProperties};
use mqtrace_examples::telemetry::{JsonLinesExporter, resource};
use mqtrace_examples::trace_view::{SpanRecord, read_dir};
use mqtrace_examples::{Error, env};
use mqtrace_lapin::prelude::*;
use opentelemetry::trace::TracerProvider as _;
use opentelemetry_sdk::trace::SdkTracerProvider;
use std::process::ExitCode;
use std::time::Duration;
use tracing_subscriber::layer::SubscriberExt as _;

fn main() -> ExitCode {
    match run_program() {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[tracing-only] {e}");
            ExitCode::FAILURE
        }
    }
}

fn run_program() -> Result<(), Error> {
    let dir = std::env::temp_dir().join(format!("mqtrace-tracing-only-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);

    // The application's telemetry: one provider, given to its tracing layer ...
    let provider = SdkTracerProvider::builder()
        .with_resource(resource("tracing-only"))
        .with_simple_exporter(JsonLinesExporter::create(&dir, "tracing-only")?)
        .build();
    let subscriber = tracing_subscriber::registry()
        .with(tracing_opentelemetry::layer().with_tracer(provider.tracer("tracing-only")));
    tracing::subscriber::set_global_default(subscriber)?;

    // ... and to mqtrace (nothing is installed as OpenTelemetry's global provider).
    let config = mqtrace::Config::new().with_tracer_provider(provider.clone());
    let queue = format!("tracing-only.{}", std::process::id());
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?
        .block_on(async {
            tokio::time::timeout(Duration::from_secs(30), pipeline(config, &queue))
                .await
                .map_err(|_| Error::from("no delivery within 30 s"))?
        });
    provider.shutdown()?;
    result?;

    let spans = read_dir(&dir)?;
    let _ = std::fs::remove_dir_all(&dir);
    print_tree(&spans);
    check(&spans, &queue)
}

async fn pipeline(config: mqtrace::Config, queue: &str) -> Result<(), Error> {
    let conn = TracedConnection::connect(&env::amqp_url(), ConnectionProperties::default(), config)
        .await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .queue_declare(
            queue.into(),
            QueueDeclareOptions::default(),
            FieldTable::default(),
        )
        .await?;

    place_order(&channel, queue, "o-1").await?;

    let mut consumer = channel
        .basic_consume(
            queue.into(),
            "tracing-only".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let delivery = consumer
        .next()
        .await
        .ok_or("the consumer was cancelled")??;
    // The handler's tracing spans become children of mqtrace's process span.
    delivery.in_span(handle(delivery.data.clone())).await?;
    delivery.ack(BasicAckOptions::default()).await?;
    channel
        .queue_delete(queue.into(), QueueDeleteOptions::default())
        .await?;
    Ok(())
}

/// The application's own code, traced with `tracing` only.
#[tracing::instrument(name = "place order", skip(channel))]
async fn place_order(channel: &TracedChannel, queue: &str, id: &str) -> Result<(), Error> {
    tracing::info!("publishing");
    channel
        .basic_publish(
            "".into(),
            queue.into(),
            BasicPublishOptions::default(),
            id.as_bytes(),
            BasicProperties::default(),
        )
        .await? // mqtrace's publish span: a child of "place order"
        .await?; // ends at the broker's confirm
    Ok(())
}

#[tracing::instrument(name = "handle order", skip(body), fields(bytes = body.len()))]
async fn handle(body: Vec<u8>) -> Result<(), Error> {
    reserve_stock(&String::from_utf8_lossy(&body)).await;
    Ok(())
}

#[tracing::instrument(name = "reserve stock")]
async fn reserve_stock(order: &str) {
    tokio::time::sleep(Duration::from_millis(2)).await;
}

fn print_tree(spans: &[SpanRecord]) {
    fn walk(spans: &[SpanRecord], parent: Option<&str>, depth: usize) {
        for s in spans
            .iter()
            .filter(|s| s.parent_span_id.as_deref() == parent)
        {
            println!("{:indent$}{} ({})", "", s.name, s.kind, indent = depth * 2);
            walk(spans, Some(&s.span_id), depth + 1);
        }
    }
    walk(spans, None, 0);
}

fn check(spans: &[SpanRecord], queue: &str) -> Result<(), Error> {
    let one = |name: &str| -> Result<&SpanRecord, Error> {
        let found: Vec<_> = spans.iter().filter(|s| s.name == name).collect();
        match found.as_slice() {
            [s] => Ok(s),
            _ => Err(format!("expected one span {name:?}, found {}", found.len()).into()),
        }
    };
    let child_of = |child: &SpanRecord, parent: &SpanRecord| -> Result<(), Error> {
        if child.parent_span_id.as_deref() == Some(parent.span_id.as_str())
            && child.trace_id == parent.trace_id
        {
            Ok(())
        } else {
            Err(format!("{:?} is not a child of {:?}", child.name, parent.name).into())
        }
    };
    let place = one("place order")?;
    let publish = one(&format!("publish {queue}"))?;
    let process = one(&format!("process {queue}"))?;
    let handle = one("handle order")?;
    let reserve = one("reserve stock")?;
    let ack = one(&format!("ack {queue}"))?;
    child_of(publish, place)?;
    child_of(process, publish)?;
    child_of(handle, process)?;
    child_of(reserve, handle)?;
    child_of(ack, process)?;
    println!("check passed: one trace, tracing spans and mqtrace's nested both ways");
    Ok(())
}
