//! mqtrace-lapin against a real RabbitMQ (`AMQP_URL`, default amqp://guest:guest@127.0.0.1:5672/%2f).
//!
//! Every test uses its own tracer provider and uniquely named queues, so they run in parallel.

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions,
    BasicRejectOptions, ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Confirmation, ExchangeKind};
use mqtrace::attributes as attr;
use mqtrace::testing::{SpanDataExt, TestTelemetry};
use mqtrace::{Config, ExistingContext, Outcome, ParentPolicy, Propagation, Trust};
use mqtrace_integration_tests::support::{
    self, assert_relay_send, fast, python_context, python_span, traceparent_of, wait, within,
};
use mqtrace_integration_tests::{next_delivery, rabbitmq, try_rabbitmq, unique};
use mqtrace_lapin::prelude::*;
use mqtrace_lapin::{TracedChannel, TracedConsumer};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue, Value};
use std::time::Duration;

/// Queues clean themselves up a minute after the test stops using them.
fn expiring(mut args: FieldTable) -> FieldTable {
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    args
}

async fn declare_queue(ch: &Channel, name: &str, args: FieldTable) {
    let durable = matches!(
        args.inner().get("x-queue-type"),
        Some(AMQPValue::LongString(t)) if t.as_bytes() == b"quorum"
    );
    ch.queue_declare(
        name.into(),
        QueueDeclareOptions {
            durable,
            ..QueueDeclareOptions::default()
        },
        expiring(args),
    )
    .await
    .expect("queue_declare");
}

async fn consume(ch: &TracedChannel, queue: &str) -> TracedConsumer {
    ch.basic_consume(
        queue.into(),
        "".into(),
        BasicConsumeOptions::default(),
        FieldTable::default(),
    )
    .await
    .expect("basic_consume")
}

async fn setup(
    config: impl FnOnce(Config) -> Config,
) -> (
    TestTelemetry,
    mqtrace_lapin::TracedConnection,
    TracedChannel,
) {
    let t = TestTelemetry::new();
    let conn = rabbitmq(config(t.config())).await;
    let ch = conn.create_channel().await.expect("create_channel");
    (t, conn, ch)
}

async fn publish(
    ch: &TracedChannel,
    exchange: &str,
    rk: &str,
    body: &[u8],
    props: BasicProperties,
) {
    ch.basic_publish(
        exchange.into(),
        rk.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("basic_publish")
    .await
    .expect("confirm");
}

/// Publishes with the raw lapin channel (no instrumentation): what another producer sends.
async fn publish_raw(ch: &Channel, queue: &str, body: &[u8], props: BasicProperties) {
    Channel::basic_publish(
        ch,
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        body,
        props,
    )
    .await
    .expect("basic_publish")
    .await
    .expect("confirm");
}

fn header_text(props: &BasicProperties, key: &str) -> Option<String> {
    match props.headers().as_ref()?.inner().get(key)? {
        AMQPValue::LongString(s) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        other => panic!("header {key} has type {other:?}, expected a LongString"),
    }
}

#[tokio::test]
async fn publish_then_consume_is_one_trace_with_exact_parents_links_names_kinds_and_attributes() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let ex = unique("orders");
        let q = unique("billing");
        ch.exchange_declare(
            ex.as_str().into(),
            ExchangeKind::Direct,
            ExchangeDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("exchange_declare");
        declare_queue(&ch, &q, FieldTable::default()).await;
        ch.queue_bind(
            q.as_str().into(),
            ex.as_str().into(),
            "created".into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await
        .expect("queue_bind");

        // The application's own span around the publish.
        let app_tracer = t.provider().tracer("app");
        let checkout = app_tracer.start("checkout");
        let cx = Context::current_with_span(checkout);
        let props = BasicProperties::default()
            .with_message_id("m-1".into())
            .with_correlation_id("c-1".into());
        publish(&ch, &ex, "created", b"{\"order\":1}", props)
            .with_context(cx.clone())
            .await;
        cx.span().end();

        let mut consumer = consume(&ch, &q).await;
        let delivery = next_delivery(&mut consumer).await;
        assert_eq!(delivery.data, b"{\"order\":1}");
        let traceparent = header_text(&delivery.properties, "traceparent").expect("traceparent");
        assert!(
            delivery
                .properties
                .headers()
                .as_ref()
                .is_some_and(|h| !h.contains_key("tracestate")),
            "an empty tracestate must not be written"
        );
        assert_eq!(delivery.attempt(), 1);
        delivery.ack(BasicAckOptions::default()).await.expect("ack");

        let dest = format!("{ex}:created:{q}");
        let spans = wait(&t, &format!("ack {dest}"), 1).await;
        let checkout = spans.one("checkout");
        let publish = spans.one(&format!("publish {ex}:created"));
        let process = spans.one(&format!("process {dest}"));
        let ack = spans.one(&format!("ack {dest}"));

        // One trace, checkout -> publish -> process -> ack.
        publish.assert_child_of(checkout);
        process.assert_child_of(publish);
        ack.assert_child_of(process);
        process.assert_links_to(&publish.span_context);
        assert_eq!(process.links.links.len(), 1);
        assert_eq!(traceparent, traceparent_of(&publish.span_context));

        publish.assert_kind(SpanKind::Producer);
        process.assert_kind(SpanKind::Consumer);
        ack.assert_kind(SpanKind::Client);

        for (span, op, ty, d) in [
            (publish, "publish", "send", format!("{ex}:created")),
            (process, "process", "process", dest.clone()),
            (ack, "ack", "settle", dest.clone()),
        ] {
            span.assert_attr(attr::MESSAGING_SYSTEM, "rabbitmq");
            span.assert_attr_str(attr::MESSAGING_OPERATION_NAME, op);
            span.assert_attr_str(attr::MESSAGING_OPERATION_TYPE, ty);
            span.assert_attr_str(attr::MESSAGING_DESTINATION_NAME, &d);
            span.assert_attr(attr::SERVER_ADDRESS, "127.0.0.1");
            span.assert_attr_i64(attr::SERVER_PORT, 5672);
            assert!(
                !span.is_error(),
                "{} is an error: {:?}",
                span.name,
                span.status
            );
        }
        for span in [publish, process] {
            span.assert_attr(attr::MESSAGING_MESSAGE_ID, "m-1");
            span.assert_attr(attr::MESSAGING_MESSAGE_CONVERSATION_ID, "c-1");
            span.assert_attr(attr::MESSAGING_RABBITMQ_DESTINATION_ROUTING_KEY, "created");
            // Body size is opt-in.
            assert!(span.attr(attr::MESSAGING_MESSAGE_BODY_SIZE).is_none());
        }
        process.assert_attr_i64(
            attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG,
            i64::try_from(delivery.delivery_tag).expect("a delivery tag fits an i64"),
        );
        process.assert_attr_i64(attr::DELIVERY_ATTEMPT, 1);
        process.assert_attr(attr::OUTCOME, "ack");
        ack.assert_attr(attr::OUTCOME, "ack");
        assert!(process.attr(attr::CONTEXT_ERROR).is_none());
        // The process span covers the settle.
        assert!(process.end_time >= ack.end_time);

        // The four messaging metrics, with the conventions' attributes.
        let one = |name: &str, op: &str, d: &str| {
            let points = t.metric(name);
            let p = points
                .iter()
                .find(|p| p.attr_str(attr::MESSAGING_OPERATION_NAME) == Some(op))
                .unwrap_or_else(|| panic!("no {name} point for {op}: {points:?}"));
            assert_eq!(p.value, 1.0, "{name} {op}");
            assert_eq!(p.attr_str(attr::MESSAGING_DESTINATION_NAME), Some(d));
            assert_eq!(p.attr_str(attr::MESSAGING_SYSTEM), Some("rabbitmq"));
            assert_eq!(p.attr(attr::SERVER_PORT), Some(&Value::I64(5672)));
            assert!(!p.attributes.contains_key(attr::ERROR_TYPE));
        };
        // Metrics name the exchange and the queue, not the per-message routing key.
        one("messaging.client.sent.messages", "publish", &ex);
        one("messaging.client.operation.duration", "publish", &ex);
        one("messaging.client.consumed.messages", "process", &q);
        one("messaging.process.duration", "process", &q);
        one("messaging.client.operation.duration", "ack", &q);
    })
    .await;
}

