//! Production consumer patterns against the real brokers: a consumer loop inside a span, bulk
//! settlement, worker pools, and concurrent handlers with a large prefetch. What each test
//! checks is what a user sees in Jaeger: every message in its producer's trace, its handler
//! spans under its own process span, one outcome per message.
//!
//! Every message is produced under its own root span `produce` (attribute `msg` = the
//! message's number, also its payload), so each message is its own trace.

use futures_util::StreamExt;
use google_cloud_pubsub::model::Message as PubSubMessage;
use lapin::BasicProperties;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use mqtrace::Traced;
use mqtrace::testing::{SpanDataExt, Spans, TestTelemetry};
use mqtrace_integration_tests::pubsub::{PubSub, next_message as next_pubsub, pubsub};
use mqtrace_integration_tests::{kafka, next_delivery, rabbitmq, unique};
use mqtrace_lapin::{TracedChannel, TracedConsumer, TracedDelivery};
use mqtrace_pubsub::{TracedHandler, TracedMessageStream, TracedPublisher, TracedSubscriber};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{Span as _, SpanContext, TraceContextExt, TraceId, Tracer as _};
use opentelemetry::trace::{SpanId, TracerProvider as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::trace::SpanData;
use rdkafka::Message as _;
use rdkafka::consumer::CommitMode;
use rdkafka::producer::FutureRecord;
use std::collections::{HashMap, HashSet};
use std::future::Future;
use std::sync::Arc;
use std::time::Duration;
use tracing::Instrument as _;
use tracing::instrument::WithSubscriber as _;
use tracing_subscriber::layer::SubscriberExt as _;

/// Runs a test body with an overall time limit.
async fn within<F: Future<Output = ()>>(body: F) {
    if tokio::time::timeout(Duration::from_secs(150), body)
        .await
        .is_err()
    {
        panic!("test did not finish within 150 s");
    }
}

/// A `tracing` dispatcher whose spans go through tracing-opentelemetry to `t`.
fn dispatch(t: &TestTelemetry) -> tracing::Dispatch {
    tracing::Dispatch::new(
        tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(t.provider().tracer("tracing"))),
    )
}

/// The root span message `i` is produced under.
fn produce_root(t: &TestTelemetry, i: usize) -> Context {
    let tracer = t.provider().tracer("producer");
    let span = tracer
        .span_builder("produce")
        .with_attributes([KeyValue::new("msg", i64::try_from(i).unwrap_or(i64::MAX))])
        .start(&tracer);
    Context::current_with_span(span)
}

/// Runs `fut` (the production of message `i`) under its own root span.
async fn produced<F: Future>(t: &TestTelemetry, i: usize, fut: F) -> F::Output {
    let cx = produce_root(t, i);
    let out = fut.with_context(cx.clone()).await;
    cx.span().end();
    out
}

/// The message number a handler reads from the payload.
fn msg_of(payload: &[u8]) -> i64 {
    std::str::from_utf8(payload)
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| panic!("payload {payload:?} is not a message number"))
}

/// What every handler does: a `tracing` span and an OpenTelemetry span, across awaits, each
/// tagged with the message number it handles. `delay_ms` makes concurrent handlers overlap.
async fn handle(t: &TestTelemetry, msg: i64, delay_ms: u64) {
    async {
        tokio::time::sleep(Duration::from_millis(delay_ms)).await;
        tracing::info!("handling");
    }
    .instrument(tracing::info_span!("tracing handle", msg))
    .await;
    let tracer = t.provider().tracer("handler");
    let mut span = tracer
        .span_builder("otel handle")
        .with_attributes([KeyValue::new("msg", msg)])
        .start(&tracer);
    tokio::task::yield_now().await;
    tokio::time::sleep(Duration::from_millis(delay_ms / 2)).await;
    span.end();
}

async fn wait_until(t: &TestTelemetry, what: &str, done: impl Fn(&Spans) -> bool) -> Spans {
    t.wait_for(done, Duration::from_secs(30))
        .await
        .unwrap_or_else(|e| panic!("waiting for {what}: {e}"))
}

