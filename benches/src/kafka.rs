//! Kafka through rdkafka: `FutureProducer::send_result` with 1000 delivery reports in flight;
//! a `StreamConsumer` assigned to the topic's one partition, auto-commit every second with
//! `enable.auto.offset.store=false` and one `store_offset_from_message` per handled message
//! (the at-least-once pattern), for every mode, alternating per round, fresh topic each time.

use crate::handwritten;
use crate::stats::{Meter, Mode, Runs, Sample, index, order};
use crate::telemetry::Counted;
use mqtrace_integration_tests::kafka::{client_config, create_topic};
use mqtrace_rdkafka::{TracedDeliveryFuture, TracedFutureProducer, TracedStreamConsumer};
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::{Sampler, SdkTracer};
use rdkafka::consumer::{Consumer, StreamConsumer};
use rdkafka::message::{Header, Headers, OwnedHeaders};
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::topic_partition_list::{Offset, TopicPartitionList};
use rdkafka::{ClientConfig, Message};

/// How the Kafka figures are made (for the report).
pub(crate) const METHOD: &str = "produce with `FutureProducer::send_result` (1000 delivery reports in flight, keyed records); \
consume with a `StreamConsumer` assigned to the topic's partition, `enable.auto.commit` every 1 s with \
`enable.auto.offset.store=false` and one `store_offset_from_message` per message (B and M record a settle span for it).";

const WINDOW: usize = 1000;
const BODY: [u8; 128] = [7; 128];

enum Pending {
    Raw(DeliveryFuture),
    Hand(DeliveryFuture, Context),
    Traced(TracedDeliveryFuture),
}

async fn drain(pending: &mut Vec<Pending>) {
    for p in pending.drain(..) {
        match p {
            Pending::Raw(f) => {
                let _ = f.await.expect("delivery report").expect("delivered");
            }
            Pending::Hand(f, cx) => {
                let report = f.await.expect("delivery report");
                match &report {
                    Ok(delivery) => {
                        let span = cx.span();
                        span.set_attribute(KeyValue::new(
                            "messaging.destination.partition.id",
                            delivery.partition.to_string(),
                        ));
                        span.set_attribute(KeyValue::new(
                            "messaging.kafka.offset",
                            delivery.offset,
                        ));
                        handwritten::end_send(&cx, None);
                    }
                    Err((e, _)) => handwritten::end_send(&cx, Some(e)),
                }
                let _ = report.expect("delivered");
            }
            Pending::Traced(f) => {
                let _ = f.await.expect("delivery report").expect("delivered");
            }
        }
    }
}

struct Clients {
    raw: FutureProducer,
    traced: [TracedFutureProducer; 3],
    configs: [mqtrace::Config; 3],
    tracer: SdkTracer,
}

fn slot(mode: Mode) -> usize {
    match mode {
        Mode::Mqtrace10 => 1,
        Mode::NoProvider => 2,
        _ => 0,
    }
}

async fn produce(c: &Clients, mode: Mode, topic: &str, n: u32) {
    let mut pending = Vec::with_capacity(WINDOW);
    for i in 0..n {
        let key = i.to_string();
        let record = FutureRecord::to(topic).key(&key).payload(&BODY[..]);
        let p = match mode {
            Mode::Raw => Pending::Raw(c.raw.send_result(record).map_err(|(e, _)| e).expect("send")),
            Mode::Headers => {
                let headers = OwnedHeaders::new_with_capacity(1).insert(Header {
                    key: "traceparent",
                    value: Some(handwritten::CONSTANT_TRACEPARENT.as_bytes()),
                });
                Pending::Raw(
                    c.raw
                        .send_result(record.headers(headers))
                        .map_err(|(e, _)| e)
                        .expect("send"),
                )
            }
            Mode::HandWritten => {
                let (cx, headers) = handwritten::kafka_send(&c.tracer, topic, &key, BODY.len());
                let f = c
                    .raw
                    .send_result(record.headers(headers))
                    .map_err(|(e, _)| e)
                    .expect("send");
                Pending::Hand(f, cx)
            }
            Mode::Mqtrace | Mode::Mqtrace10 | Mode::NoProvider => Pending::Traced(
                c.traced[slot(mode)]
                    .send_result(record)
                    .map_err(|(e, _)| e)
                    .expect("send"),
            ),
        };
        pending.push(p);
        if pending.len() == WINDOW {
            drain(&mut pending).await;
        }
    }
    drain(&mut pending).await;
}

