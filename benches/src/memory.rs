//! Memory with the trace exporter unreachable: mqtrace publishes and consumes through
//! RabbitMQ while every span goes to an OTLP/HTTP exporter aimed at a closed port, and the
//! process's resident set size is read along the way.

use futures_util::StreamExt;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Connection, ConnectionProperties};
use mqtrace_lapin::TracedChannel;
use opentelemetry_otlp::WithExportConfig as _;
use opentelemetry_sdk::trace::{BatchConfigBuilder, BatchSpanProcessor, SdkTracerProvider};
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// The resident set size in KiB (Linux).
fn rss_kib() -> u64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with("VmRSS:"))
                .and_then(|l| l.split_whitespace().nth(1))
                .and_then(|v| v.parse().ok())
        })
        .unwrap_or(0)
}

/// A port nothing listens on.
fn closed_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map_or(1, |a| a.port())
}

/// Publishes and consumes `total` messages in chunks, reporting RSS after each tenth.
pub(crate) async fn run(total: u32) -> (String, f64) {
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .with_protocol(opentelemetry_otlp::Protocol::HttpBinary)
        .with_endpoint(format!("http://127.0.0.1:{}/v1/traces", closed_port()))
        .with_timeout(Duration::from_secs(2))
        .build()
        .expect("OTLP exporter");
    let provider = SdkTracerProvider::builder()
        .with_span_processor(
            BatchSpanProcessor::builder(exporter)
                .with_batch_config(
                    BatchConfigBuilder::default()
                        .with_max_queue_size(crate::telemetry::QUEUE)
                        .with_max_export_batch_size(crate::telemetry::EXPORT_BATCH)
                        .build(),
                )
                .build(),
        )
        .build();
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("RabbitMQ is not reachable at {url}: {e}. Start it with `scripts/start-brokers.sh rabbitmq`")
        });
    let raw = conn.create_channel().await.expect("channel");
    raw.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    raw.basic_qos(500, BasicQosOptions::default())
        .await
        .expect("qos");
    let ch = TracedChannel::new(
        raw,
        mqtrace_lapin::instrumentation(
            mqtrace::Config::new().with_tracer_provider(provider.clone()),
            Some(("127.0.0.1", 5672)),
        ),
    );
    let queue = format!("mqtrace-bench-memory-{}", std::process::id());
    ch.queue_declare(
        queue.as_str().into(),
        QueueDeclareOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("declare");
    let mut consumer = ch
        .basic_consume(
            queue.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("consume");
    let chunk = (total / 10).max(1);
    let started = Instant::now();
    let mut rows = Vec::new();
    let mut done = 0;
    while done < total {
        let mut confirms = Vec::with_capacity(1024);
        for _ in 0..chunk {
            confirms.push(
                ch.basic_publish(
                    "".into(),
                    queue.as_str().into(),
                    BasicPublishOptions::default(),
                    &[7; 128],
                    BasicProperties::default(),
                )
                .await
                .expect("publish"),
            );
            if confirms.len() == 1024 {
                for c in confirms.drain(..) {
                    c.await.expect("confirm");
                }
            }
        }
        for c in confirms.drain(..) {
            c.await.expect("confirm");
        }
        for _ in 0..chunk {
            let d = consumer.next().await.expect("open").expect("delivery");
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        done += chunk;
        rows.push((done, rss_kib(), started.elapsed()));
    }
    let _ = ch
        .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
        .await;
    let _ = conn.close(200, "bench done".into()).await;
    // Shutting down waits for the exporter's timeouts; leave it to the process exit.
    let mut out = format!(
        "{total} messages published (confirms) and consumed (one ack each) through RabbitMQ by mqtrace, every span sampled, \
         exported by OTLP/HTTP to a closed port (2 s timeout) through the README's batch queue (65 536). RSS after each tenth:\n\n\
         | messages | RSS MiB | growth since the first tenth MiB | elapsed s |\n| --- | --- | --- | --- |\n"
    );
    let first = rows.first().map_or(0, |r| r.1);
    for (n, rss, t) in &rows {
        let _ = writeln!(
            out,
            "| {n} | {:.1} | {:+.1} | {:.0} |",
            *rss as f64 / 1024.0,
            (*rss as f64 - first as f64) / 1024.0,
            t.as_secs_f64()
        );
    }
    let last = rows.last().map_or(first, |r| r.1);
    (out, (last as f64 - first as f64) / 1024.0)
}