#[tokio::test]
async fn default_exchange_names_and_opt_in_body_size() {
    within(async {
        let (t, _conn, ch) = setup(|c| c.with_body_size(true)).await;
        let q = unique("plain");
        declare_queue(&ch, &q, FieldTable::default()).await;
        // No confirm mode: the span ends once the message is handed over.
        let _not_requested = ch
            .basic_publish(
                "".into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                b"12345",
                BasicProperties::default(),
            )
            .await
            .expect("publish");
        let mut consumer = consume(&ch, &q).await;
        let d = next_delivery(&mut consumer).await;
        // No user headers and a message without headers: only ours were added (the context
        // and, as the user set no timestamp, the send time in milliseconds).
        let keys: Vec<String> = d
            .properties
            .headers()
            .as_ref()
            .map(|h| h.inner().keys().map(|k| k.as_str().to_owned()).collect())
            .unwrap_or_default();
        assert_eq!(keys, ["timestamp_in_ms", "traceparent"]);
        assert!(d.properties.timestamp().is_some());
        d.ack(BasicAckOptions::default()).await.expect("ack");
        let spans = wait(&t, &format!("ack {q}"), 1).await;
        let publish = spans.one(&format!("publish {q}"));
        let process = spans.one(&format!("process {q}"));
        process.assert_child_of(publish);
        for s in [publish, process] {
            s.assert_attr_str(attr::MESSAGING_DESTINATION_NAME, &q);
            s.assert_attr_i64(attr::MESSAGING_MESSAGE_BODY_SIZE, 5);
        }
    })
    .await;
}

#[tokio::test]
async fn unroutable_mandatory_message_and_broker_nack_are_recorded_as_errors() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let nowhere = unique("nowhere");
        let confirm = ch
            .basic_publish(
                "".into(),
                nowhere.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                b"lost?",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        // What lapin says is passed through unchanged: an ack carrying the returned message.
        let returned = confirm
            .take_message()
            .expect("the broker returned the message");
        assert_eq!(returned.reply_code, 312);

        // A full queue that refuses new messages: the broker nacks the publish.
        let full = unique("full");
        let mut args = FieldTable::default();
        args.insert("x-max-length".into(), AMQPValue::LongInt(1));
        args.insert(
            "x-overflow".into(),
            AMQPValue::LongString("reject-publish".into()),
        );
        declare_queue(&ch, &full, args).await;
        publish(&ch, "", &full, b"1", BasicProperties::default()).await;
        let second = ch
            .basic_publish(
                "".into(),
                full.as_str().into(),
                BasicPublishOptions::default(),
                b"2",
                BasicProperties::default(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(matches!(second, Confirmation::Nack(_)), "{second:?}");

        let spans = wait(&t, &format!("publish {full}"), 2).await;
        let returned = spans.one(&format!("publish {nowhere}"));
        assert!(returned.is_error());
        returned.assert_attr(attr::ERROR_TYPE, "NO_ROUTE");
        returned.assert_attr_i64("mqtrace.rabbitmq.return.reply_code", 312);
        let full_spans = spans.named(&format!("publish {full}"));
        assert_eq!(full_spans.iter().filter(|s| !s.is_error()).count(), 1);
        let nacked = full_spans
            .iter()
            .find(|s| s.is_error())
            .expect("nacked span");
        nacked.assert_attr(attr::ERROR_TYPE, "nack");
        // Metrics keep failures apart by error.type.
        let sent = t.metric("messaging.client.sent.messages");
        let to_full: Vec<_> = sent
            .iter()
            .filter(|p| p.attr_str(attr::MESSAGING_DESTINATION_NAME) == Some(full.as_str()))
            .collect();
        assert_eq!(to_full.len(), 2, "{sent:?}");
        assert!(
            to_full
                .iter()
                .any(|p| p.value == 1.0 && !p.attributes.contains_key(attr::ERROR_TYPE))
        );
        assert!(
            to_full
                .iter()
                .any(|p| p.value == 1.0 && p.attr_str(attr::ERROR_TYPE) == Some("nack"))
        );
    })
    .await;
}

#[tokio::test]
async fn nack_with_requeue_is_redelivered_as_attempt_two_in_the_same_trace() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        let q = unique("requeue");
        declare_queue(&ch, &q, FieldTable::default()).await;
        publish(&ch, "", &q, b"again", BasicProperties::default()).await;
        let mut consumer = consume(&ch, &q).await;
        let first = next_delivery(&mut consumer).await;
        assert_eq!(first.attempt(), 1);
        first
            .nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .expect("nack");
        let second = next_delivery(&mut consumer).await;
        assert!(second.redelivered);
        assert_eq!(second.attempt(), 2);
        assert_eq!(second.data, b"again");
        second.ack(BasicAckOptions::default()).await.expect("ack");

        let spans = wait(&t, &format!("ack {q}"), 1).await;
        let publish = spans.one(&format!("publish {q}"));
        let processes = spans.named(&format!("process {q}"));
        assert_eq!(processes.len(), 2);
        for p in &processes {
            p.assert_child_of(publish);
        }
        let by_attempt = |n: i64| {
            *processes
                .iter()
                .find(|p| p.attr_i64(attr::DELIVERY_ATTEMPT) == Some(n))
                .unwrap_or_else(|| panic!("no process span with attempt {n}"))
        };
        let (p1, p2) = (by_attempt(1), by_attempt(2));
        p1.assert_attr(attr::OUTCOME, "requeue");
        assert!(p1.is_error(), "a requeued attempt did not succeed");
        p2.assert_attr(attr::OUTCOME, "ack");
        p2.assert_attr_bool(attr::DELIVERY_REDELIVERED, true);
        spans.one(&format!("nack {q}")).assert_child_of(p1);
        spans.one(&format!("ack {q}")).assert_child_of(p2);
    })
    .await;
}

#[tokio::test]
async fn dead_lettered_message_keeps_its_trace_and_x_death_is_read_back() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        let q = unique("work");
        let dlq = unique("work.dlq");
        declare_queue(&ch, &dlq, FieldTable::default()).await;
        let mut args = FieldTable::default();
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dlq.as_str().into()),
        );
        declare_queue(&ch, &q, args).await;
        publish(&ch, "", &q, b"poison", BasicProperties::default()).await;

        let mut consumer = consume(&ch, &q).await;
        let d = next_delivery(&mut consumer).await;
        d.dead_letter("amount is negative").await.expect("reject");

        let mut dl_consumer = consume(&ch, &dlq).await;
        let dead = next_delivery(&mut dl_consumer).await;
        assert_eq!(dead.data, b"poison");
        let x_death = dead
            .properties
            .headers()
            .as_ref()
            .and_then(|h| h.inner().get("x-death").cloned())
            .expect("x-death header");
        let AMQPValue::FieldArray(entries) = x_death else {
            panic!("x-death is not an array")
        };
        assert_eq!(entries.as_slice().len(), 1);
        dead.ack(BasicAckOptions::default()).await.expect("ack");

        let spans = wait(&t, &format!("ack {dlq}"), 1).await;
        let publish = spans.one(&format!("publish {q}"));
        let work = spans.one(&format!("process {q}"));
        let reject = spans.one(&format!("reject {q}"));
        let dead = spans.one(&format!("process {dlq}"));
        work.assert_child_of(publish);
        reject.assert_child_of(work);
        work.assert_attr(attr::OUTCOME, "dead_letter");
        work.assert_attr(attr::OUTCOME_REASON, "amount is negative");
        assert!(work.is_error());
        // The dead-letter consumer continues the same trace: RabbitMQ keeps the headers.
        dead.assert_child_of(publish);
        dead.assert_attr(attr::DEAD_LETTER_REASON, "rejected");
        dead.assert_attr_str(attr::DEAD_LETTER_SOURCE, &q);
        dead.assert_attr_i64(attr::DELIVERY_ATTEMPT, 1);
        dead.assert_attr(attr::OUTCOME, "ack");
    })
    .await;
}

