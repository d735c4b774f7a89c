//! mqtrace's metrics against the real brokers, read back through an in-memory metric reader:
//! exact counts, outcomes and attributes of a known workload; time in queue; pipeline latency
//! through RabbitMQ → Kafka → Pub/Sub.

use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    BasicRejectOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use mqtrace::attributes as attr;
use mqtrace::testing::{HistogramPoint, MetricPoint, SpanDataExt, TestTelemetry};
use mqtrace_integration_tests::kafka::{self, create_topic};
use mqtrace_integration_tests::pubsub::{self as ps, pubsub};
use mqtrace_integration_tests::support::{wait, within};
use mqtrace_integration_tests::{next_delivery, rabbitmq, unique};
use mqtrace_lapin::TracedChannel;
use mqtrace_lapin::prelude::*;
use opentelemetry::Value;
use opentelemetry::trace::TraceContextExt;
use rdkafka::consumer::CommitMode;
use rdkafka::producer::FutureRecord;
use std::time::Duration;

/// How much later than the injected delay a queue time or latency may be on this machine.
const BOUND: f64 = 3.0;

fn sum(points: &[MetricPoint], filter: impl Fn(&MetricPoint) -> bool) -> f64 {
    points.iter().filter(|p| filter(p)).map(|p| p.value).sum()
}

fn f64_attr(span: &opentelemetry_sdk::trace::SpanData, key: &str) -> f64 {
    match span.attr(key) {
        Some(Value::F64(v)) => *v,
        other => panic!("{key} on {}: {other:?}", span.name),
    }
}

async fn declare(ch: &TracedChannel, q: &str) {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    ch.queue_declare(q.into(), QueueDeclareOptions::default(), args)
        .await
        .expect("queue_declare");
}

async fn publish(ch: &TracedChannel, q: &str, body: &[u8]) {
    ch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        body,
        BasicProperties::default(),
    )
    .await
    .expect("basic_publish")
    .await
    .expect("confirm");
}

fn one_histogram<'a>(points: &'a [HistogramPoint], destination: &str) -> &'a HistogramPoint {
    let matching: Vec<_> = points
        .iter()
        .filter(|p| p.attr_str(attr::MESSAGING_DESTINATION_NAME) == Some(destination))
        .collect();
    assert_eq!(matching.len(), 1, "{points:?}");
    matching[0]
}

#[tokio::test]
async fn rabbitmq_workload_gives_exact_counts_outcomes_attributes_and_queue_time() {
    within(async {
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        let q = unique("metrics");
        declare(&ch, &q).await;
        for i in 0..5_u8 {
            publish(&ch, &q, &[i]).await;
        }
        let delay = Duration::from_millis(400);
        tokio::time::sleep(delay).await;

        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        // 0, 1, 2: ack; 3: requeued once, then acked; 4: rejected.
        let mut requeued = false;
        let mut settled = 0;
        while settled < 5 {
            let d = next_delivery(&mut consumer).await;
            match d.data[0] {
                3 if !requeued => {
                    requeued = true;
                    d.nack(BasicNackOptions {
                        requeue: true,
                        ..Default::default()
                    })
                    .await
                    .expect("nack");
                    continue;
                }
                4 => {
                    d.reject(BasicRejectOptions { requeue: false })
                        .await
                        .expect("reject");
                }
                _ => {
                    d.ack(BasicAckOptions::default()).await.expect("ack");
                }
            }
            settled += 1;
        }

        let sent = t.metric("messaging.client.sent.messages");
        assert_eq!(sum(&sent, |_| true), 5.0, "{sent:?}");
        assert!(
            sent.iter()
                .all(|p| p.attr_str(attr::MESSAGING_DESTINATION_NAME) == Some(q.as_str())),
            "{sent:?}"
        );
        let consumed = t.metric("messaging.client.consumed.messages");
        assert_eq!(sum(&consumed, |_| true), 6.0, "{consumed:?}");

        let outcomes = t.metric("mqtrace.message.outcomes");
        let n = |o: &str| sum(&outcomes, |p| p.attr_str(attr::OUTCOME) == Some(o));
        assert_eq!(
            (n("ack"), n("requeue"), n("reject")),
            (4.0, 1.0, 1.0),
            "{outcomes:?}"
        );
        assert_eq!(sum(&outcomes, |_| true), 6.0);
        for p in &outcomes {
            assert_eq!(
                p.attr_str(attr::MESSAGING_DESTINATION_NAME),
                Some(q.as_str())
            );
            assert_eq!(p.attr_str(attr::MESSAGING_SYSTEM), Some("rabbitmq"));
            let error = p.attr_str(attr::ERROR_TYPE);
            match p.attr_str(attr::OUTCOME) {
                Some("ack") => assert_eq!(error, None),
                Some(o) => assert_eq!(error, Some(o), "{p:?}"),
                None => panic!("{p:?}"),
            }
        }

        let queue_time = t.histogram("mqtrace.message.queue_time");
        let qt = one_histogram(&queue_time, &q);
        assert_eq!(qt.count, 6);
        let (min, max) = (qt.min.unwrap_or_default(), qt.max.unwrap_or_default());
        let d = delay.as_secs_f64();
        assert!(min >= d, "queue time {min} below the injected {d}");
        assert!(max < d + BOUND, "queue time {max}");
        let process = t.histogram("messaging.process.duration");
        assert_eq!(process.iter().map(|p| p.count).sum::<u64>(), 6);

        let spans = wait(&t, &format!("process {q}"), 6).await;
        for s in spans.named(&format!("process {q}")) {
            let v = f64_attr(s, attr::MESSAGE_QUEUE_TIME);
            assert!(v >= d && v < d + BOUND, "{v}");
            s.assert_attr_i64(attr::PIPELINE_STAGE, 1);
        }
    })
    .await;
}