/// The ambient span a consumer loop runs in.
#[derive(Clone, Copy, Debug)]
enum Ambient {
    /// `#[tracing::instrument]` on the loop function (through tracing-opentelemetry).
    Tracing,
    /// An OpenTelemetry span made current around the loop.
    Otel,
}

impl Ambient {
    fn name(self) -> &'static str {
        match self {
            Self::Tracing => "tracing loop",
            Self::Otel => "otel loop",
        }
    }

    async fn run<F: Future>(self, t: &TestTelemetry, fut: F) -> F::Output {
        match self {
            Self::Tracing => in_tracing_span(fut).with_subscriber(dispatch(t)).await,
            Self::Otel => {
                let cx = Context::current_with_span(t.provider().tracer("app").start("otel loop"));
                let out = fut.with_context(cx.clone()).await;
                cx.span().end();
                out
            }
        }
    }
}

#[tracing::instrument(name = "tracing loop", skip_all)]
async fn in_tracing_span<F: Future>(fut: F) -> F::Output {
    fut.await
}

/// Every `produce` root has exactly one `process` span in its trace, a child of the trace's
/// `producer` span, linked to the loop span `ambient` with `mqtrace.link.type = ambient`.
fn assert_each_message_in_its_producers_trace(
    spans: &Spans,
    producer: &str,
    process: &str,
    n: usize,
    ambient: &SpanContext,
) {
    let roots = spans.named("produce");
    assert_eq!(roots.len(), n);
    let traces: HashSet<TraceId> = roots.iter().map(|r| r.span_context.trace_id()).collect();
    assert_eq!(traces.len(), n, "each message is produced in its own trace");
    for root in roots {
        let trace = spans.in_trace(root.span_context.trace_id());
        let producer_span = trace.one(producer);
        producer_span.assert_child_of(root);
        let process_span = trace.one(process);
        process_span.assert_child_of(producer_span);
        let link = process_span
            .link_of_type("ambient")
            .unwrap_or_else(|| panic!("{process} does not link the loop span: {process_span:?}"));
        assert_eq!(link.span_context.span_id(), ambient.span_id());
        assert_eq!(link.span_context.trace_id(), ambient.trace_id());
    }
}

/// The checks of a worker pool or of concurrent handlers: `n` process spans, each exported
/// once (so ended once), each in its producer's trace as the child of its `producer` span,
/// with exactly one `tracing handle`, one `otel handle` (both for its own message) and one
/// `settle` span as children, ended with `outcome`; and no handler span anywhere else.
fn assert_handlers_under_their_own_process_span(
    spans: &Spans,
    producer: &str,
    process: &str,
    settle: &str,
    outcome: &str,
    n: usize,
) {
    let processes = spans.named(process);
    assert_eq!(processes.len(), n, "one process span per message");
    let ids: HashSet<SpanId> = processes.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(ids.len(), n, "every process span ends exactly once");
    for name in ["tracing handle", "otel handle"] {
        assert_eq!(spans.named(name).len(), n, "one {name:?} span per message");
    }
    let roots = spans.named("produce");
    assert_eq!(roots.len(), n);
    for root in roots {
        let msg = root.attr_i64("msg").expect("produce has msg");
        let trace = spans.in_trace(root.span_context.trace_id());
        let producer_span = trace.one(producer);
        producer_span.assert_child_of(root);
        let p = trace.one(process);
        p.assert_child_of(producer_span);
        p.assert_attr_str("mqtrace.outcome", outcome);
        assert!(!p.is_error(), "message {msg}: {p:?}");
        let children = spans.children_of(p);
        for name in ["tracing handle", "otel handle", settle] {
            let found: Vec<&&SpanData> = children.iter().filter(|c| c.name == name).collect();
            assert_eq!(
                found.len(),
                1,
                "message {msg}: {name:?} children of its process span: {found:?}"
            );
            if name != settle {
                assert_eq!(
                    found[0].attr_i64("msg"),
                    Some(msg),
                    "a handler span of another message hangs under message {msg}'s process span"
                );
            }
        }
    }
}

// ---------------------------------------------------------------------------------------------
// RabbitMQ