#[tokio::test]
async fn quorum_queue_delivery_count_gives_attempts_and_the_delivery_limit_dead_letters() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        let q = unique("quorum");
        let dlq = unique("quorum.dlq");
        declare_queue(&ch, &dlq, FieldTable::default()).await;
        let mut args = FieldTable::default();
        args.insert(
            "x-queue-type".into(),
            AMQPValue::LongString("quorum".into()),
        );
        args.insert("x-delivery-limit".into(), AMQPValue::LongInt(2));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(dlq.as_str().into()),
        );
        declare_queue(&ch, &q, args).await;
        publish(&ch, "", &q, b"flaky", BasicProperties::default()).await;

        let mut consumer = consume(&ch, &q).await;
        let mut attempts = Vec::new();
        for _ in 0..3 {
            let d = next_delivery(&mut consumer).await;
            attempts.push(d.attempt());
            d.nack(BasicNackOptions {
                requeue: true,
                ..Default::default()
            })
            .await
            .expect("nack");
        }
        assert_eq!(attempts, [1, 2, 3]);

        // After the limit RabbitMQ dead-letters it, with reason delivery_limit.
        let mut dl_consumer = consume(&ch, &dlq).await;
        let dead = next_delivery(&mut dl_consumer).await;
        assert_eq!(dead.data, b"flaky");
        dead.ack(BasicAckOptions::default()).await.expect("ack");

        let spans = wait(&t, &format!("ack {dlq}"), 1).await;
        let publish = spans.one(&format!("publish {q}"));
        let processes = spans.named(&format!("process {q}"));
        let mut recorded: Vec<i64> = processes
            .iter()
            .map(|p| p.attr_i64(attr::DELIVERY_ATTEMPT).expect("attempt"))
            .collect();
        recorded.sort_unstable();
        assert_eq!(recorded, [1, 2, 3]);
        for p in &processes {
            p.assert_child_of(publish);
            p.assert_attr(attr::OUTCOME, "requeue");
        }
        let dead = spans.one(&format!("process {dlq}"));
        dead.assert_child_of(publish);
        dead.assert_attr(attr::DEAD_LETTER_REASON, "delivery_limit");
    })
    .await;
}

fn every_amqp_type() -> FieldTable {
    let mut nested = FieldTable::default();
    nested.insert("inner".into(), AMQPValue::LongString("x".into()));
    let mut h = FieldTable::default();
    let values = [
        ("bool", AMQPValue::Boolean(true)),
        ("i8", AMQPValue::ShortShortInt(-8)),
        ("u8", AMQPValue::ShortShortUInt(8)),
        ("i16", AMQPValue::ShortInt(-16)),
        ("u16", AMQPValue::ShortUInt(16)),
        ("i32", AMQPValue::LongInt(-32)),
        ("u32", AMQPValue::LongUInt(32)),
        ("i64", AMQPValue::LongLongInt(-64)),
        ("f32", AMQPValue::Float(1.5)),
        ("f64", AMQPValue::Double(2.25)),
        (
            "decimal",
            AMQPValue::DecimalValue(DecimalValue {
                scale: 2,
                value: 12345,
            }),
        ),
        // No ShortString: RabbitMQ refuses it in header tables (INTERNAL_ERROR, connection closed).
        ("long", AMQPValue::LongString("long ✓".into())),
        (
            "array",
            AMQPValue::FieldArray(FieldArray::from(vec![
                AMQPValue::LongInt(1),
                AMQPValue::LongString("two".into()),
            ])),
        ),
        ("timestamp", AMQPValue::Timestamp(1_700_000_000)),
        ("table", AMQPValue::FieldTable(nested)),
        (
            "bytes",
            AMQPValue::ByteArray(ByteArray::from(vec![0_u8, 159, 146, 150, 255])),
        ),
        ("void", AMQPValue::Void),
        // A user header that looks like ours but is not ours to touch.
        (
            "x-traceparent-note",
            AMQPValue::LongString("keep me".into()),
        ),
    ];
    for (k, v) in values {
        h.insert(k.into(), v);
    }
    h
}