fn consumer_config(group: &str) -> ClientConfig {
    let mut cfg = client_config();
    cfg.set("group.id", group)
        .set("enable.auto.commit", "true")
        .set("auto.commit.interval.ms", "1000")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest");
    cfg
}

fn assignment(topic: &str) -> TopicPartitionList {
    let mut tpl = TopicPartitionList::new();
    tpl.add_partition_offset(topic, 0, Offset::Beginning)
        .expect("partition");
    tpl
}

async fn consume(c: &Clients, mode: Mode, topic: &str, n: u32) {
    let group = format!("{topic}-group");
    match mode {
        Mode::Mqtrace | Mode::Mqtrace10 | Mode::NoProvider => {
            let consumer = TracedStreamConsumer::create(
                &consumer_config(&group),
                c.configs[slot(mode)].clone(),
            )
            .expect("consumer");
            consumer.assign(&assignment(topic)).expect("assign");
            for _ in 0..n {
                let m = consumer.recv().await.expect("message");
                consumer.store_offset_from_message(&m).expect("store");
            }
        }
        Mode::Raw | Mode::Headers | Mode::HandWritten => {
            let consumer: StreamConsumer = consumer_config(&group).create().expect("consumer");
            consumer.assign(&assignment(topic)).expect("assign");
            for _ in 0..n {
                let m = consumer.recv().await.expect("message");
                match mode {
                    Mode::HandWritten => {
                        let cx = handwritten::kafka_process(&c.tracer, &group, &m);
                        let settle =
                            handwritten::settle_span(&c.tracer, &cx, "commit", "kafka", topic);
                        let r = consumer.store_offset_from_message(&m);
                        handwritten::end_settle(settle, r.as_ref().err().map(|e| e as _));
                        cx.span().end();
                        r.expect("store");
                    }
                    Mode::Headers => {
                        let tp = m.headers().and_then(|h| {
                            h.iter()
                                .find(|h| h.key == "traceparent")
                                .and_then(|h| h.value)
                        });
                        std::hint::black_box(tp);
                        consumer.store_offset_from_message(&m).expect("store");
                    }
                    _ => consumer.store_offset_from_message(&m).expect("store"),
                }
            }
        }
    }
}

/// Every mode, `rounds` times, `n` messages each.
pub(crate) async fn run(n: u32, rounds: usize) -> Runs {
    let sampled = Counted::new(Sampler::AlwaysOn);
    let ten = Counted::ten_percent();
    let configs = [sampled.config(), ten.config(), mqtrace::Config::new()];
    let cfg = client_config();
    let traced = configs
        .clone()
        .map(|config| TracedFutureProducer::create(&cfg, config).expect("producer"));
    let clients = Clients {
        raw: cfg.create().expect("producer"),
        traced,
        configs,
        tracer: sampled.tracer(),
    };
    let mut runs = Runs::default();
    for round in 0..rounds {
        let mut samples = [Sample::default(); 6];
        for mode in order(round) {
            let topic = format!(
                "mqtrace-bench-{}-{round}-{}",
                std::process::id(),
                mode.letter()
            );
            create_topic(&topic, 1).await;
            let telemetry = if mode == Mode::Mqtrace10 {
                &ten
            } else {
                &sampled
            };
            let _ = telemetry.take_counts();
            let meter = Meter::start();
            produce(&clients, mode, &topic, n).await;
            let publish = meter.stop(n);
            let meter = Meter::start();
            consume(&clients, mode, &topic, n).await;
            let consume = meter.stop(n);
            // The last auto-commit (and its commit spans) land within the interval.
            tokio::time::sleep(std::time::Duration::from_millis(1500)).await;
            let spans = telemetry.take_counts();
            samples[index(mode)] = Sample {
                publish,
                consume,
                spans,
            };
        }
        runs.rounds.push(samples);
        eprintln!("kafka: round {} of {rounds} done", round + 1);
    }
    sampled.shutdown();
    ten.shutdown();
    runs
}
