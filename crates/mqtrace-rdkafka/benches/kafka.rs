//! What tracing costs per message on Kafka, measured three ways in one run against a
//! Kafka-protocol broker (`KAFKA_BOOTSTRAP_SERVERS`, default 127.0.0.1:9092):
//!
//! - `raw`: rdkafka's `FutureProducer` / `StreamConsumer` alone;
//! - `hand-written`: the instrumentation people write by hand today (a span with its attributes,
//!   the global W3C propagator injecting into a `HashMap`, copied into `OwnedHeaders`; on consume
//!   the reverse, plus a process span linked to the producer);
//! - `mqtrace`: `TracedFutureProducer` / `TracedStreamConsumer`.
//!
//! Spans go through the SDK's batch processor into an exporter that drops them, so the cost is
//! instrumentation, not export. Rounds are interleaved and the best of each is kept.
//!
//! `cargo bench -p mqtrace-rdkafka --bench kafka [-- MESSAGES]`

use mqtrace::Config;
use mqtrace_rdkafka::{TracedFutureProducer, TracedStreamConsumer};
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, Tracer, TracerProvider};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use rdkafka::ClientConfig;
use rdkafka::Message;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::collections::HashMap;
use std::hint::black_box;
use std::time::{Duration, Instant};

fn provider() -> SdkTracerProvider {
    mqtrace::testing::discarding_provider(opentelemetry_sdk::trace::Sampler::AlwaysOn)
}

#[derive(Clone, Copy, PartialEq)]
enum Mode {
    Raw,
    HandWritten,
    Mqtrace,
}

impl Mode {
    fn name(self) -> &'static str {
        match self {
            Mode::Raw => "raw rdkafka",
            Mode::HandWritten => "hand-written",
            Mode::Mqtrace => "mqtrace",
        }
    }
}

fn handwritten_headers(tracer: &SdkTracer, topic: &str) -> (Context, OwnedHeaders) {
    let span = tracer
        .span_builder(format!("send {topic}"))
        .with_kind(SpanKind::Producer)
        .with_attributes(vec![
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 9092_i64),
        ])
        .start(tracer);
    let cx = Context::current_with_span(span);
    let mut map: HashMap<String, String> = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut map));
    let mut headers = OwnedHeaders::new_with_capacity(map.len());
    for (k, v) in &map {
        headers = headers.insert(Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    (cx, headers)
}

async fn produce(
    mode: Mode,
    raw: &FutureProducer,
    traced: &TracedFutureProducer,
    tracer: &SdkTracer,
    topic: &str,
    n: u32,
) -> Duration {
    let body = [7_u8; 128];
    let start = Instant::now();
    let mut pending = Vec::with_capacity(1000);
    let mut spans = Vec::with_capacity(1000);
    for i in 0..n {
        let key = i.to_string();
        let record = FutureRecord::to(topic).key(&key).payload(&body[..]);
        match mode {
            Mode::Raw => match raw.send_result(record) {
                Ok(f) => pending.push(futures_util::future::Either::Left(f)),
                Err((e, _)) => panic!("send: {e}"),
            },
            Mode::HandWritten => {
                let (cx, headers) = handwritten_headers(tracer, topic);
                match raw.send_result(record.headers(headers)) {
                    Ok(f) => pending.push(futures_util::future::Either::Left(f)),
                    Err((e, _)) => panic!("send: {e}"),
                }
                spans.push(cx);
            }
            Mode::Mqtrace => match traced.send_result(record) {
                Ok(f) => pending.push(futures_util::future::Either::Right(f)),
                Err((e, _)) => panic!("send: {e}"),
            },
        }
        if pending.len() == 1000 {
            drain(&mut pending, &mut spans).await;
        }
    }
    drain(&mut pending, &mut spans).await;
    start.elapsed()
}

async fn drain<A, B>(
    pending: &mut Vec<futures_util::future::Either<A, B>>,
    spans: &mut Vec<Context>,
) where
    A: std::future::Future + Unpin,
    B: std::future::Future + Unpin,
{
    for f in pending.drain(..) {
        match f {
            futures_util::future::Either::Left(f) => drop(black_box(f.await)),
            futures_util::future::Either::Right(f) => drop(black_box(f.await)),
        }
    }
    // Hand-written spans end at the delivery report, like mqtrace's.
    for cx in spans.drain(..) {
        cx.span().end();
    }
}

fn consumer_config(group: &str) -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", servers())
        .set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "true")
        .set("session.timeout.ms", "6000")
        .set("fetch.wait.max.ms", "10");
    c
}

fn servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