#[tokio::test]
async fn user_headers_of_every_amqp_type_and_properties_arrive_exactly_as_the_raw_client_delivers_them()
 {
    within(async {
        let (_t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let q = unique("headers");
        declare_queue(&ch, &q, FieldTable::default()).await;
        let props = BasicProperties::default()
            .with_headers(every_amqp_type())
            .with_content_type("application/octet-stream".into())
            .with_priority(3)
            .with_delivery_mode(2)
            .with_message_id("id-1".into())
            .with_app_id("app".into())
            .with_timestamp(1_700_000_001);
        let body: Vec<u8> = (0..=255).collect();
        // The same message through the raw client and through the traced channel.
        publish_raw(&ch, &q, &body, props.clone()).await;
        publish(&ch, "", &q, &body, props).await;

        let mut consumer = consume(&ch, &q).await;
        let raw = next_delivery(&mut consumer).await;
        let traced = next_delivery(&mut consumer).await;
        assert_eq!(raw.data, body);
        assert_eq!(traced.data, body);
        let mut traced_headers = traced.properties.headers().clone().expect("headers");
        let ours: Vec<_> = ["traceparent", "tracestate", "baggage"]
            .iter()
            .filter(|k| traced_headers.contains_key(k))
            .collect();
        assert_eq!(ours, [&"traceparent"]);
        let mut user_only = FieldTable::default();
        for (k, v) in traced_headers.inner() {
            if k.as_str() != "traceparent" {
                user_only.insert(k.clone(), v.clone());
            }
        }
        traced_headers = user_only;
        assert_eq!(
            Some(&traced_headers),
            raw.properties.headers().as_ref(),
            "user headers changed"
        );
        // Every other property is untouched.
        let strip = |p: &BasicProperties| p.clone().with_headers(FieldTable::default());
        assert_eq!(strip(&traced.properties), strip(&raw.properties));
        raw.ack(BasicAckOptions::default()).await.expect("ack");
        traced.ack(BasicAckOptions::default()).await.expect("ack");
    })
    .await;
}

#[tokio::test]
async fn malformed_context_gives_a_new_root_with_the_reason_and_the_message_arrives_unchanged() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let good = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let long = |s: &str| AMQPValue::LongString(LongString::from(s));
        let cases: Vec<(&str, AMQPValue, &str)> = vec![
            (
                "bad-hex",
                long("00-0af7651916cd43dd8448eb211c80319z-b7ad6b7169203331-01"),
                "traceparent: trace-id is not 32 lowercase hex digits",
            ),
            (
                "wrong-version",
                long("ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
                "traceparent: version ff is forbidden",
            ),
            (
                "zero-trace",
                long("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
                "traceparent: trace-id is all zeros",
            ),
            (
                "zero-span",
                long("00-0af7651916cd43dd8448eb211c80319c-0000000000000000-01"),
                "traceparent: parent-id is all zeros",
            ),
            (
                "short",
                long("00-abc"),
                "traceparent: length 6, expected 55",
            ),
            (
                "not-utf8",
                AMQPValue::ByteArray(ByteArray::from(vec![0xff, 0xfe, 0x00, 0x80])),
                "traceparent: value is not valid UTF-8",
            ),
            (
                "not-utf8-long",
                AMQPValue::LongString(LongString::from(vec![0xc3_u8, 0x28])),
                "traceparent: value is not valid UTF-8",
            ),
            (
                "wrong-type",
                AMQPValue::LongLongInt(42),
                "traceparent: value has type long-long-int, expected a string",
            ),
            // An array of two values: the last valid one is used (tests/context_headers.rs).
            (
                "comma-joined",
                long(&format!("{good},{good}")),
                "traceparent: length 111, expected 55",
            ),
        ];
        let q = unique("malformed");
        declare_queue(&ch, &q, FieldTable::default()).await;
        for (label, value, _) in &cases {
            let mut h = FieldTable::default();
            h.insert("traceparent".into(), value.clone());
            h.insert("case".into(), long(label));
            publish_raw(
                &ch,
                &q,
                label.as_bytes(),
                BasicProperties::default().with_headers(h),
            )
            .await;
        }
        let mut consumer = consume(&ch, &q).await;
        for (label, value, _) in &cases {
            let d = next_delivery(&mut consumer).await;
            // Unchanged: payload and the malformed header itself.
            assert_eq!(d.data, label.as_bytes());
            let h = d.properties.headers().as_ref().expect("headers");
            assert_eq!(h.inner().get("traceparent"), Some(value), "{label}");
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let spans = wait(&t, &format!("ack {q}"), cases.len()).await;
        let processes = spans.named(&format!("process {q}"));
        assert_eq!(processes.len(), cases.len());
        let mut roots = std::collections::HashSet::new();
        for p in processes {
            p.assert_root();
            assert!(
                p.links.links.is_empty(),
                "{:?} links to a rejected context",
                p.name
            );
            p.assert_attr(attr::OUTCOME, "ack");
            roots.insert(p.span_context.trace_id());
            let reason = p.attr_str(attr::CONTEXT_ERROR).expect("reason recorded");
            assert!(
                cases.iter().any(|(_, _, want)| reason == *want),
                "unexpected reason {reason:?}"
            );
        }
        assert_eq!(
            roots.len(),
            cases.len(),
            "each message gets its own new trace"
        );
        // Every expected reason was seen.
        for (label, _, want) in &cases {
            assert!(
                spans
                    .named(&format!("process {q}"))
                    .iter()
                    .any(|p| p.attr_str(attr::CONTEXT_ERROR) == Some(*want)),
                "case {label}: no span recorded {want:?}"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn oversized_baggage_is_dropped_with_a_reason_and_the_trace_continues() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let q = unique("baggage");
        declare_queue(&ch, &q, FieldTable::default()).await;
        let tp = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let big = format!("k={}", "v".repeat(9000));
        let mut h = FieldTable::default();
        h.insert("traceparent".into(), AMQPValue::LongString(tp.into()));
        h.insert("baggage".into(), AMQPValue::LongString(big.as_str().into()));
        publish_raw(&ch, &q, b"b", BasicProperties::default().with_headers(h)).await;
        let mut consumer = consume(&ch, &q).await;
        let d = next_delivery(&mut consumer).await;
        let seen = d
            .in_span(async { Context::current().baggage().len() })
            .await;
        assert_eq!(seen, 0, "oversized baggage must not reach the handler");
        d.ack(BasicAckOptions::default()).await.expect("ack");
        let spans = wait(&t, &format!("ack {q}"), 1).await;
        let p = spans.one(&format!("process {q}"));
        assert_eq!(
            p.span_context.trace_id(),
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128)
        );
        assert_eq!(p.parent_span_id, SpanId::from(0xb7ad6b7169203331_u64));
        p.assert_attr(
            attr::CONTEXT_ERROR,
            "baggage: 9002 bytes exceeds the 8192-byte limit; baggage dropped",
        );
    })
    .await;
}

#[tokio::test]
async fn tracing_and_opentelemetry_spans_in_an_async_handler_are_children_of_the_process_span() {
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(t.provider().tracer("handler")));
        let _guard = tracing::subscriber::set_default(subscriber);

        let q = unique("handler");
        declare_queue(&ch, &q, FieldTable::default()).await;
        publish(&ch, "", &q, b"work", BasicProperties::default()).await;

        // The worker loop runs inside a tracing span of its own; the handler's spans must
        // still hang under the process span, not under the loop.
        let worker = tracing::info_span!("worker loop");
        let mut consumer = consume(&ch, &q).instrument(worker.clone()).await;
        let d = next_delivery(&mut consumer)
            .instrument(worker.clone())
            .await;
        let otel = t.provider().tracer("handler-otel");
        d.in_span(async {
            async {
                tokio::time::sleep(Duration::from_millis(5)).await;
                tracing::info!("querying");
            }
            .instrument(tracing::info_span!("db query"))
            .await;
            tokio::task::yield_now().await;
            let mut s = otel.start("otel call");
            tokio::time::sleep(Duration::from_millis(5)).await;
            s.end();
            let after = tracing::info_span!("after await");
            after.in_scope(|| {});
        })
        .instrument(worker.clone())
        .await;
        d.ack(BasicAckOptions::default()).await.expect("ack");
        drop(worker);

        let spans = wait(&t, &format!("ack {q}"), 1).await;
        let process = spans.one(&format!("process {q}"));
        for child in ["db query", "otel call", "after await"] {
            spans.one(child).assert_child_of(process);
        }
    })
    .await;
}

#[tokio::test]
async fn in_an_ambient_span_the_creation_context_stays_the_parent_unless_ambient_span_is_asked_for()
{
    within(async {
        for policy in [ParentPolicy::CreationContext, ParentPolicy::AmbientSpan] {
            let (t, _conn, ch) = setup(|c| c.with_parent_policy(policy)).await;
            let q = unique("ambient");
            declare_queue(&ch, &q, FieldTable::default()).await;
            publish(&ch, "", &q, b"x", BasicProperties::default()).await;
            let mut consumer = consume(&ch, &q).await;
            let batch = t.provider().tracer("app").start("batch job");
            let cx = Context::current_with_span(batch);
            let d = next_delivery(&mut consumer).with_context(cx.clone()).await;
            d.ack(BasicAckOptions::default()).await.expect("ack");
            cx.span().end();
            let spans = wait(&t, &format!("ack {q}"), 1).await;
            let publish = spans.one(&format!("publish {q}"));
            let process = spans.one(&format!("process {q}"));
            let batch = spans.one("batch job");
            process.assert_links_to(&publish.span_context);
            if policy == ParentPolicy::CreationContext {
                process.assert_child_of(publish);
                process.assert_links_to(&batch.span_context);
            } else {
                process.assert_child_of(batch);
            }
        }
    })
    .await;
}

#[tokio::test]
async fn always_link_policy_and_untrusted_sources_only_link_and_drop_baggage() {
    within(async {
        for (label, configure) in [
            (
                "always-link",
                (|c: Config| c.with_parent_policy(ParentPolicy::AlwaysLink))
                    as fn(Config) -> Config,
            ),
            ("untrusted", |c: Config| c.with_trust(Trust::Nothing)),
        ] {
            let (t, _conn, ch) = setup(configure).await;
            let q = unique(label);
            declare_queue(&ch, &q, FieldTable::default()).await;
            let cx = Context::current().with_baggage([KeyValue::new("tenant", "acme")]);
            publish(&ch, "", &q, b"x", BasicProperties::default())
                .with_context(cx)
                .await;
            let mut consumer = consume(&ch, &q).await;
            let d = next_delivery(&mut consumer).await;
            let tenant = d
                .in_span(async {
                    Context::current()
                        .baggage()
                        .get("tenant")
                        .map(|v| v.as_str().to_owned())
                })
                .await;
            d.ack(BasicAckOptions::default()).await.expect("ack");
            let spans = wait(&t, &format!("ack {q}"), 1).await;
            let publish = spans.one(&format!("publish {q}"));
            let process = spans.one(&format!("process {q}"));
            process.assert_root();
            assert_ne!(
                process.span_context.trace_id(),
                publish.span_context.trace_id()
            );
            process.assert_links_to(&publish.span_context);
            if label == "untrusted" {
                assert_eq!(tenant, None, "untrusted baggage reached the handler");
                process.assert_attr_bool(attr::CONTEXT_UNTRUSTED, true);
            } else {
                assert_eq!(tenant.as_deref(), Some("acme"), "trusted baggage is kept");
            }
        }
    })
    .await;
}

