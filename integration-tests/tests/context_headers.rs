//! Context headers written by other producers, through the real brokers: several
//! `traceparent` values on one message (Spring-style duplicates: the last valid one is used and
//! `mqtrace.context.duplicate` recorded, issue 10), and header names in another case
//! (`TraceParent`: read ignoring case, written lowercase, issue 11). Messages are produced
//! with the raw lapin and rdkafka clients, as another team's service would.

use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldArray, FieldTable, LongString};
use lapin::{BasicProperties, Channel};
use mqtrace::attributes as attr;
use mqtrace::testing::{SpanDataExt, Spans, TestTelemetry};
use mqtrace::{Outcome, Traced};
use mqtrace_integration_tests::kafka::{self, client_config, create_topic, next_message};
use mqtrace_integration_tests::{WAIT, next_delivery, rabbitmq, unique};
use opentelemetry::context::FutureExt;
use opentelemetry::trace::SpanContext;
use rdkafka::consumer::CommitMode;
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use std::future::Future;
use std::time::Duration;

const FIRST: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
const LAST: &str = "00-12345678901234567890123456789012-1234567890123456-01";

fn sc(tp: &str) -> SpanContext {
    mqtrace::w3c::parse_traceparent(tp).expect("valid traceparent")
}

async fn within<F: Future<Output = ()>>(body: F) {
    if tokio::time::timeout(Duration::from_secs(90), body)
        .await
        .is_err()
    {
        panic!("test did not finish within 90 s");
    }
}

async fn wait(t: &TestTelemetry, name: &str, count: usize) -> Spans {
    t.wait_for(|s| s.named(name).len() >= count, WAIT)
        .await
        .unwrap_or_else(|e| panic!("waiting for {count} span(s) {name:?}: {e}"))
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()))
}

async fn declare(ch: &Channel, q: &str) {
    let mut args = FieldTable::default();
    args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
    ch.queue_declare(q.into(), QueueDeclareOptions::default(), args)
        .await
        .expect("queue_declare");
}

async fn publish_raw(ch: &Channel, q: &str, headers: FieldTable) {
    Channel::basic_publish(
        ch,
        "".into(),
        q.into(),
        BasicPublishOptions::default(),
        b"body",
        BasicProperties::default().with_headers(headers),
    )
    .await
    .expect("basic_publish")
    .await
    .expect("confirm");
}

fn is_duplicate(span: &opentelemetry_sdk::trace::SpanData) -> bool {
    span.attr(attr::CONTEXT_DUPLICATE) == Some(&opentelemetry::Value::Bool(true))
}