async fn consume(
    mode: Mode,
    topic: &str,
    n: u32,
    tracer: &SdkTracer,
    provider: &SdkTracerProvider,
) -> Duration {
    let group = format!("mqtrace-bench-{}-{}", topic, mode.name().replace(' ', "-"));
    let start = Instant::now();
    match mode {
        Mode::Mqtrace => {
            let c: TracedStreamConsumer = TracedStreamConsumer::create(
                &consumer_config(&group),
                Config::new().with_tracer_provider(provider.clone()),
            )
            .expect("consumer");
            c.subscribe(&[topic]).expect("subscribe");
            for _ in 0..n {
                let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
                    .await
                    .expect("message in time")
                    .expect("message");
                black_box(m.payload());
            }
        }
        Mode::Raw | Mode::HandWritten => {
            let c: StreamConsumer = consumer_config(&group).create().expect("consumer");
            c.subscribe(&[topic]).expect("subscribe");
            for _ in 0..n {
                let m = tokio::time::timeout(Duration::from_secs(30), c.recv())
                    .await
                    .expect("message in time")
                    .expect("message");
                if mode == Mode::HandWritten {
                    let mut map: HashMap<String, String> = HashMap::new();
                    if let Some(h) = m.headers() {
                        for h in h.iter() {
                            if let Some(v) = h.value.and_then(|v| std::str::from_utf8(v).ok()) {
                                map.insert(h.key.to_owned(), v.to_owned());
                            }
                        }
                    }
                    let parent = global::get_text_map_propagator(|p| p.extract(&map));
                    let link = Link::with_context(parent.span().span_context().clone());
                    let span = tracer
                        .span_builder(format!("process {topic}"))
                        .with_kind(SpanKind::Consumer)
                        .with_links(vec![link])
                        .with_attributes(vec![
                            KeyValue::new("messaging.system", "kafka"),
                            KeyValue::new("messaging.operation.name", "process"),
                            KeyValue::new("messaging.operation.type", "process"),
                            KeyValue::new("messaging.destination.name", topic.to_owned()),
                            KeyValue::new(
                                "messaging.destination.partition.id",
                                m.partition().to_string(),
                            ),
                            KeyValue::new("messaging.kafka.offset", m.offset()),
                            KeyValue::new("messaging.consumer.group.name", group.clone()),
                        ])
                        .start_with_context(tracer, &parent);
                    let cx = parent.with_span(span);
                    black_box(m.payload());
                    cx.span().end();
                } else {
                    black_box(m.payload());
                }
            }
        }
    }
    start.elapsed()
}

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    global::set_text_map_propagator(TraceContextPropagator::new());
    let n: u32 = std::env::args()
        .skip(1)
        .find_map(|a| a.parse().ok())
        .unwrap_or(20_000);
    let servers = servers();
    println!("== Kafka at {servers}: {n} messages of 128 bytes, sampled, acks=all");
    let provider = provider();
    let tracer = provider.tracer("bench");
    let mut pc = ClientConfig::new();
    pc.set("bootstrap.servers", &servers)
        .set("linger.ms", "5")
        .set("message.timeout.ms", "30000");
    let raw: FutureProducer = pc.create().unwrap_or_else(|e| {
        panic!(
            "Kafka not reachable at {servers}: {e}; start it with scripts/start-brokers.sh kafka"
        )
    });
    let traced =
        TracedFutureProducer::create(&pc, Config::new().with_tracer_provider(provider.clone()))
            .expect("traced producer");
    let admin: AdminClient<DefaultClientContext> = pc.create().expect("admin");
    let modes = [Mode::Raw, Mode::HandWritten, Mode::Mqtrace];
    let mut best = [(0.0_f64, 0.0_f64); 3];
    for round in 0..3 {
        for (i, mode) in modes.into_iter().enumerate() {
            let topic = format!("mqtrace-bench-{}-{round}-{i}", std::process::id());
            admin
                .create_topics(
                    &[NewTopic::new(&topic, 1, TopicReplication::Fixed(1))],
                    &AdminOptions::new(),
                )
                .await
                .expect("create topic");
            let p = produce(mode, &raw, &traced, &tracer, &topic, n).await;
            let c = consume(mode, &topic, n, &tracer, &provider).await;
            let rates = (
                f64::from(n) / p.as_secs_f64(),
                f64::from(n) / c.as_secs_f64(),
            );
            best[i].0 = best[i].0.max(rates.0);
            best[i].1 = best[i].1.max(rates.1);
            let _ = admin.delete_topics(&[&topic], &AdminOptions::new()).await;
        }
    }
    println!(
        "{:<14} {:>16} {:>10} {:>16} {:>10}",
        "client", "produce msg/s", "vs raw", "consume msg/s", "vs raw"
    );
    for (i, mode) in modes.into_iter().enumerate() {
        println!(
            "{:<14} {:>16.0} {:>10.2} {:>16.0} {:>10.2}",
            mode.name(),
            best[i].0,
            best[i].0 / best[0].0,
            best[i].1,
            best[i].1 / best[0].1
        );
    }
    let _ = provider.shutdown();
}