#[tokio::test]
async fn dropped_unsettled_and_auto_ack_deliveries_end_their_spans() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        let q = unique("drop");
        declare_queue(&ch, &q, FieldTable::default()).await;
        publish(&ch, "", &q, b"1", BasicProperties::default()).await;
        let mut consumer = consume(&ch, &q).await;
        let d = next_delivery(&mut consumer).await;
        drop(d); // the handler forgot to settle
        let spans = wait(&t, &format!("process {q}"), 1).await;
        let p = spans.one(&format!("process {q}"));
        p.assert_attr(attr::OUTCOME, "unsettled");
        assert!(p.is_error());

        let auto = unique("auto");
        declare_queue(&ch, &auto, FieldTable::default()).await;
        publish(&ch, "", &auto, b"2", BasicProperties::default()).await;
        let mut auto_consumer = ch
            .basic_consume(
                auto.as_str().into(),
                "".into(),
                BasicConsumeOptions {
                    no_ack: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("consume");
        drop(next_delivery(&mut auto_consumer).await);
        let spans = wait(&t, &format!("process {auto}"), 1).await;
        let p = spans.one(&format!("process {auto}"));
        p.assert_attr(attr::OUTCOME, "auto_ack");
        assert!(!p.is_error());

        // Settling twice: lapin says the acker is used; recorded on the settle span, not hidden.
        let twice = unique("twice");
        declare_queue(&ch, &twice, FieldTable::default()).await;
        publish(&ch, "", &twice, b"3", BasicProperties::default()).await;
        let mut c3 = consume(&ch, &twice).await;
        let d = next_delivery(&mut c3).await;
        let (raw, span) = d.into_parts();
        assert!(
            raw.acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack")
        );
        let span = span.expect("span");
        span.finish(Outcome::Ack);
        let spans = wait(&t, &format!("process {twice}"), 1).await;
        spans
            .one(&format!("process {twice}"))
            .assert_attr(attr::OUTCOME, "ack");
    })
    .await;
}

/// `basic_get` is a pull: a CLIENT `receive` span (semconv v1.44), not a CONSUMER process
/// span, which still continues the trace (child of the publish span and linking it), is the
/// parent of the handler's work and of the ack span, and carries the outcome.
#[tokio::test]
async fn basic_get_is_a_client_receive_span_that_continues_the_trace() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let q = unique("get");
        declare_queue(&ch, &q, FieldTable::default()).await;
        publish(&ch, "", &q, b"one", BasicProperties::default()).await;
        publish(&ch, "", &q, b"two", BasicProperties::default()).await;
        let got = ch
            .basic_get(q.as_str().into(), Default::default())
            .await
            .expect("basic_get")
            .expect("a message");
        assert_eq!(got.data, b"one");
        assert_eq!(got.message_count, 1);
        got.in_span(async {
            t.provider().tracer("app").start("handle").end();
        })
        .await;
        got.delivery
            .ack(BasicAckOptions::default())
            .await
            .expect("ack");
        let spans = wait(&t, &format!("ack {q}"), 1).await;
        assert!(
            spans.named(&format!("process {q}")).is_empty(),
            "{}",
            spans.tree()
        );
        let receive = spans.one(&format!("receive {q}"));
        receive.assert_kind(SpanKind::Client);
        receive.assert_attr(attr::MESSAGING_OPERATION_TYPE, "receive");
        receive.assert_attr(attr::MESSAGING_OPERATION_NAME, "receive");
        receive.assert_attr_str(attr::MESSAGING_DESTINATION_NAME, &q);
        let first_publish = spans
            .named(&format!("publish {q}"))
            .into_iter()
            .find(|p| p.span_context.span_id() == receive.parent_span_id)
            .expect("the receive span continues a publish span");
        assert_eq!(
            receive.span_context.trace_id(),
            first_publish.span_context.trace_id()
        );
        receive.assert_links_to(&first_publish.span_context);
        receive.assert_attr(attr::OUTCOME, "ack");
        spans.one("handle").assert_child_of(receive);
        let ack = spans.one(&format!("ack {q}"));
        ack.assert_kind(SpanKind::Client);
        ack.assert_child_of(receive);
    })
    .await;
}

/// Queues declared through the traced channel as server-named (empty name) or exclusive /
/// auto-delete, and `amq.gen-*` names: spans are named by their operation alone and say
/// `messaging.destination.temporary` / `.anonymous` (typed booleans); the name stays an
/// attribute; metric points carry no name.
#[tokio::test]
async fn temporary_and_anonymous_queues_are_left_out_of_span_names_and_metric_names() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let server_named = ch
            .queue_declare(
                "".into(),
                QueueDeclareOptions {
                    exclusive: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .expect("server-named queue");
        let server_named = server_named.name().as_str().to_owned();
        let exclusive = unique("excl");
        ch.queue_declare(
            exclusive.as_str().into(),
            QueueDeclareOptions {
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await
        .expect("auto-delete queue");
        for q in [&server_named, &exclusive] {
            publish(&ch, "", q, b"r", BasicProperties::default()).await;
            let mut c = consume(&ch, q).await;
            let d = next_delivery(&mut c).await;
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let spans = wait(&t, "ack", 2).await;
        for (name, op, kind) in [
            ("publish", "publish", SpanKind::Producer),
            ("process", "process", SpanKind::Consumer),
            ("ack", "ack", SpanKind::Client),
        ] {
            let all = spans.named(name);
            assert_eq!(all.len(), 2, "{name}: {}", spans.tree());
            for s in all {
                s.assert_kind(kind.clone());
                s.assert_attr(attr::MESSAGING_OPERATION_NAME, op);
                s.assert_attr_bool(attr::MESSAGING_DESTINATION_TEMPORARY, true);
                let dest = s.attr_str(attr::MESSAGING_DESTINATION_NAME).expect("name");
                if dest == server_named {
                    s.assert_attr_bool(attr::MESSAGING_DESTINATION_ANONYMOUS, true);
                } else {
                    assert_eq!(dest, exclusive);
                    s.assert_no_attr(attr::MESSAGING_DESTINATION_ANONYMOUS);
                }
            }
        }
        assert!(spans.named(&format!("publish {server_named}")).is_empty());
        assert!(spans.named(&format!("publish {exclusive}")).is_empty());
        for metric in [
            "messaging.client.sent.messages",
            "messaging.client.consumed.messages",
        ] {
            let points = t.metric(metric);
            assert!(!points.is_empty(), "{metric}");
            for p in points {
                assert_eq!(
                    p.attr_str(attr::MESSAGING_DESTINATION_NAME),
                    None,
                    "{metric}: {p:?}"
                );
                assert_eq!(
                    p.attr(attr::MESSAGING_DESTINATION_TEMPORARY),
                    Some(&Value::Bool(true))
                );
            }
        }
    })
    .await;
}

#[tokio::test]
async fn reject_without_requeue_is_outcome_reject() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        let q = unique("reject");
        declare_queue(&ch, &q, FieldTable::default()).await;
        publish(&ch, "", &q, b"r", BasicProperties::default()).await;
        let mut consumer = consume(&ch, &q).await;
        let d = next_delivery(&mut consumer).await;
        assert!(
            d.reject(BasicRejectOptions { requeue: false })
                .await
                .expect("reject")
        );
        let spans = wait(&t, &format!("reject {q}"), 1).await;
        let p = spans.one(&format!("process {q}"));
        p.assert_attr(attr::OUTCOME, "reject");
        spans.one(&format!("reject {q}")).assert_child_of(p);
    })
    .await;
}