async fn rabbit_queue(ch: &TracedChannel) -> String {
    let q = unique("patterns");
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), args)
        .await
        .expect("queue_declare");
    q
}

async fn rabbit_publish(ch: &TracedChannel, q: &str, i: usize) {
    ch.basic_publish(
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        i.to_string().as_bytes(),
        BasicProperties::default(),
    )
    .await
    .expect("basic_publish")
    .await
    .expect("confirm");
}

async fn rabbit_produce(t: &TestTelemetry, ch: &TracedChannel, q: &str, n: usize) {
    for i in 0..n {
        produced(t, i, rabbit_publish(ch, q, i)).await;
    }
}

async fn rabbit_consume(ch: &TracedChannel, q: &str) -> TracedConsumer {
    ch.basic_consume(
        q.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("basic_consume")
}

/// Passive declare: how many messages are ready in `q`.
async fn rabbit_ready(ch: &TracedChannel, q: &str) -> u32 {
    ch.queue_declare(
        q.into(),
        QueueDeclareOptions {
            passive: true,
            ..QueueDeclareOptions::default()
        },
        FieldTable::default(),
    )
    .await
    .expect("passive queue_declare")
    .message_count()
}

#[tokio::test]
async fn rabbitmq_consumer_loop_in_a_tracing_or_otel_span_keeps_every_message_in_its_producers_trace()
 {
    within(async {
        const N: usize = 3;
        for ambient in [Ambient::Tracing, Ambient::Otel] {
            let t = TestTelemetry::new();
            let conn = rabbitmq(t.config()).await;
            let ch = conn.create_channel().await.expect("create_channel");
            let q = rabbit_queue(&ch).await;
            rabbit_produce(&t, &ch, &q, N).await;
            let mut consumer = rabbit_consume(&ch, &q).await;
            ambient
                .run(&t, async {
                    for _ in 0..N {
                        let d = next_delivery(&mut consumer).await;
                        d.ack(BasicAckOptions::default()).await.expect("ack");
                    }
                })
                .await;
            let spans = wait_until(&t, "acks and the loop span", |s| {
                s.named(&format!("ack {q}")).len() == N && s.find(ambient.name()).is_some()
            })
            .await;
            let loop_span = spans.one(ambient.name()).span_context.clone();
            assert_each_message_in_its_producers_trace(
                &spans,
                &format!("publish {q}"),
                &format!("process {q}"),
                N,
                &loop_span,
            );
        }
    })
    .await;
}

#[tokio::test]
async fn rabbitmq_multiple_ack_and_nack_settle_and_record_every_delivery_they_cover() {
    within(async {
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("create_channel");
        let q = rabbit_queue(&ch).await;
        rabbit_produce(&t, &ch, &q, 8).await;
        let mut consumer = rabbit_consume(&ch, &q).await;
        let mut d = Vec::new();
        for _ in 0..8 {
            d.push(next_delivery(&mut consumer).await);
        }
        let process_of = |spans: &Spans, d: &TracedDelivery| {
            spans
                .by_id(d.span_context().span_id())
                .cloned()
                .expect("process span exported")
        };

        // Message 1 is acked on its own first: the bulk ack must not record it again.
        d[1].ack(BasicAckOptions::default()).await.expect("ack 1");
        // A multiple ack on delivery 3 covers 0, 2 and 3.
        d[3].ack(BasicAckOptions { multiple: true })
            .await
            .expect("multiple ack");
        // Through the channel, by tag: a multiple ack of everything up to 5 (4 and 5).
        ch.basic_ack(d[5].delivery_tag, BasicAckOptions { multiple: true })
            .await
            .expect("multiple ack by tag");
        // A multiple nack (requeue) on delivery 7 covers 6 and 7.
        d[7].nack(BasicNackOptions {
            multiple: true,
            requeue: true,
        })
        .await
        .expect("multiple nack");
        let ack = format!("ack {q}");
        let nack = format!("nack {q}");
        let spans = wait_until(&t, "the settles", |s| {
            s.named(&ack).len() == 3 && s.named(&nack).len() == 1
        })
        .await;

        let p: Vec<SpanData> = d.iter().map(|d| process_of(&spans, d)).collect();
        let settle_under = |i: usize, name: &str| -> SpanData {
            let found: Vec<&SpanData> = spans
                .children_of(&p[i])
                .into_iter()
                .filter(|s| s.name == name)
                .collect();
            assert_eq!(found.len(), 1, "{name} spans under delivery {i}");
            found[0].clone()
        };
        // Delivery 1's own ack: no batch.
        assert!(
            settle_under(1, &ack)
                .attr("messaging.batch.message_count")
                .is_none()
        );
        // One settle span per bulk operation, on the delivery that settled, linking the others
        // (and each of them linking back); the covered ones have no settle span of their own.
        for (on, covered, name) in [
            (3, &[0, 2][..], &ack),
            (5, &[4][..], &ack),
            (7, &[6][..], &nack),
        ] {
            let bulk = settle_under(on, name);
            assert_eq!(
                bulk.attr_i64("messaging.batch.message_count"),
                Some(i64::try_from(covered.len() + 1).unwrap_or(0))
            );
            assert_eq!(bulk.links.len(), covered.len());
            for &i in covered {
                bulk.assert_links_to(&p[i].span_context);
                assert_eq!(
                    p[i].link_of_type("settle")
                        .map(|l| l.span_context.span_id()),
                    Some(bulk.span_context.span_id())
                );
                assert!(spans.children_of(&p[i]).is_empty(), "delivery {i}");
            }
        }
        for (i, p) in p.iter().enumerate() {
            let expected = if i >= 6 { "requeue" } else { "ack" };
            p.assert_attr("mqtrace.outcome", expected);
            // A requeue is a failed handling (error status); an ack is not.
            assert_eq!(p.is_error(), expected == "requeue", "delivery {i}: {p:?}");
        }
        // Every process span ended once, at its settle: dropping the deliveries adds nothing.
        drop(d);
        assert_eq!(t.spans().named(&format!("process {q}")).len(), 8);

        // What the broker did: 6 and 7 come back (redelivered), and nothing else; a multiple
        // ack of tag 0 through the channel (every outstanding delivery) settles both.
        let again = [
            next_delivery(&mut consumer).await,
            next_delivery(&mut consumer).await,
        ];
        let mut bodies: Vec<i64> = again.iter().map(|d| msg_of(&d.data)).collect();
        bodies.sort_unstable();
        assert_eq!(bodies, [6, 7]);
        assert!(again.iter().all(|d| d.redelivered));
        ch.basic_ack(0, BasicAckOptions { multiple: true })
            .await
            .expect("ack all outstanding");
        drop(again);
        drop(consumer);
        assert_eq!(rabbit_ready(&ch, &q).await, 0);
        let spans = wait_until(&t, "the redelivery ack", |s| s.named(&ack).len() == 4).await;
        let processes = spans.named(&format!("process {q}"));
        assert_eq!(processes.len(), 10);
        assert!(
            processes.iter().all(|p| p
                .attr_str("mqtrace.outcome")
                .is_some_and(|o| o != "unsettled")),
            "no delivery settled in bulk ends as unsettled"
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_worker_pool_of_4_tasks_keeps_200_messages_each_in_its_own_trace() {
    within(async {
        const N: usize = 200;
        let t = Arc::new(TestTelemetry::new());
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("create_channel");
        let q = rabbit_queue(&ch).await;
        rabbit_produce(&t, &ch, &q, N).await;
        let mut consumer = rabbit_consume(&ch, &q).await;

        let (tx, rx) = tokio::sync::mpsc::channel::<TracedDelivery>(8);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let receiver = tokio::spawn(async move {
            for _ in 0..N {
                let d = next_delivery(&mut consumer).await;
                tx.send(d).await.expect("a worker is listening");
            }
        });
        let workers: Vec<_> = (0..4_u64)
            .map(|w| {
                let (rx, t) = (rx.clone(), t.clone());
                let sub = dispatch(&t);
                tokio::spawn(
                    async move {
                        loop {
                            let next = rx.lock().await.recv().await;
                            let Some(d) = next else { break };
                            let msg = msg_of(&d.data);
                            d.in_span(handle(&t, msg, w)).await;
                            d.ack(BasicAckOptions::default()).await.expect("ack");
                        }
                    }
                    .with_subscriber(sub),
                )
            })
            .collect();
        receiver.await.expect("receiver");
        for w in workers {
            w.await.expect("worker");
        }
        let ack = format!("ack {q}");
        let spans = wait_until(&t, "200 acks", |s| s.named(&ack).len() == N).await;
        assert_handlers_under_their_own_process_span(
            &spans,
            &format!("publish {q}"),
            &format!("process {q}"),
            &ack,
            "ack",
            N,
        );
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rabbitmq_prefetch_100_with_concurrent_handlers_never_crosses_spans() {
    within(async {
        const N: usize = 100;
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("create_channel");
        ch.basic_qos(100, BasicQosOptions::default())
            .await
            .expect("qos");
        let q = rabbit_queue(&ch).await;
        rabbit_produce(&t, &ch, &q, N).await;
        let consumer = rabbit_consume(&ch, &q).await;
        let t = &t;
        consumer
            .take(N)
            .map(|d| async move {
                let d = d.expect("delivery");
                let msg = msg_of(&d.data);
                // Later messages finish first: the handlers overlap and finish out of order.
                let delay = 2 + u64::try_from(100 - msg).unwrap_or(0) % 17;
                d.in_span(handle(t, msg, delay)).await;
                d.ack(BasicAckOptions::default()).await.expect("ack");
            })
            .buffer_unordered(N)
            .collect::<Vec<()>>()
            .with_subscriber(dispatch(t))
            .await;
        let ack = format!("ack {q}");
        let spans = wait_until(t, "100 acks", |s| s.named(&ack).len() == N).await;
        assert_handlers_under_their_own_process_span(
            &spans,
            &format!("publish {q}"),
            &format!("process {q}"),
            &ack,
            "ack",
            N,
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Kafka

#[tokio::test]
async fn kafka_consumer_loop_in_a_tracing_or_otel_span_keeps_every_message_in_its_producers_trace()
{
    within(async {
        const N: usize = 3;
        for ambient in [Ambient::Tracing, Ambient::Otel] {
            let t = TestTelemetry::new();
            let topic = unique("patterns");
            kafka::create_topic(&topic, 1).await;
            let producer = kafka::producer(t.config());
            for i in 0..N {
                let payload = i.to_string();
                produced(&t, i, async {
                    producer
                        .send(
                            FutureRecord::<str, str>::to(&topic)
                                .key("k")
                                .payload(payload.as_str()),
                            Duration::from_secs(10),
                        )
                        .await
                        .unwrap_or_else(|(e, _)| panic!("send: {e}"));
                })
                .await;
            }
            let consumer = kafka::consumer(t.config(), &unique("group"), &[&topic]);
            ambient
                .run(&t, async {
                    for _ in 0..N {
                        let m = kafka::next_message(&consumer).await;
                        consumer
                            .commit_message(&m, CommitMode::Sync)
                            .expect("commit");
                    }
                })
                .await;
            let spans = wait_until(&t, "commits and the loop span", |s| {
                s.named(&format!("commit {topic}")).len() == N && s.find(ambient.name()).is_some()
            })
            .await;
            let loop_span = spans.one(ambient.name()).span_context.clone();
            assert_each_message_in_its_producers_trace(
                &spans,
                &format!("send {topic}"),
                &format!("process {topic}"),
                N,
                &loop_span,
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_100_concurrent_handlers_never_cross_spans() {
    within(async {
        const N: usize = 100;
        let t = TestTelemetry::new();
        let topic = unique("patterns");
        kafka::create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        let payloads: Vec<String> = (0..N).map(|i| i.to_string()).collect();
        let sends = payloads.iter().enumerate().map(|(i, payload)| {
            let (producer, topic, t) = (&producer, &topic, &t);
            produced(t, i, async move {
                producer
                    .send(
                        FutureRecord::<str, str>::to(topic)
                            .key("k")
                            .payload(payload.as_str()),
                        Duration::from_secs(10),
                    )
                    .await
                    .unwrap_or_else(|(e, _)| panic!("send: {e}"));
            })
        });
        futures_util::future::join_all(sends).await;
        let consumer = kafka::consumer(t.config(), &unique("group"), &[&topic]);
        let (consumer, t) = (&consumer, &t);
        tokio::time::timeout(
            Duration::from_secs(60),
            consumer
                .stream()
                .take(N)
                .map(|m| async move {
                    let m = m.expect("message");
                    let msg = msg_of(m.payload().expect("a payload"));
                    let delay = 2 + u64::try_from(100 - msg).unwrap_or(0) % 17;
                    m.in_span(handle(t, msg, delay)).await;
                    consumer
                        .commit_message(&m, CommitMode::Sync)
                        .expect("commit");
                })
                .buffer_unordered(N)
                .collect::<Vec<()>>()
                .with_subscriber(dispatch(t)),
        )
        .await
        .expect("100 messages within 60 s");
        let commit = format!("commit {topic}");
        let spans = wait_until(t, "100 commits", |s| s.named(&commit).len() == N).await;
        assert_handlers_under_their_own_process_span(
            &spans,
            &format!("send {topic}"),
            &format!("process {topic}"),
            &commit,
            "ack",
            N,
        );
    })
    .await;
}

// ---------------------------------------------------------------------------------------------
// Pub/Sub

struct PubSubSetup {
    ps: PubSub,
    topic: String,
    sub: String,
}

impl PubSubSetup {
    async fn new() -> Self {
        let ps = pubsub().await;
        let topic = ps.create_topic(&unique("patterns")).await;
        let sub = ps
            .create_subscription(&unique("patterns"), &topic, |s| s)
            .await;
        Self { ps, topic, sub }
    }

    fn short_sub(&self) -> &str {
        mqtrace_pubsub::short_name(&self.sub)
    }

    fn short_topic(&self) -> &str {
        mqtrace_pubsub::short_name(&self.topic)
    }

    async fn produce(&self, t: &TestTelemetry, n: usize) {
        let raw = self
            .ps
            .emulator
            .publisher(&self.topic)
            .build()
            .await
            .expect("publisher");
        let publisher = TracedPublisher::new(
            raw,
            &self.topic,
            self.ps.emulator.instrumentation(t.config()),
        );
        let sends = (0..n).map(|i| {
            let publisher = &publisher;
            produced(t, i, async move {
                tokio::time::timeout(
                    Duration::from_secs(20),
                    publisher.publish(PubSubMessage::new().set_data(i.to_string())),
                )
                .await
                .expect("publish answered")
                .expect("publish");
            })
        });
        futures_util::future::join_all(sends).await;
    }

    async fn stream(&self, t: &TestTelemetry) -> TracedMessageStream {
        let client = self
            .ps
            .emulator
            .subscriber()
            .build()
            .await
            .expect("subscriber");
        TracedSubscriber::new(client, self.ps.emulator.instrumentation(t.config()))
            .subscribe(&self.sub)
            .set_max_outstanding_messages(1000)
            .build()
    }
}

#[tokio::test]
async fn pubsub_consumer_loop_in_a_tracing_or_otel_span_keeps_every_message_in_its_producers_trace()
{
    within(async {
        const N: usize = 3;
        for ambient in [Ambient::Tracing, Ambient::Otel] {
            let t = TestTelemetry::new();
            let s = PubSubSetup::new().await;
            s.produce(&t, N).await;
            let mut stream = s.stream(&t).await;
            ambient
                .run(&t, async {
                    for _ in 0..N {
                        let (_m, h) = next_pubsub(&mut stream).await;
                        h.ack();
                    }
                })
                .await;
            let ack = format!("ack {}", s.short_sub());
            let spans = wait_until(&t, "acks and the loop span", |sp| {
                sp.named(&ack).len() == N && sp.find(ambient.name()).is_some()
            })
            .await;
            let loop_span = spans.one(ambient.name()).span_context.clone();
            assert_each_message_in_its_producers_trace(
                &spans,
                &format!("send {}", s.short_topic()),
                &format!("subscribe {}", s.short_sub()),
                N,
                &loop_span,
            );
        }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_handlers_acked_out_of_order_and_nacked_while_leased_are_each_recorded_right() {
    within(async {
        const N: usize = 20;
        let t = Arc::new(TestTelemetry::new());
        let s = PubSubSetup::new().await;
        s.produce(&t, N).await;
        let mut stream = s.stream(&t).await;
        // Hold all 20 at once (their leases are being extended by the client), then settle
        // them from concurrent tasks, the last received first; every fifth is nacked.
        let mut held = Vec::new();
        for _ in 0..N {
            held.push(next_pubsub(&mut stream).await);
        }
        tokio::time::sleep(Duration::from_secs(2)).await;
        let tasks: Vec<_> = held
            .into_iter()
            .enumerate()
            .map(|(k, (m, h))| {
                let t = t.clone();
                let sub = dispatch(&t);
                tokio::spawn(
                    async move {
                        let msg = msg_of(&m.data);
                        let delay = u64::try_from(N - k).unwrap_or(0) * 15;
                        h.in_span(handle(&t, msg, delay)).await;
                        if msg % 5 == 0 { h.nack() } else { h.ack() }
                    }
                    .with_subscriber(sub),
                )
            })
            .collect();
        for task in tasks {
            task.await.expect("handler task");
        }
        // The nacked four come back; ack them.
        for _ in 0..N / 5 {
            let (m, h) = next_pubsub(&mut stream).await;
            assert_eq!(msg_of(&m.data) % 5, 0, "only nacked messages come back");
            h.ack();
        }
        let (ack, nack, process) = (
            format!("ack {}", s.short_sub()),
            format!("nack {}", s.short_sub()),
            format!("subscribe {}", s.short_sub()),
        );
        let spans = wait_until(&t, "the settles", |sp| {
            sp.named(&ack).len() == N && sp.named(&nack).len() == N / 5
        })
        .await;
        assert_eq!(spans.named(&process).len(), N + N / 5);
        let producer = format!("send {}", s.short_topic());
        for root in spans.named("produce") {
            let msg = root.attr_i64("msg").expect("msg");
            let trace = spans.in_trace(root.span_context.trace_id());
            let create = trace.one(&producer);
            let mut deliveries = trace.named(&process);
            deliveries.sort_by_key(|p| p.start_time);
            let expected: &[&str] = if msg % 5 == 0 {
                &["requeue", "ack"]
            } else {
                &["ack"]
            };
            assert_eq!(deliveries.len(), expected.len(), "message {msg}");
            for (p, outcome) in deliveries.iter().zip(expected) {
                p.assert_child_of(create);
                p.assert_attr_str("mqtrace.outcome", outcome);
                assert_eq!(p.is_error(), *outcome == "requeue", "message {msg}: {p:?}");
                let settles: Vec<_> = spans
                    .children_of(p)
                    .into_iter()
                    .filter(|c| c.name == ack || c.name == nack)
                    .collect();
                assert_eq!(
                    settles.len(),
                    1,
                    "message {msg}: one settle span per delivery"
                );
                let op = if *outcome == "ack" { &ack } else { &nack };
                assert_eq!(&settles[0].name, op);
            }
            let handlers: Vec<_> = spans
                .named("otel handle")
                .into_iter()
                .filter(|h| h.attr_i64("msg") == Some(msg))
                .collect();
            assert_eq!(handlers.len(), 1);
            handlers[0].assert_child_of(deliveries[0]);
        }
    })
    .await;
}

/// Runs `n` Pub/Sub messages through `dispatch_to`, which hands each to a handler task.
async fn pubsub_handlers_under_their_process_spans(n: usize, workers: Option<usize>, name: &str) {
    let t = Arc::new(TestTelemetry::new());
    let s = PubSubSetup::new().await;
    s.produce(&t, n).await;
    let mut stream = s.stream(&t).await;
    let work = |t: Arc<TestTelemetry>, m: PubSubMessage, h: TracedHandler, delay: u64| async move {
        let msg = msg_of(&m.data);
        h.in_span(handle(&t, msg, delay)).await;
        h.ack();
    };
    match workers {
        // A pool: one receiving loop, `w` worker tasks fed through a channel.
        Some(w) => {
            let (tx, rx) = tokio::sync::mpsc::channel::<(PubSubMessage, TracedHandler)>(8);
            let rx = Arc::new(tokio::sync::Mutex::new(rx));
            let pool: Vec<_> = (0..w)
                .map(|k| {
                    let (rx, t) = (rx.clone(), t.clone());
                    let sub = dispatch(&t);
                    tokio::spawn(
                        async move {
                            loop {
                                let next = rx.lock().await.recv().await;
                                let Some((m, h)) = next else { break };
                                work(t.clone(), m, h, u64::try_from(k).unwrap_or(0)).await;
                            }
                        }
                        .with_subscriber(sub),
                    )
                })
                .collect();
            for _ in 0..n {
                tx.send(next_pubsub(&mut stream).await)
                    .await
                    .expect("a worker is listening");
            }
            drop(tx);
            for p in pool {
                p.await.expect("worker");
            }
        }
        // One spawned task per message, all running at once.
        None => {
            let mut tasks = Vec::new();
            for k in 0..n {
                let (m, h) = next_pubsub(&mut stream).await;
                let delay = 2 + u64::try_from(n - k).unwrap_or(0) % 17;
                tasks.push(tokio::spawn(
                    work(t.clone(), m, h, delay).with_subscriber(dispatch(&t)),
                ));
            }
            for task in tasks {
                task.await.expect("handler task");
            }
        }
    }
    let ack = format!("ack {}", s.short_sub());
    let spans = wait_until(&t, name, |sp| sp.named(&ack).len() == n).await;
    assert_handlers_under_their_own_process_span(
        &spans,
        &format!("send {}", s.short_topic()),
        &format!("subscribe {}", s.short_sub()),
        &ack,
        "ack",
        n,
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_worker_pool_of_4_tasks_keeps_200_messages_each_in_its_own_trace() {
    within(pubsub_handlers_under_their_process_spans(
        200,
        Some(4),
        "200 acks",
    ))
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pubsub_100_outstanding_with_concurrent_handlers_never_crosses_spans() {
    within(pubsub_handlers_under_their_process_spans(
        100, None, "100 acks",
    ))
    .await;
}

/// Message spans as the brokers' tests produce them; with `cross`, message 0's handler spans
/// hang under message 1's process span.
fn fake_messages(cross: bool) -> TestTelemetry {
    let t = TestTelemetry::new();
    let tracer = t.provider().tracer("t");
    let mut by_msg = HashMap::new();
    for i in 0..2_i64 {
        let root = Context::current_with_span(
            tracer
                .span_builder("produce")
                .with_attributes([KeyValue::new("msg", i)])
                .start(&tracer),
        );
        let send = root.with_span(tracer.start_with_context("send", &root));
        let process = send.with_span(tracer.start_with_context("process", &send));
        process
            .span()
            .set_attribute(KeyValue::new("mqtrace.outcome", "ack"));
        tracer.start_with_context("ack", &process).end();
        by_msg.insert(i, (process, send, root));
    }
    for msg in 0..2_i64 {
        let under = if cross { 1 } else { msg };
        for name in ["tracing handle", "otel handle"] {
            tracer
                .span_builder(name)
                .with_attributes([KeyValue::new("msg", msg)])
                .start_with_context(&tracer, &by_msg[&under].0)
                .end();
        }
    }
    for (process, send, root) in by_msg.values() {
        process.span().end();
        send.span().end();
        root.span().end();
    }
    t
}

/// The handler check is what it says: it passes on well-parented spans and fails when a
/// handler span hangs under another message (a checker that cannot fail is a defect).
#[test]
fn the_handler_check_fails_when_a_handler_span_hangs_under_another_message() {
    let check = |t: &TestTelemetry| {
        let spans = t.spans();
        std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| {
            assert_handlers_under_their_own_process_span(&spans, "send", "process", "ack", "ack", 2)
        }))
    };
    assert!(check(&fake_messages(false)).is_ok());
    assert!(check(&fake_messages(true)).is_err());
}