/// Two `traceparent` values in one AMQP header (an array, all another client can send under
/// one table key), the last one valid or not; the message itself arrives unchanged.
#[tokio::test]
async fn rabbitmq_several_traceparents_use_the_last_valid_one() {
    within(async {
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("channel");
        let q = unique("dup-tp");
        declare(&ch, &q).await;
        let cases = [
            ("both-valid", vec![long(FIRST), long(LAST)], LAST),
            ("last-invalid", vec![long(LAST), long("00-zz")], LAST),
        ];
        for (label, values, _) in &cases {
            let mut h = FieldTable::default();
            h.insert(
                "traceparent".into(),
                AMQPValue::FieldArray(FieldArray::from(values.clone())),
            );
            h.insert("case".into(), long(label));
            publish_raw(&ch, &q, h).await;
        }
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume");
        for (_, values, _) in &cases {
            let d = next_delivery(&mut consumer).await;
            let h = d.properties.headers().as_ref().expect("headers");
            assert_eq!(
                h.inner().get("traceparent"),
                Some(&AMQPValue::FieldArray(FieldArray::from(values.clone()))),
                "headers unchanged"
            );
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let spans = wait(&t, &format!("ack {q}"), cases.len()).await;
        let processes = spans.named(&format!("process {q}"));
        assert_eq!(processes.len(), 2);
        for p in processes {
            p.assert_parent_context(&sc(LAST));
            assert!(
                is_duplicate(p),
                "{:?}: duplicate not recorded",
                p.attributes
            );
            assert!(
                p.attr(attr::CONTEXT_ERROR).is_none(),
                "{:?}",
                p.attr(attr::CONTEXT_ERROR)
            );
            p.assert_attr(attr::OUTCOME, "ack");
        }
    })
    .await;
}

/// `TraceParent`/`TraceState`/`Baggage` from a peer: the trace continues, and the next hop's
/// headers are lowercase, with the random flag and the multi-tenant trace state kept.
#[tokio::test]
async fn rabbitmq_mixed_case_header_names_are_read_and_written_lowercase() {
    within(async {
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("channel");
        let (q, next) = (unique("case-in"), unique("case-out"));
        declare(&ch, &q).await;
        declare(&ch, &next).await;
        let incoming = "00-12345678901234567890123456789012-1234567890123456-03";
        let mut h = FieldTable::default();
        h.insert("TraceParent".into(), long(incoming));
        h.insert("TraceState".into(), long("foo@bar@baz=1,rojo=2"));
        h.insert("Baggage".into(), long("tenant=10%25"));
        publish_raw(&ch, &q, h).await;

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
        assert_eq!(d.span_context().trace_id(), sc(incoming).trace_id());
        let cx = d.context().clone();
        ch.basic_publish(
            "".into(),
            next.as_str().into(),
            BasicPublishOptions::default(),
            b"forwarded",
            BasicProperties::default(),
        )
        .with_context(cx)
        .await
        .expect("publish")
        .await
        .expect("confirm");
        d.ack(BasicAckOptions::default()).await.expect("ack");

        let mut out = ch
            .basic_consume(
                next.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("consume next");
        let d2 = next_delivery(&mut out).await;
        let h = d2.properties.headers().clone().expect("headers");
        let text = |k: &str| match h.inner().get(k) {
            Some(AMQPValue::LongString(s)) => {
                Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
            }
            _ => None,
        };
        let keys: Vec<String> = h.inner().keys().map(|k| k.as_str().to_owned()).collect();
        assert!(
            keys.iter().all(|k| k == &k.to_ascii_lowercase()),
            "{keys:?}"
        );
        let tp = text("traceparent").expect("traceparent written");
        assert_eq!(&tp[3..35], "12345678901234567890123456789012");
        assert_eq!(&tp[53..], "03", "random flag kept: {tp}");
        assert_eq!(text("tracestate").as_deref(), Some("foo@bar@baz=1,rojo=2"));
        assert_eq!(text("baggage").as_deref(), Some("tenant=10%25"));
        d2.ack(BasicAckOptions::default()).await.expect("ack");

        let spans = wait(&t, &format!("ack {next}"), 1).await;
        let p = spans.one(&format!("process {q}"));
        p.assert_parent_context(&sc(incoming));
        assert!(!is_duplicate(p));
        spans
            .one(&format!("process {next}"))
            .assert_child_of(spans.one(&format!("publish {next}")));
    })
    .await;
}

async fn send_raw(raw: &FutureProducer, topic: &str, key: &str, headers: OwnedHeaders) {
    raw.send(
        FutureRecord::<str, [u8]>::to(topic)
            .key(key)
            .payload(b"body")
            .headers(headers),
        Duration::from_secs(10),
    )
    .await
    .unwrap_or_else(|(e, _)| panic!("raw send: {e}"));
}

/// Two `traceparent` headers on one Kafka record, as spring-kafka can send; and a
/// `TraceParent` header from a peer.
#[tokio::test]
async fn kafka_several_traceparents_and_mixed_case_names() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("ctx-headers");
        create_topic(&topic, 1).await;
        let raw: FutureProducer = client_config().create().expect("raw producer");
        let tp = |v: &'static str| Header {
            key: "traceparent",
            value: Some(v),
        };
        let cases: Vec<(&str, OwnedHeaders, &str, bool)> = vec![
            (
                "both-valid",
                OwnedHeaders::new().insert(tp(FIRST)).insert(tp(LAST)),
                LAST,
                true,
            ),
            (
                "last-invalid",
                OwnedHeaders::new().insert(tp(LAST)).insert(tp("00-zz")),
                LAST,
                true,
            ),
            (
                "mixed-case",
                OwnedHeaders::new()
                    .insert(Header {
                        key: "TraceParent",
                        value: Some(LAST),
                    })
                    .insert(Header {
                        key: "TRACESTATE",
                        value: Some("t@vvvvvvvvvvvvvvv=1"),
                    }),
                LAST,
                false,
            ),
        ];
        for (name, headers, _, _) in &cases {
            send_raw(&raw, &topic, name, headers.clone()).await;
        }
        let c = kafka::consumer(t.config(), &unique("g"), &[&topic]);
        let mut span_of = std::collections::HashMap::new();
        for (name, headers, _, _) in &cases {
            let m = next_message(&c).await;
            assert_eq!(m.key(), Some(name.as_bytes()));
            let got: Vec<(String, Option<Vec<u8>>)> = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            let want: Vec<(String, Option<Vec<u8>>)> = headers
                .iter()
                .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                .collect();
            assert_eq!(got, want, "{name}: headers unchanged");
            span_of.insert(name.to_string(), m.span_context().span_id());
            c.commit_message(&m, CommitMode::Sync).expect("commit");
            m.finish(Outcome::Ack);
        }
        let process = format!("process {topic}");
        let spans = wait(&t, &process, cases.len()).await;
        for (name, _, parent, duplicate) in &cases {
            let p = spans
                .named(&process)
                .into_iter()
                .find(|s| s.span_context.span_id() == span_of[*name])
                .unwrap_or_else(|| panic!("{name}: no process span"));
            p.assert_parent_context(&sc(parent));
            assert_eq!(is_duplicate(p), *duplicate, "{name}");
            assert!(
                p.attr(attr::CONTEXT_ERROR).is_none(),
                "{name}: {:?}",
                p.attr(attr::CONTEXT_ERROR)
            );
        }
    })
    .await;
}