#[tokio::test]
async fn a_custom_propagator_is_called_through_and_its_failures_are_diagnosed() {
    within(async {
        let composite = opentelemetry::propagation::TextMapCompositePropagator::new(vec![
            Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
            Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
        ]);
        let (t, _conn, ch) =
            setup(|c| c.with_propagation(Propagation::Custom(std::sync::Arc::new(composite))))
                .await;
        let q = unique("custom");
        declare_queue(&ch, &q, FieldTable::default()).await;
        let cx = Context::current().with_baggage([KeyValue::new("k", "v")]);
        publish(&ch, "", &q, b"x", BasicProperties::default())
            .with_context(cx)
            .await;
        let mut h = FieldTable::default();
        h.insert(
            "traceparent".into(),
            AMQPValue::LongString("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x".into()),
        );
        publish_raw(&ch, &q, b"bad", BasicProperties::default().with_headers(h)).await;
        let mut consumer = consume(&ch, &q).await;
        let d = next_delivery(&mut consumer).await;
        // The SDK propagator writes tracestate even when empty: called through, as asked.
        let headers = d.properties.headers().clone().expect("headers");
        assert!(headers.contains_key("tracestate"));
        assert_eq!(
            header_text(&d.properties, "baggage").as_deref(),
            Some("k=v")
        );
        d.ack(BasicAckOptions::default()).await.expect("ack");
        let bad = next_delivery(&mut consumer).await;
        bad.ack(BasicAckOptions::default()).await.expect("ack");
        let spans = wait(&t, &format!("ack {q}"), 2).await;
        let publish = spans.one(&format!("publish {q}"));
        let processes = spans.named(&format!("process {q}"));
        let good = processes
            .iter()
            .find(|p| p.parent_span_id != SpanId::INVALID)
            .expect("continued span");
        good.assert_child_of(publish);
        let rejected = processes
            .iter()
            .find(|p| p.parent_span_id == SpanId::INVALID)
            .expect("root span");
        rejected.assert_attr(
            attr::CONTEXT_ERROR,
            "traceparent: trace-flags is not 2 lowercase hex digits",
        );
    })
    .await;
}

#[tokio::test]
async fn unsampled_traces_still_propagate_and_record_nothing() {
    within(async {
        let t = TestTelemetry::with_sampler(opentelemetry_sdk::trace::Sampler::ParentBased(
            Box::new(opentelemetry_sdk::trace::Sampler::AlwaysOff),
        ));
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("channel");
        let q = unique("unsampled");
        declare_queue(&ch, &q, FieldTable::default()).await;
        publish(&ch, "", &q, b"x", BasicProperties::default()).await;
        let mut consumer = consume(&ch, &q).await;
        let d = next_delivery(&mut consumer).await;
        let tp = header_text(&d.properties, "traceparent").expect("context is still carried");
        assert!(tp.ends_with("-00"), "{tp}");
        let parent: SpanContext = mqtrace::w3c::parse_traceparent(&tp).expect("valid");
        assert_eq!(d.span_context().trace_id(), parent.trace_id());
        assert!(!d.span_context().is_sampled());
        d.ack(BasicAckOptions::default()).await.expect("ack");
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(t.spans().all().is_empty());
    })
    .await;
}

#[tokio::test]
async fn an_unreachable_broker_fails_with_the_command_that_starts_it() {
    let err = try_rabbitmq("amqp://guest:guest@127.0.0.1:1/%2f", Config::new())
        .await
        .expect_err("nothing listens on port 1");
    assert!(err.contains("scripts/start-brokers.sh rabbitmq"), "{err}");
}

#[tokio::test]
async fn json_envelope_carries_context_through_the_payload() {
    within(async {
        // A bridge that loses headers: context travels in the JSON body instead.
        let (t, _conn, ch) = setup(|c| c).await;
        let q = unique("envelope");
        declare_queue(&ch, &q, FieldTable::default()).await;
        let producer = t.provider().tracer("legacy-producer");
        let span = producer.start("legacy publish");
        let sc = span.span_context().clone();
        let mut body = serde_json::json!({"order": 9});
        mqtrace::envelope::inject(&Propagation::W3c, &sc, &Context::new(), &mut body);
        drop(span);
        let bytes = serde_json::to_vec(&body).expect("json");
        publish_raw(&ch, &q, &bytes, BasicProperties::default()).await;
        let mut consumer = consume(&ch, &q).await;
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data, bytes);
        let (delivery, span) = d.into_parts();
        assert!(
            delivery
                .acker
                .ack(BasicAckOptions::default())
                .await
                .expect("ack")
        );
        if let Some(span) = span {
            span.finish(Outcome::Ack);
        }
        let value: serde_json::Value = serde_json::from_slice(&delivery.data).expect("json");
        let extracted = mqtrace::envelope::extract(&Propagation::W3c, &value);
        assert_eq!(extracted.span_context().trace_id(), sc.trace_id());
        assert_eq!(extracted.span_context().span_id(), sc.span_id());
    })
    .await;
}

/// Runs the Python peer (pika + OpenTelemetry's pika instrumentation) and returns its JSON.
async fn python_peer(mode: &str, queue: &str) -> serde_json::Value {
    // The venv may be created on first use (pip install, under a minute here).
    support::python_peer(
        "rabbitmq_peer.py",
        &[mode, queue],
        &[("AMQP_URL", mqtrace_integration_tests::amqp_url())],
        Duration::from_secs(300),
    )
    .await
}

#[tokio::test]
async fn python_pika_instrumentation_and_mqtrace_continue_each_others_traces() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");

        // Python publishes (traceparent with flags 03), Rust consumes.
        let from_py = unique("from-python");
        declare_queue(&ch, &from_py, FieldTable::default()).await;
        let peer = python_peer("publish", &from_py).await;
        let py_send = python_span(&peer, "PRODUCER", "");
        let mut consumer = consume(&ch, &from_py).await;
        let d = next_delivery(&mut consumer).await;
        assert_eq!(d.data, b"from python");
        d.ack(BasicAckOptions::default()).await.expect("ack");
        let spans = wait(&t, &format!("ack {from_py}"), 1).await;
        let process = spans.one(&format!("process {from_py}"));
        let py_context = python_context(py_send);
        process.assert_parent_context(&py_context);
        process.assert_links_to(&py_context);
        assert!(process.attr(attr::CONTEXT_ERROR).is_none());

        // Rust publishes, Python consumes.
        let to_py = unique("to-python");
        declare_queue(&ch, &to_py, FieldTable::default()).await;
        publish(&ch, "", &to_py, b"from rust", BasicProperties::default()).await;
        let peer = python_peer("consume", &to_py).await;
        assert_eq!(peer["body"], "from rust");
        let py_receive = python_span(&peer, "CONSUMER", "");
        let spans = wait(&t, &format!("publish {to_py}"), 1).await;
        let publish = spans.one(&format!("publish {to_py}"));
        assert_eq!(
            py_receive["trace_id"].as_str(),
            Some(publish.span_context.trace_id().to_string().as_str()),
            "python's consumer span is not in our trace: {peer}"
        );
        assert_eq!(
            py_receive["parent_id"].as_str(),
            Some(publish.span_context.span_id().to_string().as_str())
        );
    })
    .await;
}

/// Baggage with `%`, `,`, `;`, non-ASCII and properties between mqtrace and Python's OTel SDK
/// (pika instrumentation) through RabbitMQ, both ways, asserting the decoded values.
#[tokio::test]
async fn baggage_with_escapes_non_ascii_and_properties_round_trips_with_python_through_rabbitmq() {
    within(async {
        let (t, _conn, ch) = setup(|c| c).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");

        // Rust publishes, Python's SDK decodes.
        let to_py = unique("bag-to-python");
        declare_queue(&ch, &to_py, FieldTable::default()).await;
        let cx = Context::current().with_baggage(support::interop_baggage().iter().map(
            |(k, (v, m))| {
                opentelemetry::baggage::KeyValueMetadata::new(k.clone(), v.clone(), m.clone())
            },
        ));
        publish(&ch, "", &to_py, b"from rust", BasicProperties::default())
            .with_context(cx)
            .await;
        let peer = python_peer("consume", &to_py).await;
        assert_eq!(peer["body"], "from rust");
        assert_eq!(
            peer["baggage"],
            support::interop_baggage_as_python_reads_it(),
            "{peer}"
        );

        // Python's SDK encodes, Rust decodes.
        let from_py = unique("bag-from-python");
        declare_queue(&ch, &from_py, FieldTable::default()).await;
        let peer = python_peer("publish-baggage", &from_py).await;
        let mut consumer = consume(&ch, &from_py).await;
        let d = next_delivery(&mut consumer).await;
        let got = d.context().baggage();
        for (k, v) in [
            ("pct", "10%"),
            ("esc", "%41"),
            ("sep", "a,b;c=d"),
            ("uni", "héllo€"),
        ] {
            assert_eq!(
                got.get(k).map(|v| v.as_str().to_owned()).as_deref(),
                Some(v),
                "{k}: python wrote {}",
                peer["headers"]
            );
        }
        assert_eq!(got.len(), 4, "{got:?}");
        let py_send = python_span(&peer, "PRODUCER", "");
        assert_eq!(
            d.span_context().trace_id(),
            python_context(py_send).trace_id()
        );
        d.ack(BasicAckOptions::default()).await.expect("ack");
        let spans = wait(&t, &format!("ack {from_py}"), 1).await;
        assert!(
            spans
                .one(&format!("process {from_py}"))
                .attr(attr::CONTEXT_ERROR)
                .is_none()
        );
    })
    .await;
}