#[tokio::test]
async fn a_temporary_reply_queue_is_one_unnamed_series_in_the_metrics() {
    within(async {
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("channel");
        let mut names = Vec::new();
        for _ in 0..2 {
            let q = ch
                .queue_declare(
                    "".into(),
                    QueueDeclareOptions {
                        exclusive: true,
                        auto_delete: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await
                .expect("server-named queue");
            let name = q.name().as_str().to_owned();
            assert!(name.starts_with("amq.gen-"), "{name}");
            ch.basic_publish(
                "".into(),
                name.as_str().into(),
                BasicPublishOptions::default(),
                b"reply",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("handed to the connection");
            names.push(name);
        }
        let sent = t.metric("messaging.client.sent.messages");
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].value, 2.0);
        // No name at all: server-named queues are not low-cardinality (semconv v1.44).
        assert_eq!(sent[0].attr_str(attr::MESSAGING_DESTINATION_NAME), None);
        assert_eq!(
            sent[0].attr(attr::MESSAGING_DESTINATION_TEMPORARY),
            Some(&Value::Bool(true))
        );
        assert_eq!(
            sent[0].attr(attr::MESSAGING_DESTINATION_ANONYMOUS),
            Some(&Value::Bool(true))
        );
        // The spans are named by their operation and keep the real names as an attribute.
        let spans = wait(&t, "publish", 2).await;
        let mut seen: Vec<String> = spans
            .named("publish")
            .iter()
            .filter_map(|s| {
                s.attr_str(attr::MESSAGING_DESTINATION_NAME)
                    .map(str::to_owned)
            })
            .collect();
        seen.sort();
        names.sort();
        assert_eq!(seen, names);
    })
    .await;
}

#[tokio::test]
async fn pipeline_latency_through_rabbitmq_kafka_and_pubsub_is_at_least_the_injected_delays() {
    within(async {
        let t = TestTelemetry::new();
        let delays = [
            Duration::from_millis(300),
            Duration::from_millis(400),
            Duration::from_millis(500),
        ];

        // Stage 1: RabbitMQ.
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        let q = unique("stage1");
        declare(&ch, &q).await;
        // Stage 2: Kafka.
        let topic = unique("stage2");
        create_topic(&topic, 1).await;
        let group = unique("stage2-group");
        let producer = kafka::producer(t.config());
        let kafka_consumer = kafka::consumer(t.config(), &group, &[&topic]);
        // Stage 3: Pub/Sub.
        let pubsub = pubsub().await;
        let ps_topic = pubsub.create_topic(&unique("stage3")).await;
        let ps_sub = pubsub
            .create_subscription(&unique("stage3-sub"), &ps_topic, |s| s)
            .await;
        let inst = pubsub.emulator.instrumentation(t.config());
        let publisher = mqtrace_pubsub::TracedPublisher::new(
            pubsub
                .emulator
                .publisher(&ps_topic)
                .build()
                .await
                .expect("publisher"),
            &ps_topic,
            inst.clone(),
        );

        publish(&ch, &q, b"order").await;
        tokio::time::sleep(delays[0]).await;
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        let d = next_delivery(&mut consumer).await;
        d.in_span(async {
            producer
                .send(
                    FutureRecord::<str, [u8]>::to(&topic).payload(&d.data[..]),
                    Duration::from_secs(10),
                )
                .await
                .unwrap_or_else(|(e, _)| panic!("send: {e}"));
        })
        .await;
        let trace_id = d.context().span().span_context().trace_id();
        d.ack(BasicAckOptions::default()).await.expect("ack");

        tokio::time::sleep(delays[1]).await;
        let m = kafka::next_message(&kafka_consumer).await;
        m.in_span(async {
            tokio::time::timeout(
                Duration::from_secs(20),
                publisher.publish(google_cloud_pubsub::model::Message::new().set_data("order")),
            )
            .await
            .expect("publish answered")
            .expect("publish");
        })
        .await;
        kafka_consumer
            .commit_message(&m, CommitMode::Sync)
            .expect("commit");
        drop(m);

        tokio::time::sleep(delays[2]).await;
        let client = pubsub
            .emulator
            .subscriber()
            .build()
            .await
            .expect("subscriber");
        let mut stream = mqtrace_pubsub::TracedSubscriber::new(client, inst)
            .subscribe(&ps_sub)
            .build();
        let (_msg, handler) = ps::next_message(&mut stream).await;
        assert_eq!(handler.context().span().span_context().trace_id(), trace_id);
        handler.ack();

        let total: f64 = delays.iter().map(Duration::as_secs_f64).sum();
        let sub_name = mqtrace_pubsub::short_name(&ps_sub).to_owned();
        let spans = wait(&t, &format!("subscribe {sub_name}"), 1).await;
        let last = spans.one(&format!("subscribe {sub_name}"));
        last.assert_attr_i64(attr::PIPELINE_STAGE, 3);
        let latency = f64_attr(last, attr::PIPELINE_LATENCY);
        assert!(
            latency >= total && latency < total + 3.0 * BOUND,
            "latency {latency}, injected {total}"
        );
        let kafka_stage = spans.one(&format!("process {topic}"));
        kafka_stage.assert_attr_i64(attr::PIPELINE_STAGE, 2);
        assert!(
            f64_attr(kafka_stage, attr::PIPELINE_LATENCY)
                >= delays[0].as_secs_f64() + delays[1].as_secs_f64()
        );
        assert!(f64_attr(kafka_stage, attr::MESSAGE_QUEUE_TIME) >= delays[1].as_secs_f64());
        assert!(f64_attr(last, attr::MESSAGE_QUEUE_TIME) >= delays[2].as_secs_f64());

        let hist = t.histogram("mqtrace.pipeline.latency");
        let at_last = one_histogram(&hist, &sub_name);
        assert_eq!(at_last.count, 1);
        assert!(at_last.min.unwrap_or_default() >= total);
        assert_eq!(
            at_last.attr_str(attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME),
            Some(sub_name.as_str())
        );
        let at_kafka = one_histogram(&hist, &topic);
        assert_eq!(
            at_kafka.attr_str(attr::MESSAGING_CONSUMER_GROUP_NAME),
            Some(group.as_str())
        );
        assert_eq!(
            at_kafka.attr_str(attr::MESSAGING_DESTINATION_PARTITION_ID),
            Some("0")
        );
        one_histogram(&hist, &q);
    })
    .await;
}

#[tokio::test]
async fn retries_and_dead_letters_are_outcomes_and_a_retry_keeps_the_pipeline() {
    use mqtrace::retry::HandlerError;
    use mqtrace_integration_tests::support::fast;
    use mqtrace_lapin::RetryQueues;
    within(async {
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirms");
        let q = unique("metrics-retry");
        declare(&ch, &q).await;
        let retries = RetryQueues::declare(ch.clone(), &q, fast(3))
            .await
            .expect("declare retry queues");
        publish(&ch, &q, b"flaky").await;
        publish(&ch, &q, b"poison").await;
        let delay = Duration::from_millis(300);
        tokio::time::sleep(delay).await;
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        // flaky: fails once (retry), then succeeds; poison: dead-lettered at once.
        for _ in 0..3 {
            let d = next_delivery(&mut consumer).await;
            retries
                .handle(d, async |d| match (&d.data[..], d.attempt()) {
                    (b"poison", _) => Err(HandlerError::permanent("unparseable")),
                    (_, 1) => Err(HandlerError::transient("unavailable")),
                    _ => Ok(()),
                })
                .await
                .expect("carried out");
        }

        let outcomes = t.metric("mqtrace.message.outcomes");
        let on_q = |o: &str| {
            sum(&outcomes, |p| {
                p.attr_str(attr::OUTCOME) == Some(o)
                    && p.attr_str(attr::MESSAGING_DESTINATION_NAME) == Some(q.as_str())
            })
        };
        assert_eq!(
            (on_q("ack"), on_q("retry"), on_q("dead_letter")),
            (1.0, 1.0, 1.0),
            "{outcomes:?}"
        );
        for o in ["retry", "dead_letter"] {
            assert!(
                outcomes.iter().any(|p| p.attr_str(attr::OUTCOME) == Some(o)
                    && p.attr_str(attr::ERROR_TYPE).is_some()),
                "{o} has an error.type: {outcomes:?}"
            );
        }

        let spans = wait(&t, &format!("process {q}"), 3).await;
        let processes = spans.named(&format!("process {q}"));
        let d = delay.as_secs_f64();
        for p in &processes {
            // The retry is the same hop again, and keeps the origin: its latency counts from
            // the first publish, so it too is at least the delay before the first attempt.
            p.assert_attr_i64(attr::PIPELINE_STAGE, 1);
            let latency = f64_attr(p, attr::PIPELINE_LATENCY);
            assert!(latency >= d && latency < d + BOUND, "{latency}");
        }
        let second = processes
            .iter()
            .find(|p| p.attr_i64(attr::DELIVERY_ATTEMPT) == Some(2))
            .expect("the retried attempt");
        let first_flaky = processes
            .iter()
            .filter(|p| p.attr_i64(attr::DELIVERY_ATTEMPT) == Some(1))
            .map(|p| f64_attr(p, attr::PIPELINE_LATENCY))
            .fold(f64::INFINITY, f64::min);
        assert!(f64_attr(second, attr::PIPELINE_LATENCY) > first_flaky);
    })
    .await;
}