mod retries {
    use super::*;
    use mqtrace_lapin::RetryQueues;

    async fn cleanup(ch: &TracedChannel, q: &str, max_attempts: u32) {
        let mut names = vec![format!("{q}.dlq")];
        names.extend((2..=max_attempts).map(|a| format!("{q}.retry.{a}")));
        for n in names {
            let _ = ch.queue_delete(n.as_str().into(), Default::default()).await;
        }
    }

    /// A valid 250-byte queue name: `{queue}.retry.{n}` would pass AMQP's 255 bytes, which
    /// lapin would panic on at the first retry. `declare` says so instead, declaring nothing.
    #[tokio::test]
    async fn a_queue_name_too_long_for_its_retry_queues_is_an_error_at_declare() {
        within(async {
            let (_t, _conn, ch) = setup(|c| c).await;
            let q = format!("{}{}", unique("long"), "q".repeat(250))
                .split_at(250)
                .0
                .to_owned();
            assert_eq!(q.len(), 250);
            declare_queue(&ch, &q, FieldTable::default()).await;
            let err = RetryQueues::declare(ch.clone(), &q, fast(3))
                .await
                .expect_err("the retry queue names are too long");
            match &err {
                mqtrace_lapin::RetryError::InvalidName { name, reason } => {
                    assert_eq!(name, &format!("{q}.retry.3"));
                    assert!(reason.contains("255"), "{reason}");
                }
                other => panic!("{other}"),
            }
            // Nothing was declared: the dead-letter queue does not exist.
            let passive = ch
                .queue_declare(
                    format!("{q}.dlq").as_str().into(),
                    lapin::options::QueueDeclareOptions {
                        passive: true,
                        ..Default::default()
                    },
                    FieldTable::default(),
                )
                .await;
            assert!(passive.is_err(), "{q}.dlq was declared");
            // A name that fits works.
            let (_t, _conn, ch) = setup(|c| c).await;
            let fits = &q[..240];
            declare_queue(&ch, fits, FieldTable::default()).await;
            RetryQueues::declare(ch.clone(), fits, fast(3))
                .await
                .expect("declare");
            cleanup(&ch, fits, 3).await;
            let _ = ch.queue_delete(fits.into(), Default::default()).await;
            let _ = ch.queue_delete(q.as_str().into(), Default::default()).await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_panicking_or_hanging_handler_is_a_failure_and_the_message_is_not_lost() {
        within(async {
            let (t, _conn, ch) = setup(|c| c).await;
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirm");
            let q = unique("panic");
            declare_queue(&ch, &q, FieldTable::default()).await;
            let retries = RetryQueues::declare(ch.clone(), &q, fast(5))
                .await
                .expect("declare")
                .with_time_limit(Duration::from_millis(300));
            publish(&ch, "", &q, b"fragile", BasicProperties::default()).await;
            let mut consumer = consume(&ch, &q).await;
            for _ in 0..3 {
                let d = next_delivery(&mut consumer).await;
                retries
                    .handle(d, async |d| match d.attempt() {
                        1 => panic!("bug in the handler"),
                        2 => {
                            tokio::time::sleep(Duration::from_secs(5)).await;
                            Ok(())
                        }
                        _ => Ok(()),
                    })
                    .await
                    .expect("carried out");
            }
            let spans = wait(&t, &format!("ack {q}"), 3).await;
            let mut attempts = spans.named(&format!("process {q}"));
            attempts.sort_by_key(|s| s.attr_i64(attr::DELIVERY_ATTEMPT));
            attempts[0].assert_attr(attr::ERROR_TYPE, "panic");
            attempts[0].assert_attr(attr::OUTCOME, "retry");
            attempts[1].assert_attr(attr::ERROR_TYPE, "timeout");
            attempts[1].assert_attr(attr::OUTCOME, "retry");
            attempts[2].assert_attr(attr::OUTCOME, "ack");
            cleanup(&ch, &q, 5).await;
        })
        .await;
    }
}

/// A message published, consumed by a relay stage that forwards it with the received header
/// table (context included) to a second queue, and consumed there; returns the spans and
/// the headers the second consumer saw.
async fn relay(rule: ExistingContext) -> (TestTelemetry, String, String, FieldTable) {
    let (t, _conn, ch) = setup(|c| c.with_existing_context(rule)).await;
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    let (q_in, q_out) = (unique("relay-in"), unique("relay-out"));
    declare_queue(&ch, &q_in, FieldTable::default()).await;
    declare_queue(&ch, &q_out, FieldTable::default()).await;
    let mut user = FieldTable::default();
    user.insert("order-id".into(), AMQPValue::LongString("o-7".into()));
    let cx = Context::current().with_baggage([KeyValue::new("tenant", "acme")]);
    publish(
        &ch,
        "",
        &q_in,
        b"x",
        BasicProperties::default().with_headers(user),
    )
    .with_context(cx)
    .await;
    let mut c_in = consume(&ch, &q_in).await;
    let d = next_delivery(&mut c_in).await;
    d.in_span(publish(&ch, "", &q_out, &d.data, d.properties.clone()))
        .await;
    d.ack(BasicAckOptions::default()).await.expect("ack");
    let mut c_out = consume(&ch, &q_out).await;
    let d2 = next_delivery(&mut c_out).await;
    let headers = d2.properties.headers().clone().expect("headers");
    d2.ack(BasicAckOptions::default()).await.expect("ack");
    wait(&t, &format!("ack {q_out}"), 1).await;
    (t, q_in, q_out, headers)
}

fn table_text(headers: &FieldTable, k: &str) -> Option<String> {
    match headers.inner().get(k) {
        Some(AMQPValue::LongString(s)) => Some(String::from_utf8_lossy(s.as_bytes()).into_owned()),
        _ => None,
    }
}

/// The default rule (`ExistingContext::Keep`): a relay stage that forwards the received
/// headers sends the creation context unchanged (semconv: a creation context already on the
/// message SHOULD NOT be modified), so one trace runs through the pipeline: the last
/// consumer continues the first producer's span. The relay's send span is a CLIENT span, a
/// child of the relay's process span, linking the kept context.
#[tokio::test]
async fn a_relay_that_forwards_headers_keeps_the_context_one_trace_through_the_pipeline() {
    within(async {
        let (t, q_in, q_out, headers) = relay(ExistingContext::Keep).await;
        let spans = t.spans();
        let first = spans.one(&format!("publish {q_in}"));
        first.assert_kind(SpanKind::Producer);
        let relay_process = spans.one(&format!("process {q_in}"));
        let forward = spans.one(&format!("publish {q_out}"));
        assert_relay_send(ExistingContext::Keep, forward, relay_process, first);
        let last = spans.one(&format!("process {q_out}"));
        last.assert_parent_context(&first.span_context);
        let trace = first.span_context.trace_id();
        for s in [relay_process, forward, last] {
            assert_eq!(s.span_context.trace_id(), trace, "{}", spans.tree());
        }
        assert_eq!(
            table_text(&headers, "traceparent"),
            Some(traceparent_of(&first.span_context)),
            "the first producer's traceparent, unchanged"
        );
        assert_eq!(
            table_text(&headers, "baggage").as_deref(),
            Some("tenant=acme")
        );
        assert_eq!(table_text(&headers, "order-id").as_deref(), Some("o-7"));
    })
    .await;
}

/// `ExistingContext::Replace`: the relay writes its own send span's context (all fields:
/// the old ones are removed), a PRODUCER span linking the replaced context
/// (`mqtrace.link.type = replaced`); the last consumer continues the relay's send span.
#[tokio::test]
async fn the_replace_rule_writes_the_relays_context_and_links_the_forwarded_one() {
    within(async {
        let (t, q_in, q_out, headers) = relay(ExistingContext::Replace).await;
        let spans = t.spans();
        let first = spans.one(&format!("publish {q_in}"));
        let relay_process = spans.one(&format!("process {q_in}"));
        let forward = spans.one(&format!("publish {q_out}"));
        assert_relay_send(ExistingContext::Replace, forward, relay_process, first);
        let last = spans.one(&format!("process {q_out}"));
        last.assert_child_of(forward);
        assert_eq!(
            table_text(&headers, "traceparent"),
            Some(traceparent_of(&forward.span_context))
        );
        // The relay's context carries the baggage it received, written anew.
        assert_eq!(
            table_text(&headers, "baggage").as_deref(),
            Some("tenant=acme")
        );
        assert_eq!(table_text(&headers, "order-id").as_deref(), Some("o-7"));
    })
    .await;
}

/// Under `ExistingContext::Replace`, a handler that republishes a received message's header
/// table while handling another context: the forwarded `traceparent`, `tracestate` and
/// `baggage` are replaced whole by the current context's, never sent beside it.
#[tokio::test]
async fn forwarded_headers_carry_one_context_the_current_one_under_replace() {
    within(async {
        let (t, _conn, ch) = setup(|c| c.with_existing_context(ExistingContext::Replace)).await;
        let (q_in, q_out) = (unique("fwd-in"), unique("fwd-out"));
        declare_queue(&ch, &q_in, FieldTable::default()).await;
        declare_queue(&ch, &q_out, FieldTable::default()).await;
        let stale = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
        let mut forwarded = FieldTable::default();
        for (k, v) in [
            ("traceparent", stale),
            ("tracestate", "stale=1"),
            ("baggage", "tenant=old"),
            ("order-id", "o-7"),
        ] {
            forwarded.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
        }
        // The headers of a message received earlier, republished inside a span of a new trace.
        let root = t.provider().tracer("app").start("new work");
        let cx = Context::current_with_span(root);
        publish(
            &ch,
            "",
            &q_out,
            b"x",
            BasicProperties::default().with_headers(forwarded),
        )
        .with_context(cx.clone())
        .await;
        cx.span().end();
        let got = Channel::basic_get(
            &ch,
            q_out.as_str().into(),
            lapin::options::BasicGetOptions { no_ack: true },
        )
        .await
        .expect("basic_get")
        .expect("a message");
        let headers = got.properties.headers().clone().expect("headers");
        let text = |k: &str| match headers.inner().get(k) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        };
        let spans = wait(&t, &format!("publish {q_out}"), 1).await;
        let send = spans.one(&format!("publish {q_out}"));
        let traceparent = text("traceparent").expect("a traceparent");
        assert!(
            traceparent.contains(&send.span_context.trace_id().to_string())
                && traceparent.contains(&send.span_context.span_id().to_string()),
            "{traceparent} is not the send span's"
        );
        assert_eq!(
            text("tracestate"),
            None,
            "the forwarded tracestate was kept"
        );
        assert_eq!(text("baggage"), None, "the forwarded baggage was kept");
        assert_eq!(
            text("order-id").as_deref(),
            Some("o-7"),
            "a user header was lost"
        );
    })
    .await;
}

#[test]
fn a_confirm_dropped_outside_a_runtime_records_abandoned_on_span_and_metric() {
    let t = TestTelemetry::new();
    let queue = unique("abandoned");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    let (conn, confirm) = runtime.block_on(async {
        let conn = rabbitmq(t.config().with_metrics(true)).await;
        let ch = conn.create_channel().await.expect("create_channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        // A named, expiring queue: one declared `auto_delete` through the traced channel
        // would be temporary, its publish span named `publish` and its name kept off metrics.
        declare_queue(&ch, &queue, FieldTable::default()).await;
        let confirm = ch
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                BasicProperties::default(),
            )
            .await
            .expect("basic_publish");
        (conn, confirm)
    });
    // No runtime here: nothing can wait for the confirm, so the span ends at the drop.
    drop(confirm);
    let spans = t.spans();
    let send = spans.one(&format!("publish {queue}"));
    send.assert_attr_str(attr::ERROR_TYPE, "abandoned");
    assert!(send.is_error());
    let points = t.metric("messaging.client.operation.duration");
    let ours: Vec<_> = points
        .iter()
        .filter(|p| p.attr_str(attr::MESSAGING_DESTINATION_NAME) == Some(queue.as_str()))
        .collect();
    assert_eq!(ours.len(), 1, "{points:?}");
    assert_eq!(ours[0].attr_str(attr::ERROR_TYPE), Some("abandoned"));
    drop(conn);
}

/// Anyone can publish to a queue: on one the trust policy does not trust and that no
/// `RetryQueues` declared, forged history headers (an attempt, a previous attempt, an origin,
/// a not-before) are refused and said so, not believed: the attempt is 1 and no origin or
/// previous-attempt link. The same headers on a trusted queue are believed.
#[tokio::test]
async fn forged_history_headers_on_an_untrusted_normal_queue_are_refused() {
    within(async {
        let untrusted = unique("forged-history");
        let trusted = unique("forged-history-trusted");
        let distrust = untrusted.clone();
        let (t, _conn, ch) =
            setup(move |c| c.with_trust(Trust::untrusted_sources([distrust]))).await;
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let mut forged = FieldTable::default();
        forged.insert(mqtrace::ATTEMPT_HEADER.into(), AMQPValue::LongLongInt(7));
        forged.insert(
            mqtrace::retry::PREVIOUS_ATTEMPT_HEADER.into(),
            AMQPValue::LongString("00-11111111111111111111111111111111-2222222222222222-01".into()),
        );
        forged.insert(
            mqtrace::retry::ORIGIN_HEADER.into(),
            AMQPValue::LongString("00-33333333333333333333333333333333-4444444444444444-01".into()),
        );
        forged.insert(
            mqtrace::retry::NOT_BEFORE_HEADER.into(),
            AMQPValue::LongString("99999999999999".into()),
        );
        let props = BasicProperties::default().with_headers(forged.clone());
        for (q, believed) in [(&untrusted, false), (&trusted, true)] {
            declare_queue(&ch, q, FieldTable::default()).await;
            publish_raw(&ch, q, b"x", props.clone()).await;
            let mut consumer = consume(&ch, q).await;
            let d = next_delivery(&mut consumer).await;
            assert_eq!(d.attempt(), if believed { 7 } else { 1 }, "{q}");
            assert_eq!(
                d.properties.headers().as_ref(),
                Some(&forged),
                "headers unchanged"
            );
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let spans = wait(&t, &format!("ack {trusted}"), 1).await;
        let refused = spans.one(&format!("process {untrusted}"));
        refused.assert_attr_i64(attr::DELIVERY_ATTEMPT, 1);
        assert!(refused.link_of_type("origin").is_none());
        assert!(refused.link_of_type("previous_attempt").is_none());
        assert_eq!(
            refused.attr_str(attr::CONTEXT_REFUSED),
            Some(
                "mqtrace-attempt: untrusted source; mqtrace-previous-attempt: untrusted source; \
                 mqtrace-origin: untrusted source; mqtrace-not-before: untrusted source"
            )
        );
        let believed = spans.one(&format!("process {trusted}"));
        believed.assert_attr_i64(attr::DELIVERY_ATTEMPT, 7);
        assert!(believed.link_of_type("origin").is_some());
        assert_eq!(believed.attr(attr::CONTEXT_REFUSED), None);
    })
    .await;
}
