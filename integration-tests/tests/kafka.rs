//! mqtrace-rdkafka against a real Kafka-protocol broker over TCP (`KAFKA_BOOTSTRAP_SERVERS`,
//! default 127.0.0.1:9092: Tansu from `scripts/start-brokers.sh kafka`, or Apache Kafka), plus
//! librdkafka's in-process mock cluster for fault injection only (failing commits and
//! deliveries).
//!
//! Every test uses its own tracer provider and uniquely named topics and groups, so they run
//! in parallel. Every test and every receive has a time limit.

use futures_util::StreamExt;
use mqtrace::Outcome;
use mqtrace::attributes as attr;
use mqtrace::testing::{SpanDataExt, Spans, TestTelemetry};
use mqtrace_integration_tests::kafka::{
    self, client_config, consumer, consumer_config, consumer_with, create_topic, first_server,
    next_message, try_kafka,
};
use mqtrace_integration_tests::support::{
    self, assert_relay_send, fast, python_context, python_span, traceparent_of, wait, within,
};
use mqtrace_integration_tests::{WAIT, unique};
use mqtrace_rdkafka::prelude::*;
use mqtrace_rdkafka::{
    CommitReporting, TracedBaseConsumer, TracedBaseProducer, TracedFutureProducer, TracedMessage,
    TracedStreamConsumer, TracedThreadedProducer,
};
use opentelemetry::Context;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider,
};
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{BorrowedMessage, Header, Headers, Message, OwnedHeaders};
use rdkafka::mocking::MockCluster;
use rdkafka::producer::{
    BaseRecord, DeliveryResult, FutureProducer, FutureRecord, Producer, ProducerContext,
};
use rdkafka::topic_partition_list::Offset;
use rdkafka::types::{RDKafkaApiKey, RDKafkaRespErr};
use rdkafka::{ClientConfig, ClientContext};
use std::collections::{BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

const SEND_TIMEOUT: Duration = Duration::from_secs(10);

/// Sends one record and waits for the delivery report.
async fn send(
    p: &TracedFutureProducer,
    topic: &str,
    key: &str,
    payload: Option<&[u8]>,
    headers: Option<OwnedHeaders>,
) -> rdkafka::producer::future_producer::Delivery {
    let mut record = FutureRecord::<str, [u8]>::to(topic).key(key);
    record.payload = payload;
    record.headers = headers;
    p.send(record, SEND_TIMEOUT)
        .await
        .unwrap_or_else(|(e, _)| panic!("delivery to {topic}: {e}"))
}

type Pairs = Vec<(String, Option<Vec<u8>>)>;

fn pairs<H: Headers>(h: Option<&H>) -> Pairs {
    h.map(|h| {
        h.iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect()
    })
    .unwrap_or_default()
}

/// Headers of every kind a user may send: binary, empty, null-valued, repeated, non-ASCII.
fn user_headers() -> OwnedHeaders {
    OwnedHeaders::new()
        .insert(Header {
            key: "bin",
            value: Some(&[0_u8, 159, 146, 150, 255][..]),
        })
        .insert(Header {
            key: "empty",
            value: Some(&b""[..]),
        })
        .insert(Header {
            key: "null",
            value: None::<&[u8]>,
        })
        .insert(Header {
            key: "dup",
            value: Some("first"),
        })
        .insert(Header {
            key: "dup",
            value: Some("second"),
        })
        .insert(Header {
            key: "utf8",
            value: Some("héllo"),
        })
}

/// What a consumer saw of a message: key, payload, headers.
type Seen = (Option<Vec<u8>>, Option<Vec<u8>>, Pairs);

fn seen(m: &BorrowedMessage<'_>) -> Seen {
    (
        m.key().map(<[u8]>::to_vec),
        m.payload().map(<[u8]>::to_vec),
        pairs(m.headers()),
    )
}

#[tokio::test]
async fn send_then_consume_in_a_group_is_one_trace_with_exact_parents_links_names_kinds_and_attributes()
 {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("orders");
        let group = unique("billing");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config().with_message_key(true));

        // The application's own span around the send.
        let app = t.provider().tracer("app");
        let cx = Context::current_with_span(app.start("checkout"));
        let delivery =
            async { send(&producer, &topic, "order-1", Some(b"{\"order\":1}"), None).await }
                .with_context(cx.clone())
                .await;
        cx.span().end();

        let consumer = consumer(t.config().with_message_key(true), &group, &[&topic]);
        let message = next_message(&consumer).await;
        assert_eq!(message.payload(), Some(&b"{\"order\":1}"[..]));
        assert_eq!(message.key(), Some(&b"order-1"[..]));
        assert_eq!(message.offset(), delivery.offset);
        let headers = pairs(message.headers());
        let traceparents: Vec<_> = headers.iter().filter(|(k, _)| k == "traceparent").collect();
        assert_eq!(traceparents.len(), 1, "{headers:?}");
        let traceparent = String::from_utf8(traceparents[0].1.clone().expect("a value"))
            .expect("UTF-8 traceparent");
        assert!(
            headers.iter().all(|(k, _)| k != "tracestate"),
            "an empty tracestate must not be written"
        );
        assert_eq!(message.attempt(), 1);
        let handler = t.provider().tracer("handler");
        message
            .in_span(async {
                tokio::task::yield_now().await;
                handler.start("handle").end();
            })
            .await;
        consumer
            .commit_message(&message, CommitMode::Sync)
            .expect("commit");
        drop(message);

        let spans = wait(&t, &format!("commit {topic}"), 1).await;
        let checkout = spans.one("checkout");
        let send = spans.one(&format!("send {topic}"));
        let process = spans.one(&format!("process {topic}"));
        let handle = spans.one("handle");
        let commit = spans.one(&format!("commit {topic}"));

        // One trace: checkout -> send -> process -> (handle, commit).
        send.assert_child_of(checkout);
        process.assert_child_of(send);
        assert!(process.parent_span_is_remote);
        process.assert_links_to(&send.span_context);
        assert_eq!(process.links.links.len(), 1);
        handle.assert_child_of(process);
        commit.assert_child_of(process);
        assert_eq!(traceparent, traceparent_of(&send.span_context));

        send.assert_kind(SpanKind::Producer);
        process.assert_kind(SpanKind::Consumer);
        commit.assert_kind(SpanKind::Client);
        let (host, port) = first_server();
        for (span, op, ty) in [
            (send, "send", "send"),
            (process, "process", "process"),
            (commit, "commit", "settle"),
        ] {
            span.assert_attr(attr::MESSAGING_SYSTEM, "kafka");
            span.assert_attr_str(attr::MESSAGING_OPERATION_NAME, op);
            span.assert_attr_str(attr::MESSAGING_OPERATION_TYPE, ty);
            span.assert_attr_str(attr::MESSAGING_DESTINATION_NAME, &topic);
            span.assert_attr(attr::MESSAGING_DESTINATION_PARTITION_ID, "0");
            span.assert_attr_i64(attr::MESSAGING_KAFKA_OFFSET, delivery.offset);
            // No client.id set: an id of the client instance, not librdkafka's `rdkafka`.
            assert!(
                span.attr_str(attr::MESSAGING_CLIENT_ID)
                    .is_some_and(|id| id.starts_with("rdkafka-")),
                "{}: {:?}",
                span.name,
                span.attr(attr::MESSAGING_CLIENT_ID)
            );
            span.assert_attr_str(attr::SERVER_ADDRESS, &host);
            span.assert_attr_i64(attr::SERVER_PORT, i64::from(port));
            assert!(
                !span.is_error(),
                "{} is an error: {:?}",
                span.name,
                span.status
            );
            assert!(span.attr(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE).is_none());
            assert!(span.attr(attr::MESSAGING_MESSAGE_BODY_SIZE).is_none());
        }
        assert!(send.attr(attr::MESSAGING_CONSUMER_GROUP_NAME).is_none());
        for span in [process, commit] {
            span.assert_attr_str(attr::MESSAGING_CONSUMER_GROUP_NAME, &group);
            span.assert_attr(attr::OUTCOME, "ack");
        }
        for span in [send, process] {
            span.assert_attr(attr::MESSAGING_KAFKA_MESSAGE_KEY, "order-1");
        }
        process.assert_attr_i64(attr::DELIVERY_ATTEMPT, 1);
        assert!(process.attr(attr::CONTEXT_ERROR).is_none());
        assert!(
            process.end_time >= commit.end_time,
            "the process span covers the commit"
        );

        // The commit reached the broker.
        let committed = consumer.committed(SEND_TIMEOUT).expect("committed offsets");
        let elem = committed
            .find_partition(&topic, 0)
            .expect("partition 0 committed");
        assert_eq!(elem.offset(), Offset::Offset(delivery.offset + 1));
    })
    .await;
}

#[tokio::test]
async fn user_headers_arrive_byte_for_byte_as_the_raw_client_delivers_them() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("headers");
        create_topic(&topic, 1).await;
        let raw: FutureProducer = client_config().create().expect("raw producer");
        let traced = kafka::producer(
            t.config()
                .with_existing_context(mqtrace::ExistingContext::Replace),
        );

        // 1. The raw client, 2. the traced producer, 3. the traced producer forwarding a
        // context copied from another message (replaced, not duplicated, under
        // `ExistingContext::Replace`).
        let record = |payload: &'static [u8], headers| {
            FutureRecord::<str, [u8]>::to(&topic)
                .key("k")
                .payload(payload)
                .headers(headers)
        };
        raw.send(record(b"one", user_headers()), SEND_TIMEOUT)
            .await
            .expect("raw send");
        let forwarded = user_headers()
            .insert(Header {
                key: "traceparent",
                value: Some("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
            })
            .insert(Header {
                key: "tracestate",
                value: Some("old=1"),
            });
        traced
            .send(record(b"two", user_headers()), SEND_TIMEOUT)
            .await
            .expect("traced send");
        traced
            .send(record(b"three", forwarded), SEND_TIMEOUT)
            .await
            .expect("traced send");

        // What the raw client delivers.
        let raw_consumer: StreamConsumer = consumer_config(&unique("raw"))
            .create()
            .expect("raw consumer");
        raw_consumer.subscribe(&[&topic]).expect("subscribe");
        let mut raw_seen = Vec::new();
        for _ in 0..3 {
            let m = tokio::time::timeout(WAIT, raw_consumer.recv())
                .await
                .expect("a message in time")
                .expect("a message");
            raw_seen.push(seen(&m));
        }
        // What the traced consumer hands to the application: the same.
        let traced_consumer = consumer(t.config(), &unique("traced"), &[&topic]);
        for expected in &raw_seen {
            let m = next_message(&traced_consumer).await;
            assert_eq!(&seen(m.message()), expected);
            m.finish(Outcome::Ack);
        }

        let spans = wait(&t, &format!("send {topic}"), 2).await;
        let sends = spans.named(&format!("send {topic}"));
        let user = pairs(Some(&user_headers()));
        assert_eq!(raw_seen[0].2, user, "the raw client's baseline");
        for (i, body) in [(1, &b"two"[..]), (2, &b"three"[..])] {
            assert_eq!(raw_seen[i].1.as_deref(), Some(body));
            assert_eq!(raw_seen[i].0.as_deref(), Some(&b"k"[..]));
            let (ours, theirs): (Pairs, Pairs) = raw_seen[i]
                .2
                .iter()
                .cloned()
                .partition(|(k, _)| k == "traceparent");
            assert_eq!(theirs, user, "message {body:?}: user headers kept exactly");
            assert_eq!(ours.len(), 1, "one traceparent on {body:?}: {ours:?}");
            let tp = String::from_utf8(ours[0].1.clone().expect("value")).expect("UTF-8");
            assert!(
                sends.iter().any(|s| traceparent_of(&s.span_context) == tp),
                "traceparent {tp} is the send span's"
            );
        }
    })
    .await;
}

#[tokio::test]
async fn malformed_context_gives_a_new_root_with_the_reason_and_the_message_arrives_unchanged() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("malformed");
        create_topic(&topic, 1).await;
        let raw: FutureProducer = client_config().create().expect("raw producer");
        let cases: Vec<(&str, OwnedHeaders, &str)> = vec![
            (
                "not-hex",
                OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some("00-not-hex"),
                }),
                "traceparent: length 10, expected 55",
            ),
            (
                "zero-trace-id",
                OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some("00-00000000000000000000000000000000-b7ad6b7169203331-01"),
                }),
                "traceparent: trace-id is all zeros",
            ),
            (
                "not-utf8",
                OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: Some(&[0xff_u8, 0xfe, 0x00][..]),
                }),
                "traceparent: value is not valid UTF-8",
            ),
            (
                "null",
                OwnedHeaders::new().insert(Header {
                    key: "traceparent",
                    value: None::<&[u8]>,
                }),
                "traceparent: value has type null, expected a string",
            ),
            // Two traceparent headers: the last valid one is used (tests/context_headers.rs).
        ];
        let mut sent = Vec::new();
        for (name, headers, _) in &cases {
            let expected = pairs(Some(headers));
            raw.send(
                FutureRecord::to(&topic)
                    .key(*name)
                    .payload(name.as_bytes())
                    .headers(headers.clone()),
                SEND_TIMEOUT,
            )
            .await
            .expect("raw send");
            sent.push(expected);
        }
        let c = consumer(t.config(), &unique("g"), &[&topic]);
        let mut trace_of = HashMap::new();
        for ((name, _, _), expected) in cases.iter().zip(&sent) {
            let m = next_message(&c).await;
            assert_eq!(m.key(), Some(name.as_bytes()));
            assert_eq!(m.payload(), Some(name.as_bytes()), "payload unchanged");
            assert_eq!(&pairs(m.headers()), expected, "headers unchanged");
            trace_of.insert(m.span_context().trace_id(), *name);
            c.commit_message(&m, CommitMode::Sync).expect("commit");
        }
        let process = format!("process {topic}");
        let spans = wait(&t, &process, cases.len()).await;
        for span in spans.named(&process) {
            let name = trace_of[&span.span_context.trace_id()];
            let (_, _, reason) = cases.iter().find(|(n, _, _)| *n == name).expect("a case");
            span.assert_root();
            assert!(span.links.links.is_empty(), "{name}: nothing to link");
            span.assert_attr_str(attr::CONTEXT_ERROR, reason);
            span.assert_attr(attr::OUTCOME, "ack");
        }
    })
    .await;
}

#[tokio::test]
async fn async_commits_and_auto_commits_of_stored_offsets_are_recorded() {
    within(async {
        let t = TestTelemetry::new();
        let producer = kafka::producer(t.config());

        // A manual asynchronous commit: librdkafka reports no answer, so the commit span
        // ends once the commit is handed over, saying so.
        let manual = unique("manual");
        create_topic(&manual, 1).await;
        send(&producer, &manual, "k", Some(b"a"), None).await;
        let c = consumer(t.config(), &unique("g"), &[&manual]);
        let m = next_message(&c).await;
        c.commit_message(&m, CommitMode::Async)
            .expect("async commit");
        drop(m);
        let spans = wait(&t, &format!("commit {manual}"), 1).await;
        let commit = spans.one(&format!("commit {manual}"));
        let process = spans.one(&format!("process {manual}"));
        commit.assert_child_of(process);
        commit.assert_attr(attr::OUTCOME, "ack");
        assert!(!commit.is_error());
        assert!(
            commit
                .events
                .iter()
                .any(|e| e.name == "mqtrace.settle.unreported")
        );
        process.assert_attr(attr::OUTCOME, "ack");

        // A stored offset committed by librdkafka's auto-commit: the commit span ends when
        // the commit callback reports it; the process span ends at the store.
        let auto = unique("auto");
        create_topic(&auto, 1).await;
        let delivery = send(&producer, &auto, "k", Some(b"b"), None).await;
        let mut client = consumer_config(&unique("g"));
        client
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "200");
        let c = consumer_with(t.config(), client, &[&auto]);
        let m = next_message(&c).await;
        c.store_offset_from_message(&m).expect("store");
        drop(m);
        let commit_name = format!("commit {auto}");
        assert!(
            t.spans().find(&commit_name).is_none(),
            "waits for the report"
        );
        assert_eq!(c.context().commit_tracker().waiting(), 1);
        let deadline = Instant::now() + WAIT;
        while t.spans().find(&commit_name).is_none() {
            assert!(
                Instant::now() < deadline,
                "no commit report within {WAIT:?}"
            );
            // Polling delivers the commit callback.
            let _ = tokio::time::timeout(Duration::from_millis(200), c.recv()).await;
        }
        assert_eq!(c.context().commit_tracker().waiting(), 0);
        let spans = t.spans();
        let commit = spans.one(&commit_name);
        let process = spans.one(&format!("process {auto}"));
        commit.assert_child_of(process);
        commit.assert_kind(SpanKind::Client);
        commit.assert_attr(attr::OUTCOME, "ack");
        commit.assert_attr_i64(attr::MESSAGING_KAFKA_OFFSET, delivery.offset);
        assert!(!commit.is_error(), "{:?}", commit.status);
        assert!(
            commit
                .events
                .iter()
                .all(|e| e.name != "mqtrace.settle.unreported")
        );
        process.assert_attr(attr::OUTCOME, "ack");
        assert!(
            commit.end_time > process.end_time,
            "the process span ended at the store"
        );
        let committed = c.committed(SEND_TIMEOUT).expect("committed");
        assert_eq!(
            committed.find_partition(&auto, 0).map(|e| e.offset()),
            Some(Offset::Offset(delivery.offset + 1))
        );
    })
    .await;
}

/// A mock cluster with one topic of one partition and `n` messages on it, sent traced.
async fn mock_with_messages(
    t: &TestTelemetry,
    topic: &str,
    n: usize,
) -> MockCluster<'static, rdkafka::producer::DefaultProducerContext> {
    let mock = MockCluster::new(1).expect("mock cluster");
    mock.create_topic(topic, 1, 1).expect("mock topic");
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", mock.bootstrap_servers());
    let producer = TracedFutureProducer::create(&client, t.config()).expect("producer");
    for i in 0..n {
        let key = format!("k{i}");
        producer
            .send(FutureRecord::to(topic).key(&key).payload("x"), SEND_TIMEOUT)
            .await
            .unwrap_or_else(|(e, _)| panic!("mock delivery: {e}"));
    }
    mock
}

fn mock_consumer(
    mock: &MockCluster<'static, rdkafka::producer::DefaultProducerContext>,
    t: &TestTelemetry,
    topic: &str,
    auto_commit: bool,
) -> TracedStreamConsumer {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", mock.bootstrap_servers())
        .set("group.id", unique("g"))
        .set("auto.offset.reset", "earliest")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set(
            "enable.auto.commit",
            if auto_commit { "true" } else { "false" },
        )
        .set("enable.auto.offset.store", "false")
        .set("auto.commit.interval.ms", "200");
    let c = TracedStreamConsumer::create(&client, t.config()).expect("consumer");
    c.subscribe(&[topic]).expect("subscribe");
    c
}

#[tokio::test]
async fn failing_commits_are_recorded_as_errors_on_the_mock_cluster() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("failing");
        let mock = mock_with_messages(&t, &topic, 2).await;

        // A synchronous commit the broker refuses.
        let c = mock_consumer(&mock, &t, &topic, false);
        let m = next_message(&c).await;
        mock.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
        );
        let err = c.commit_message(&m, CommitMode::Sync).expect_err("refused");
        assert_eq!(
            err.rdkafka_error_code(),
            Some(RDKafkaErrorCode::GroupAuthorizationFailed)
        );
        drop(m);
        drop(c);
        let spans = wait(&t, &format!("commit {topic}"), 1).await;
        let commit = spans.one(&format!("commit {topic}"));
        let process = spans.one(&format!("process {topic}"));
        commit.assert_child_of(process);
        assert!(commit.is_error() && process.is_error());
        commit.assert_attr(attr::ERROR_TYPE, "GroupAuthorizationFailed");
        // The commit failed: the message was not settled, and the process span says so.
        process.assert_attr(attr::OUTCOME, "unsettled");
        process.assert_attr(attr::ERROR_TYPE, "GroupAuthorizationFailed");

        // An auto-commit of a stored offset the broker refuses, reported by the callback.
        let t = TestTelemetry::new();
        let c = mock_consumer(&mock, &t, &topic, true);
        let m = next_message(&c).await;
        mock.request_errors(
            RDKafkaApiKey::OffsetCommit,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_GROUP_AUTHORIZATION_FAILED],
        );
        c.store_offset_from_message(&m).expect("store");
        m.finish(Outcome::Ack); // already settled: nothing more is recorded
        drop(m);
        let commit_name = format!("commit {topic}");
        let deadline = Instant::now() + WAIT;
        while t.spans().find(&commit_name).is_none() {
            assert!(
                Instant::now() < deadline,
                "no commit report within {WAIT:?}"
            );
            // Polling delivers the commit callback (and the second message).
            if let Ok(Ok(m)) = tokio::time::timeout(Duration::from_millis(200), c.recv()).await {
                m.finish(Outcome::Ack);
            }
        }
        let spans = t.spans();
        let commit = spans.one(&commit_name);
        assert!(commit.is_error(), "{:?}", commit.status);
        commit.assert_attr(attr::ERROR_TYPE, "GroupAuthorizationFailed");
        let process = spans
            .named(&format!("process {topic}"))
            .into_iter()
            .find(|p| p.attr_i64(attr::MESSAGING_KAFKA_OFFSET) == Some(0))
            .expect("the process span of offset 0");
        commit.assert_child_of(process);
        // The process span ended at the store, before the answer: the error is the commit's.
        process.assert_attr(attr::OUTCOME, "ack");
        assert!(!process.is_error());
    })
    .await;
}

#[tokio::test]
async fn delivery_failures_are_recorded_with_the_kafka_error_code() {
    within(async {
        let t = TestTelemetry::new();
        // An oversized message, against the real broker.
        let topic = unique("big");
        create_topic(&topic, 1).await;
        let mut client = client_config();
        client.set("message.max.bytes", "10000");
        let producer = TracedFutureProducer::create(&client, t.config()).expect("producer");
        let big = vec![7_u8; 20_000];
        let (err, message) = producer
            .send(
                FutureRecord::to(&topic).key("k").payload(&big),
                SEND_TIMEOUT,
            )
            .await
            .expect_err("too large");
        assert_eq!(
            err,
            KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge)
        );
        assert_eq!(message.payload(), Some(&big[..]), "the message comes back");
        let spans = wait(&t, &format!("send {topic}"), 1).await;
        let span = spans.one(&format!("send {topic}"));
        assert!(span.is_error());
        span.assert_attr(attr::ERROR_TYPE, "MessageSizeTooLarge");
        assert!(span.attr(attr::MESSAGING_KAFKA_OFFSET).is_none());

        // A produce request the broker refuses (mock cluster), through the future producer
        // and through the delivery callback of a threaded producer.
        let t = TestTelemetry::new();
        let topic = unique("refused");
        let mock = MockCluster::new(1).expect("mock cluster");
        mock.create_topic(&topic, 1, 1).expect("mock topic");
        let mut client = ClientConfig::new();
        client
            .set("bootstrap.servers", mock.bootstrap_servers())
            .set("message.timeout.ms", "5000");
        let producer = TracedFutureProducer::create(&client, t.config()).expect("producer");
        send(&producer, &topic, "warm-up", Some(b"ok"), None).await;
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        let (err, _) = producer
            .send(FutureRecord::to(&topic).key("k").payload("x"), SEND_TIMEOUT)
            .await
            .expect_err("refused");
        assert_eq!(
            err,
            KafkaError::MessageProduction(RDKafkaErrorCode::TopicAuthorizationFailed)
        );
        let context = Recording::default();
        let reports = context.reports.clone();
        let threaded = TracedThreadedProducer::create_with_context(&client, context, t.config())
            .expect("producer");
        mock.request_errors(
            RDKafkaApiKey::Produce,
            &[RDKafkaRespErr::RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED],
        );
        threaded
            .send(BaseRecord::with_opaque_to(&topic, 7).key("k").payload("x"))
            .map_err(|(e, _)| e)
            .expect("queued");
        threaded.flush(SEND_TIMEOUT).expect("flush");
        assert_eq!(
            *reports.lock().expect("reports"),
            vec![(7, Err("TopicAuthorizationFailed".to_owned()))],
            "your context still gets the report, with your opaque"
        );
        let spans = wait(&t, &format!("send {topic}"), 3).await;
        let failed: Vec<_> = spans
            .named(&format!("send {topic}"))
            .into_iter()
            .filter(|s| s.is_error())
            .collect();
        assert_eq!(failed.len(), 2, "{}", spans.tree());
        for span in failed {
            span.assert_attr(attr::ERROR_TYPE, "TopicAuthorizationFailed");
            span.assert_kind(SpanKind::Producer);
        }
    })
    .await;
}

/// A delivery report as the user's context saw it: its opaque, and the offset or error type.
type Report = (usize, Result<i64, String>);

/// A producer context of the user's own: records each delivery report with its opaque.
#[derive(Default)]
struct Recording {
    reports: Arc<Mutex<Vec<Report>>>,
}

impl ClientContext for Recording {}

impl ProducerContext for Recording {
    type DeliveryOpaque = usize;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: usize) {
        let r = match result {
            Ok(m) => Ok(m.offset()),
            Err((e, _)) => Err(mqtrace_rdkafka::error_type(e).into_owned()),
        };
        self.reports.lock().expect("reports").push((opaque, r));
    }
}

#[tokio::test]
async fn base_and_threaded_producers_end_their_spans_on_delivery_reports_and_base_consumers_continue_the_trace()
 {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("base");
        create_topic(&topic, 1).await;
        let context = Recording::default();
        let reports = context.reports.clone();
        let threaded =
            TracedThreadedProducer::create_with_context(&client_config(), context, t.config())
                .expect("threaded producer");
        threaded
            .send(BaseRecord::with_opaque_to(&topic, 1).key("a").payload("1"))
            .map_err(|(e, _)| e)
            .expect("queued");
        threaded.flush(SEND_TIMEOUT).expect("flush");
        let base = TracedBaseProducer::create(&client_config(), t.config()).expect("base producer");
        base.send(BaseRecord::to(&topic).key("b").payload("2"))
            .map_err(|(e, _)| e)
            .expect("queued");
        base.flush(SEND_TIMEOUT).expect("flush"); // polls: the delivery callback ends the span
        assert_eq!(*reports.lock().expect("reports"), vec![(1, Ok(0))]);

        let c = TracedBaseConsumer::create(&consumer_config(&unique("g")), t.config())
            .expect("base consumer");
        c.subscribe(&[&topic]).expect("subscribe");
        let deadline = Instant::now() + WAIT;
        let mut got = 0;
        while got < 2 {
            assert!(Instant::now() < deadline, "no message within {WAIT:?}");
            if let Some(m) = c.poll(Duration::from_millis(200)) {
                let m = m.expect("a message");
                c.commit_message(&m, CommitMode::Sync).expect("commit");
                got += 1;
            }
        }
        let send_name = format!("send {topic}");
        let spans = wait(&t, &format!("commit {topic}"), 2).await;
        let sends = spans.named(&send_name);
        assert_eq!(sends.len(), 2, "{}", spans.tree());
        for send in &sends {
            assert!(!send.is_error());
            send.assert_attr(attr::MESSAGING_DESTINATION_PARTITION_ID, "0");
            assert!(send.attr(attr::MESSAGING_KAFKA_OFFSET).is_some());
            let process = spans
                .children_of(send)
                .into_iter()
                .find(|s| s.name == format!("process {topic}"))
                .expect("a process span under each send");
            process.assert_links_to(&send.span_context);
            process.assert_attr(attr::OUTCOME, "ack");
        }
    })
    .await;
}

#[tokio::test]
async fn tombstones_are_marked_and_keys_are_recorded_only_on_request() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("compacted");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        send(&producer, &topic, "user-1", Some(b"{}"), None).await;
        send(&producer, &topic, "user-1", None, None).await;
        let c = consumer(t.config(), &unique("g"), &[&topic]);
        let first = next_message(&c).await;
        assert!(first.payload().is_some());
        c.commit_message(&first, CommitMode::Sync).expect("commit");
        let tombstone = next_message(&c).await;
        assert!(tombstone.payload().is_none());
        assert_eq!(tombstone.key(), Some(&b"user-1"[..]));
        c.commit_message(&tombstone, CommitMode::Sync)
            .expect("commit");
        drop((first, tombstone));

        let spans = wait(&t, &format!("commit {topic}"), 2).await;
        for name in [format!("send {topic}"), format!("process {topic}")] {
            let mut marked = 0;
            for span in spans.named(&name) {
                // Keys can hold personal data: not recorded unless asked for.
                assert!(span.attr(attr::MESSAGING_KAFKA_MESSAGE_KEY).is_none());
                match span.attr_bool(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE) {
                    Some(v) => {
                        assert!(v, "a tombstone is marked true");
                        assert_eq!(span.attr_i64(attr::MESSAGING_KAFKA_OFFSET), Some(1));
                        marked += 1;
                    }
                    None => assert_eq!(span.attr_i64(attr::MESSAGING_KAFKA_OFFSET), Some(0)),
                }
            }
            assert_eq!(marked, 1, "one tombstone among the {name} spans");
        }
    })
    .await;
}

#[tokio::test]
async fn batches_get_a_poll_span_linking_every_message_and_each_message_its_own_parent() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("batch");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        let app = t.provider().tracer("app");
        for i in 0..3 {
            // Each message from its own trace.
            let cx = Context::current_with_span(app.start(format!("request {i}")));
            async { send(&producer, &topic, &format!("k{i}"), Some(b"x"), None).await }
                .with_context(cx.clone())
                .await;
            cx.span().end();
        }

        // The stream consumer's batches.
        let c = consumer(t.config(), &unique("g"), &[&topic]);
        let mut received = 0;
        let deadline = Instant::now() + WAIT;
        while received < 3 {
            assert!(
                Instant::now() < deadline,
                "3 messages not received within {WAIT:?}"
            );
            for m in c.recv_batch(10, Duration::from_millis(500)).await {
                let m = m.expect("a message");
                c.commit_message(&m, CommitMode::Sync).expect("commit");
                received += 1;
            }
        }
        check_batches(&t, &topic, 3).await;

        // The base consumer's batches.
        let t = TestTelemetry::new();
        let c = TracedBaseConsumer::create(&consumer_config(&unique("g")), t.config())
            .expect("base consumer");
        c.subscribe(&[&topic]).expect("subscribe");
        let mut received = 0;
        let deadline = Instant::now() + WAIT;
        while received < 3 {
            assert!(
                Instant::now() < deadline,
                "3 messages not received within {WAIT:?}"
            );
            for m in c.poll_batch(10, Duration::from_millis(500)) {
                m.expect("a message").finish(Outcome::Ack);
                received += 1;
            }
        }
        // The send spans are in the first fixture: check links against the carried contexts.
        let spans = wait(&t, &format!("process {topic}"), 3).await;
        let polls = spans.named(&format!("poll {topic}"));
        let linked: usize = polls.iter().map(|p| p.links.links.len()).sum();
        assert_eq!(linked, 3, "{}", spans.tree());
        for process in spans.named(&format!("process {topic}")) {
            let link = &process.links.links[0].span_context;
            assert_eq!(process.parent_span_id, link.span_id());
            assert!(polls.iter().any(|p| p.links_to(link)));
        }
    })
    .await;
}

async fn check_batches(t: &TestTelemetry, topic: &str, n: usize) {
    let spans = wait(t, &format!("commit {topic}"), n).await;
    let sends = spans.named(&format!("send {topic}"));
    let polls = spans.named(&format!("poll {topic}"));
    assert!(!polls.is_empty(), "{}", spans.tree());
    let total: i64 = polls
        .iter()
        .map(|p| {
            p.attr_i64(attr::MESSAGING_BATCH_MESSAGE_COUNT)
                .expect("count")
        })
        .sum();
    assert_eq!(total, n as i64);
    for poll in &polls {
        poll.assert_kind(SpanKind::Client);
        poll.assert_root();
        poll.assert_attr(attr::MESSAGING_OPERATION_TYPE, "receive");
        poll.assert_attr(attr::MESSAGING_OPERATION_NAME, "poll");
        poll.assert_attr_str(attr::MESSAGING_DESTINATION_NAME, topic);
        assert!(poll.attr(attr::MESSAGING_CONSUMER_GROUP_NAME).is_some());
    }
    let traces: HashSet<_> = sends.iter().map(|s| s.span_context.trace_id()).collect();
    assert_eq!(traces.len(), n, "each message in its own trace");
    for send in &sends {
        assert_eq!(
            polls
                .iter()
                .filter(|p| p.links_to(&send.span_context))
                .count(),
            1,
            "exactly one poll span links {}",
            send.span_context.span_id()
        );
        let children = spans.children_of(send);
        let process = children
            .iter()
            .find(|s| s.name == format!("process {topic}"))
            .expect("the process span is a child of its own send span");
        process.assert_links_to(&send.span_context);
    }
}

#[tokio::test]
async fn with_auto_commit_dropped_messages_end_as_auto_ack_and_the_commit_machinery_records_nothing()
 {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("auto");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        for i in 0..2 {
            send(&producer, &topic, &format!("k{i}"), Some(b"x"), None).await;
        }
        let mut client = consumer_config(&unique("g"));
        client
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "100");
        let c = consumer_with(t.config(), client, &[&topic]);
        for _ in 0..2 {
            let m = next_message(&c).await;
            m.in_span(async {}).await;
        }
        // Keep polling while auto-commits run and report.
        let until = Instant::now() + Duration::from_secs(1);
        while Instant::now() < until {
            let _ = tokio::time::timeout(Duration::from_millis(100), c.recv()).await;
        }
        let committed = c.committed(SEND_TIMEOUT).expect("committed");
        assert_eq!(
            committed.find_partition(&topic, 0).map(|e| e.offset()),
            Some(Offset::Offset(2)),
            "auto-commit committed both"
        );
        let spans = t.spans();
        let names: BTreeSet<&str> = spans.all().iter().map(|s| s.name.as_ref()).collect();
        assert_eq!(
            names,
            BTreeSet::from([
                format!("send {topic}").as_str(),
                format!("process {topic}").as_str()
            ]),
            "{}",
            spans.tree()
        );
        for p in spans.named(&format!("process {topic}")) {
            p.assert_attr(attr::OUTCOME, "auto_ack");
            assert!(!p.is_error());
            assert!(p.parent_span_id != opentelemetry::trace::SpanId::INVALID);
        }
        assert_eq!(spans.named(&format!("process {topic}")).len(), 2);
    })
    .await;
}

/// Handles a message of the rebalance test: notes its offset and commits it.
fn handle(
    m: &TracedMessage<'_>,
    c: &TracedStreamConsumer,
    handled: &mut BTreeSet<(i32, i64)>,
    commits: &mut usize,
) {
    handled.insert((m.partition(), m.offset()));
    *commits += 1;
    // During a rebalance a commit may be refused: it is recorded, not hidden.
    let _ = c.commit_message(m, CommitMode::Sync);
}

/// Polls two consumers of one group for a moment (both must poll to take part in a
/// rebalance), handling what they receive; returns how many messages each received.
async fn drain_both(
    a: &TracedStreamConsumer,
    b: &TracedStreamConsumer,
    handled: &mut BTreeSet<(i32, i64)>,
    commits: &mut usize,
) -> (usize, usize) {
    let mut counts = (0, 0);
    tokio::select! {
        r = a.recv() => if let Ok(m) = r {
            counts.0 += 1;
            handle(&m, a, handled, commits);
        },
        r = b.recv() => if let Ok(m) = r {
            counts.1 += 1;
            handle(&m, b, handled, commits);
        },
        () = tokio::time::sleep(Duration::from_millis(200)) => {}
    }
    counts
}

#[tokio::test]
async fn two_consumers_split_the_partitions_and_a_rebalance_mid_stream_leaves_no_span_open() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("split");
        let group = unique("g");
        create_topic(&topic, 4).await;
        let producer = kafka::producer(t.config());
        let mut sent = 0;
        for i in 0..20 {
            send(&producer, &topic, &format!("key-{i}"), Some(b"x"), None).await;
            sent += 1;
        }
        let mut handled = BTreeSet::new();
        let mut received = 0;
        let mut commits = 0;

        // The first consumer alone has every partition.
        let a = consumer(t.config(), &group, &[&topic]);
        for _ in 0..10 {
            let m = next_message(&a).await;
            received += 1;
            handle(&m, &a, &mut handled, &mut commits);
        }

        // A second member joins mid-stream: the group rebalances (both keep consuming
        // meanwhile) and splits the partitions.
        let b = consumer(t.config(), &group, &[&topic]);
        let deadline = Instant::now() + WAIT * 2;
        let (pa, pb) = loop {
            let pa = partitions(&a);
            let pb = partitions(&b);
            if !pa.is_empty() && !pb.is_empty() && pa.is_disjoint(&pb) && pa.len() + pb.len() == 4 {
                break (pa, pb);
            }
            assert!(
                Instant::now() < deadline,
                "no split within {:?}: {pa:?} / {pb:?}",
                WAIT * 2
            );
            let (from_a, from_b) = drain_both(&a, &b, &mut handled, &mut commits).await;
            received += from_a + from_b;
        };

        // Both receive from their own partitions only.
        for i in 0..40 {
            send(&producer, &topic, &format!("more-{i}"), Some(b"x"), None).await;
            sent += 1;
        }
        let mut by_consumer = (BTreeSet::new(), BTreeSet::new());
        let deadline = Instant::now() + WAIT * 2;
        while handled.len() < sent {
            assert!(
                Instant::now() < deadline,
                "only {} of {sent} offsets handled",
                handled.len()
            );
            tokio::select! {
                r = a.recv() => if let Ok(m) = r {
                    received += 1;
                    by_consumer.0.insert(m.partition());
                    handle(&m, &a, &mut handled, &mut commits);
                },
                r = b.recv() => if let Ok(m) = r {
                    received += 1;
                    by_consumer.1.insert(m.partition());
                    handle(&m, &b, &mut handled, &mut commits);
                },
                () = tokio::time::sleep(Duration::from_millis(200)) => {}
            }
        }
        assert!(by_consumer.0.is_subset(&pa), "{by_consumer:?} / {pa:?}");
        assert!(by_consumer.1.is_subset(&pb), "{by_consumer:?} / {pb:?}");
        assert!(
            !by_consumer.1.is_empty(),
            "the second consumer received messages"
        );
        drop(a);
        drop(b);

        // No span left open: every message received has ended its process span, every commit
        // its commit span.
        let process = format!("process {topic}");
        let commit = format!("commit {topic}");
        let spans = t
            .wait_for(
                |s| s.named(&process).len() >= received && s.named(&commit).len() >= commits,
                WAIT,
            )
            .await
            .unwrap_or_else(|e| panic!("spans still open: {e}"));
        assert_eq!(spans.named(&process).len(), received);
        assert_eq!(spans.named(&commit).len(), commits);
        assert_eq!(spans.named(&format!("send {topic}")).len(), sent);
        for p in spans.named(&process) {
            p.assert_attr(attr::OUTCOME, "ack");
            p.assert_attr_str(attr::MESSAGING_CONSUMER_GROUP_NAME, &group);
            assert!(
                spans.by_id(p.parent_span_id).is_some(),
                "child of its send span"
            );
        }
    })
    .await;
}

fn partitions(c: &TracedStreamConsumer) -> BTreeSet<i32> {
    c.assignment()
        .map(|tpl| tpl.elements().iter().map(|e| e.partition()).collect())
        .unwrap_or_default()
}

#[test]
fn an_unreachable_broker_fails_with_the_command_that_starts_it() {
    let err = try_kafka("127.0.0.1:1").expect_err("nothing listens on port 1");
    assert!(err.contains("scripts/start-brokers.sh kafka"), "{err}");
    assert!(err.contains("KAFKA_BOOTSTRAP_SERVERS"), "{err}");
}

#[tokio::test]
async fn the_stream_of_a_traced_consumer_yields_traced_messages_and_a_store_is_recorded() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("stream");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        send(&producer, &topic, "k", Some(b"x"), None).await;
        let c = consumer(t.config(), &unique("g"), &[&topic]);
        let m = tokio::time::timeout(WAIT, c.stream().next())
            .await
            .expect("a message in time")
            .expect("a stream never ends")
            .expect("a message");
        assert_eq!(m.payload(), Some(&b"x"[..]));
        let trace = m.span_context().trace_id();
        c.store_offset_from_message(&m).expect("store"); // no auto-commit: `store_offset`
        drop(m);
        let spans = wait(&t, &format!("store_offset {topic}"), 1).await;
        let process = spans.one(&format!("process {topic}"));
        assert_eq!(process.span_context.trace_id(), trace);
        process.assert_child_of(spans.one(&format!("send {topic}")));
        spans
            .one(&format!("store_offset {topic}"))
            .assert_child_of(process);
    })
    .await;
}

#[tokio::test]
async fn a_delivery_future_dropped_before_the_report_still_ends_its_span_at_the_report() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("dropped");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        let delivery = producer
            .send_result(FutureRecord::to(&topic).key("k").payload("x"))
            .map_err(|(e, _)| e)
            .expect("queued");
        assert!(delivery.span_context().is_some());
        drop(delivery);
        let spans = wait(&t, &format!("send {topic}"), 1).await;
        let send = spans.one(&format!("send {topic}"));
        assert!(!send.is_error());
        send.assert_attr_i64(attr::MESSAGING_KAFKA_OFFSET, 0);
        assert!(
            send.events
                .iter()
                .all(|e| e.name != "mqtrace.send.abandoned")
        );
    })
    .await;
}

#[tokio::test]
async fn a_delivery_future_polled_again_resolves_at_once_and_its_span_ends_once() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("again");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        let mut delivery = producer
            .send_result(FutureRecord::to(&topic).key("k").payload("x"))
            .map_err(|(e, _)| e)
            .expect("queued");
        let report = tokio::time::timeout(WAIT, &mut delivery)
            .await
            .expect("a delivery report in time");
        let delivered = match report {
            Ok(Ok(d)) => d,
            Ok(Err((e, _))) => panic!("not delivered: {e}"),
            Err(_) => panic!("the producer is alive: no cancellation"),
        };
        assert_eq!(delivered.offset, 0);
        // Polled after completion: at once, rdkafka's `Canceled` (no report will come), never
        // pending and never a panic.
        let again = tokio::time::timeout(Duration::from_secs(2), &mut delivery)
            .await
            .expect("a poll after completion resolves at once");
        assert!(again.is_err(), "Err(Canceled) after completion");
        let spans = wait(&t, &format!("send {topic}"), 1).await;
        let sends = spans.named(&format!("send {topic}"));
        assert_eq!(sends.len(), 1, "{}", spans.tree());
        assert!(!sends[0].is_error());
        sends[0].assert_attr_i64(attr::MESSAGING_KAFKA_OFFSET, 0);
    })
    .await;
}

/// Runs `integration-tests/interop/kafka_peer.py` (confluent-kafka with OpenTelemetry's
/// confluent-kafka instrumentation) with `args` against the test broker and returns its JSON.
async fn python_peer(args: &[&str]) -> serde_json::Value {
    // The venv may be created on first use; the peer itself waits 20 s at most.
    support::python_peer(
        "kafka_peer.py",
        args,
        &[("KAFKA_BOOTSTRAP_SERVERS", kafka::bootstrap_servers())],
        Duration::from_secs(100),
    )
    .await
}

/// Python's confluent-kafka instrumentation (0.66b1) and mqtrace read each other's context.
///
/// Python writes `traceparent` as UTF-8 bytes under the lower-case key, with flags `03`
/// (sampled + random trace id), which mqtrace reads as is. Python's consumer side does not
/// continue the producer's trace: each poll starts a new trace (`recv`, a root) whose
/// `TOPIC process` span *links* to the producer's context. So our send span is asserted as
/// that link, and the new root is asserted too, so that a release of the instrumentation that
/// parents instead shows up here.
#[tokio::test]
async fn python_confluent_kafka_instrumentation_and_mqtrace_continue_each_others_traces() {
    within(async {
        let t = TestTelemetry::new();

        // Python produces, we consume.
        let from_py = unique("from-python");
        create_topic(&from_py, 1).await;
        let peer = python_peer(&["produce", &from_py]).await;
        let py_send = python_span(&peer, "PRODUCER", &format!("{from_py} send"));
        let py_context = python_context(py_send);
        let consumer = consumer(t.config(), &unique("from-python"), &[&from_py]);
        let message = next_message(&consumer).await;
        assert_eq!(message.payload(), Some(&b"from python"[..]));
        assert_eq!(
            pairs(message.headers()),
            vec![
                ("x-origin".to_owned(), Some(b"python".to_vec())),
                (
                    "traceparent".to_owned(),
                    Some(
                        format!("00-{}-{}-03", py_context.trace_id(), py_context.span_id())
                            .into_bytes()
                    )
                ),
            ],
            "python's headers on the wire: {peer}"
        );
        message.finish(Outcome::Ack);
        drop(message);
        let spans = wait(&t, &format!("process {from_py}"), 1).await;
        let process = spans.one(&format!("process {from_py}"));
        process.assert_parent_context(&py_context);
        assert!(process.parent_span_is_remote);
        process.assert_links_to(&py_context);
        assert!(
            process.attr(attr::CONTEXT_ERROR).is_none(),
            "{:?}",
            process.attr(attr::CONTEXT_ERROR)
        );

        // We produce, Python consumes.
        let to_py = unique("to-python");
        create_topic(&to_py, 1).await;
        let producer = kafka::producer(t.config());
        send(&producer, &to_py, "k", Some(b"from rust"), None).await;
        let spans = wait(&t, &format!("send {to_py}"), 1).await;
        let send = spans.one(&format!("send {to_py}"));
        let peer = python_peer(&["consume", &to_py, &unique("python")]).await;
        assert_eq!(peer["body"], "from rust", "{peer}");
        assert_eq!(
            peer["headers"],
            serde_json::json!([["traceparent", traceparent_of(&send.span_context), "bytes"]]),
            "the headers python received"
        );
        let py_process = python_span(&peer, "CONSUMER", &format!("{to_py} process"));
        let ours = serde_json::json!({
            "trace_id": send.span_context.trace_id().to_string(),
            "span_id": send.span_context.span_id().to_string(),
        });
        assert_eq!(
            py_process["links"],
            serde_json::json!([ours]),
            "python's process span does not link to our send span: {peer}"
        );
        let py_recv = python_span(&peer, "CONSUMER", "recv");
        assert_eq!(
            (
                &py_recv["parent_id"],
                &py_process["parent_id"],
                &py_process["trace_id"]
            ),
            (
                &serde_json::Value::Null,
                &py_recv["span_id"],
                &py_recv["trace_id"]
            ),
            "python's consumer starts its own trace (recv -> process): {peer}"
        );
        assert_ne!(py_recv["trace_id"], ours["trace_id"], "{peer}");
    })
    .await;
}

/// Baggage with `%`, `,`, `;`, non-ASCII and properties between mqtrace and Python's OTel SDK
/// (confluent-kafka instrumentation) through Kafka, both ways, asserting the decoded values.
#[tokio::test]
async fn baggage_with_escapes_non_ascii_and_properties_round_trips_with_python_through_kafka() {
    use opentelemetry::baggage::{BaggageExt, KeyValueMetadata};
    within(async {
        let t = TestTelemetry::new();

        // Rust sends, Python's SDK decodes.
        let to_py = unique("bag-to-python");
        create_topic(&to_py, 1).await;
        let producer = kafka::producer(t.config());
        let cx = Context::current().with_baggage(
            support::interop_baggage()
                .iter()
                .map(|(k, (v, m))| KeyValueMetadata::new(k.clone(), v.clone(), m.clone())),
        );
        send(&producer, &to_py, "k", Some(b"from rust"), None)
            .with_context(cx)
            .await;
        let peer = python_peer(&["consume", &to_py, &unique("python")]).await;
        assert_eq!(peer["body"], "from rust", "{peer}");
        assert_eq!(
            peer["baggage"],
            support::interop_baggage_as_python_reads_it(),
            "{peer}"
        );

        // Python's SDK encodes, Rust decodes.
        let from_py = unique("bag-from-python");
        create_topic(&from_py, 1).await;
        let peer = python_peer(&["produce-baggage", &from_py]).await;
        let consumer = consumer(t.config(), &unique("from-python"), &[&from_py]);
        let message = next_message(&consumer).await;
        let got = message.context().baggage();
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
        let py_send = python_span(&peer, "PRODUCER", &format!("{from_py} send"));
        assert_eq!(
            message.span_context().trace_id(),
            python_context(py_send).trace_id()
        );
        message.finish(Outcome::Ack);
        drop(message);
        let spans = wait(&t, &format!("process {from_py}"), 1).await;
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
    use mqtrace::retry::{Decision, HandlerError, RetryPolicy};
    use mqtrace_rdkafka::{RetryError, RetryTopics};
    use rdkafka::topic_partition_list::TopicPartitionList;
    use std::sync::atomic::{AtomicU32, Ordering};

    /// A new topic of `partitions` partitions, a traced producer, and the topic's retry topics.
    async fn declared(
        t: &TestTelemetry,
        prefix: &str,
        policy: RetryPolicy,
        partitions: i32,
    ) -> (String, TracedFutureProducer, RetryTopics) {
        let topic = unique(prefix);
        create_topic(&topic, partitions).await;
        let producer = kafka::producer(t.config());
        let retries = RetryTopics::declare(producer.clone(), &topic, policy)
            .await
            .expect("declare the retry topics");
        (topic, producer, retries)
    }

    /// A consumer of a new group subscribed to the topic and its retry topics. Fetches return
    /// after 10 ms rather than librdkafka's 500 ms, so copies arrive before they are due.
    fn subscribed(t: &TestTelemetry, retries: &RetryTopics) -> TracedStreamConsumer {
        subscribed_with(t, retries, |_| {})
    }

    /// [`subscribed`], with more client settings.
    fn subscribed_with(
        t: &TestTelemetry,
        retries: &RetryTopics,
        configure: impl FnOnce(&mut ClientConfig),
    ) -> TracedStreamConsumer {
        let topics = retries.topics();
        let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
        let mut client = consumer_config(&unique("g"));
        client.set("fetch.wait.max.ms", "10");
        configure(&mut client);
        consumer_with(t.config(), client, &topics)
    }

    /// The message's headers without the ones mqtrace writes (context and history).
    fn user_pairs(m: &BorrowedMessage<'_>) -> Pairs {
        pairs(m.headers())
            .into_iter()
            .filter(|(k, _)| {
                !k.starts_with("mqtrace-")
                    && !["traceparent", "tracestate", "baggage"].contains(&&**k)
            })
            .collect()
    }

    fn id(m: &BorrowedMessage<'_>) -> u32 {
        std::str::from_utf8(m.payload().expect("a payload"))
            .expect("utf8")
            .parse()
            .expect("an id")
    }

    /// The group's committed offset of every partition of `topics`:
    /// `(topic, partition, committed)`.
    fn committed(
        c: &TracedStreamConsumer,
        topics: &[String],
        partitions: i32,
    ) -> Vec<(String, i32, Option<i64>)> {
        let mut tpl = TopicPartitionList::new();
        for t in topics {
            for p in 0..partitions {
                tpl.add_partition(t, p);
            }
        }
        c.committed_offsets(tpl, SEND_TIMEOUT)
            .expect("committed offsets")
            .elements()
            .iter()
            .map(|e| (e.topic().to_owned(), e.partition(), e.offset().to_raw()))
            .collect()
    }

    #[tokio::test]
    async fn transient_failure_twice_then_success_is_three_linked_attempts_in_one_trace() {
        within(async {
            let t = TestTelemetry::new();
            // Delays long enough that each copy arrives before it is due, even on a busy machine.
            let policy = fast(5).with_initial_delay(Duration::from_millis(200));
            let (topic, producer, retries) = declared(&t, "retry", policy, 1).await;
            let retries = retries.with_commit_mode(CommitMode::Sync);
            assert_eq!(
                retries.topics(),
                (2..=5).map(|n| format!("{topic}.retry.{n}")).fold(
                    vec![topic.clone()],
                    |mut v, t| {
                        v.push(t);
                        v
                    }
                )
            );
            send(
                &producer,
                &topic,
                "order-1",
                Some(b"order-1"),
                Some(user_headers()),
            )
            .await;
            let consumer = subscribed(&t, &retries);
            let mut decisions = Vec::new();
            let mut handled_at = Vec::new();
            for _ in 0..3 {
                let m = next_message(&consumer).await;
                let decision = retries
                    .handle(&consumer, m, async |m| {
                        handled_at.push(Instant::now());
                        assert_eq!(m.payload(), Some(&b"order-1"[..]), "the same payload");
                        assert_eq!(m.key(), Some(&b"order-1"[..]), "the same key");
                        assert_eq!(
                            user_pairs(m),
                            pairs(Some(&user_headers())),
                            "the user's headers, byte for byte"
                        );
                        if m.attempt() < 3 {
                            Err(HandlerError::transient("inventory service unavailable"))
                        } else {
                            Ok(())
                        }
                    })
                    .await
                    .expect("carried out");
                decisions.push(decision);
            }
            assert!(
                matches!(
                    decisions[0],
                    Decision::Retry {
                        next_attempt: 2,
                        ..
                    }
                ),
                "{decisions:?}"
            );
            assert!(matches!(
                decisions[1],
                Decision::Retry {
                    next_attempt: 3,
                    ..
                }
            ));
            assert_eq!(decisions[2], Decision::Ack);
            // Each attempt ran no earlier than its copy was due (200 ms, then 400 ms; the due
            // time is written in whole milliseconds).
            assert!(handled_at[1] - handled_at[0] >= Duration::from_millis(198));
            assert!(handled_at[2] - handled_at[1] >= Duration::from_millis(398));

            let (retry2, retry3) = (retries.retry_topic(2), retries.retry_topic(3));
            let spans = wait(&t, &format!("commit {retry3}"), 1).await;
            let send = spans.one(&format!("send {topic}"));
            let attempts = [
                spans.one(&format!("process {topic}")),
                spans.one(&format!("process {retry2}")),
                spans.one(&format!("process {retry3}")),
            ];
            for (i, a) in attempts.iter().enumerate() {
                assert_eq!(a.attr_i64(attr::DELIVERY_ATTEMPT), Some(i as i64 + 1));
                assert_eq!(
                    a.span_context.trace_id(),
                    send.span_context.trace_id(),
                    "one trace"
                );
                a.assert_attr_i64(attr::RETRY_MAX_ATTEMPTS, 5);
            }
            attempts[0].assert_child_of(send);
            attempts[0].assert_attr(attr::OUTCOME, "retry");
            attempts[1].assert_attr(attr::OUTCOME, "retry");
            attempts[2].assert_attr(attr::OUTCOME, "ack");
            attempts[0].assert_attr(attr::RETRY_DELAY, 0.2_f64);
            attempts[1].assert_attr(attr::RETRY_DELAY, 0.4_f64);
            // The consumer of a retry topic waited for the copy, inside its process span.
            for (a, delay) in [(attempts[1], 0.2), (attempts[2], 0.4)] {
                let wait = a
                    .events
                    .iter()
                    .find(|e| e.name == "mqtrace.retry.wait")
                    .expect("a wait event");
                let waited = wait
                    .attributes
                    .iter()
                    .find(|kv| kv.key.as_str() == "mqtrace.retry.wait.duration")
                    .and_then(|kv| match kv.value {
                        opentelemetry::Value::F64(s) => Some(s),
                        _ => None,
                    })
                    .expect("the wait's duration");
                assert!(waited > 0.0 && waited <= delay, "{waited}");
            }
            assert!(
                attempts[0]
                    .events
                    .iter()
                    .all(|e| e.name != "mqtrace.retry.wait")
            );
            attempts[0].assert_attr(attr::ERROR_TYPE, "transient");
            assert!(!attempts[2].is_error());
            // Attempt n+1 is a child of the copy sent by attempt n, and links to attempt n and
            // to the original send.
            for n in 1..3 {
                let resend = spans.one(&format!("send {topic}.retry.{}", n + 1));
                resend.assert_child_of(attempts[n - 1]);
                attempts[n].assert_child_of(resend);
                let prev = attempts[n]
                    .link_of_type("previous_attempt")
                    .expect("previous-attempt link");
                assert_eq!(
                    prev.span_context.span_id(),
                    attempts[n - 1].span_context.span_id()
                );
                let origin = attempts[n].link_of_type("origin").expect("origin link");
                assert_eq!(origin.span_context.span_id(), send.span_context.span_id());
            }
            // Each original is committed under its own process span, after its copy was sent.
            for (attempt, name, outcome) in [
                (attempts[0], &topic, "retry"),
                (attempts[1], &retry2, "retry"),
                (attempts[2], &retry3, "ack"),
            ] {
                let commit = spans.one(&format!("commit {name}"));
                commit.assert_child_of(attempt);
                commit.assert_attr_str(attr::OUTCOME, outcome);
            }
            for n in 1..3 {
                let resend = spans.one(&format!("send {topic}.retry.{}", n + 1));
                let commit = spans.one(&format!(
                    "commit {}",
                    attempts[n - 1]
                        .attr_str(attr::MESSAGING_DESTINATION_NAME)
                        .expect("destination")
                ));
                assert!(
                    resend.end_time <= commit.start_time,
                    "the copy is safe before the commit"
                );
            }
            for (topic, partition, committed) in
                committed(&consumer, &[topic.clone(), retry2, retry3], 1)
            {
                assert_eq!(
                    committed,
                    Some(1),
                    "{topic}/{partition}: its one message committed"
                );
            }
        })
        .await;
    }

    #[tokio::test]
    async fn a_panicking_or_hanging_handler_is_a_failure_and_the_message_is_not_lost() {
        within(async {
            let t = TestTelemetry::new();
            let (topic, producer, retries) = declared(&t, "panic", fast(5), 1).await;
            let retries = retries.with_time_limit(Duration::from_millis(300));
            send(&producer, &topic, "k", Some(b"fragile"), None).await;
            // Offsets stored for librdkafka's auto-commit, which reports the result.
            let consumer = subscribed_with(&t, &retries, |c| {
                c.set("enable.auto.commit", "true")
                    .set("enable.auto.offset.store", "false")
                    .set("auto.commit.interval.ms", "100");
            });
            for _ in 0..3 {
                let m = next_message(&consumer).await;
                retries
                    .handle(&consumer, m, async |m| match m.attempt() {
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
            let retry3 = retries.retry_topic(3);
            // Commit results arrive through the commit callback, served while polling.
            let commit3 = format!("commit {retry3}");
            let deadline = Instant::now() + WAIT;
            while t.spans().find(&commit3).is_none() {
                assert!(
                    Instant::now() < deadline,
                    "no commit report within {WAIT:?}"
                );
                if let Ok(Ok(m)) =
                    tokio::time::timeout(Duration::from_millis(100), consumer.recv()).await
                {
                    panic!("unexpected message from {}", m.topic());
                }
            }
            let spans = t.spans();
            let attempts = [
                spans.one(&format!("process {topic}")),
                spans.one(&format!("process {}", retries.retry_topic(2))),
                spans.one(&format!("process {retry3}")),
            ];
            attempts[0].assert_attr(attr::ERROR_TYPE, "panic");
            attempts[0].assert_attr(attr::OUTCOME, "retry");
            attempts[1].assert_attr(attr::ERROR_TYPE, "timeout");
            attempts[1].assert_attr(attr::OUTCOME, "retry");
            attempts[2].assert_attr(attr::OUTCOME, "ack");
            assert_eq!(attempts[2].attr_i64(attr::DELIVERY_ATTEMPT), Some(3));
            // Each attempt's stored offset was committed by librdkafka, under its span.
            for (attempt, outcome) in attempts.iter().zip(["retry", "retry", "ack"]) {
                let destination = attempt
                    .attr_str(attr::MESSAGING_DESTINATION_NAME)
                    .expect("destination");
                let commit = spans.one(&format!("commit {destination}"));
                commit.assert_child_of(attempt);
                commit.assert_attr_str(attr::OUTCOME, outcome);
                assert!(!commit.is_error());
            }
            assert!(spans.find(&format!("store_offset {topic}")).is_none());
        })
        .await;
    }

    #[tokio::test]
    async fn a_copy_that_cannot_be_produced_leaves_the_original_uncommitted_and_received_again() {
        within(async {
            let t = TestTelemetry::new();
            let topic = unique("unproducible");
            create_topic(&topic, 1).await;
            let producer = kafka::producer(t.config());
            // The retry producer refuses messages over 10 kB (librdkafka checks locally).
            let mut small = client_config();
            small.set("message.max.bytes", "10000");
            let small = TracedFutureProducer::create(&small, t.config()).expect("producer");
            let retries = RetryTopics::declare(small, &topic, fast(3))
                .await
                .expect("declare")
                .with_commit_mode(CommitMode::Sync);
            let big = vec![7_u8; 20_000];
            send(&producer, &topic, "big", Some(&big), None).await;
            send(&producer, &topic, "next", Some(b"next"), None).await;
            let consumer = subscribed(&t, &retries);

            let m = next_message(&consumer).await;
            assert_eq!(m.offset(), 0);
            let err = retries
                .handle(&consumer, m, async |_| {
                    Err(HandlerError::transient("db down"))
                })
                .await
                .expect_err("the copy is too large");
            assert!(
                matches!(
                    &err,
                    RetryError::Copy {
                        source: KafkaError::MessageProduction(
                            RDKafkaErrorCode::MessageSizeTooLarge
                        ),
                        ..
                    }
                ),
                "{err}"
            );
            // Received again, before the message after it: nothing commits past it.
            let m = next_message(&consumer).await;
            assert_eq!((m.offset(), m.key()), (0, Some(&b"big"[..])));
            assert_eq!(m.attempt(), 1);
            let decision = retries
                .handle(&consumer, m, async |_| Ok(()))
                .await
                .expect("acknowledged");
            assert_eq!(decision, Decision::Ack);
            let m = next_message(&consumer).await;
            assert_eq!(m.offset(), 1);
            retries
                .handle(&consumer, m, async |_| Ok(()))
                .await
                .expect("acknowledged");

            let spans = wait(&t, &format!("commit {topic}"), 2).await;
            let seek = spans.one(&format!("seek {topic}"));
            seek.assert_kind(SpanKind::Client);
            seek.assert_attr(attr::OUTCOME, "requeue");
            assert!(!seek.is_error());
            let failed = spans
                .by_id(seek.parent_span_id)
                .expect("the failed attempt");
            failed.assert_attr(attr::OUTCOME, "requeue");
            assert!(
                failed
                    .attr_str(attr::OUTCOME_REASON)
                    .is_some_and(|r| r.contains("could not publish the copy to")),
                "{:?}",
                failed.attr_str(attr::OUTCOME_REASON)
            );
            let copy = spans.one(&format!("send {}", retries.retry_topic(2)));
            copy.assert_attr(attr::ERROR_TYPE, "MessageSizeTooLarge");
            copy.assert_child_of(failed);
            assert!(
                spans
                    .children_of(failed)
                    .iter()
                    .all(|s| !s.name.starts_with("commit ")),
                "the failed attempt commits nothing"
            );
            assert_eq!(
                committed(&consumer, std::slice::from_ref(&topic), 1)[0].2,
                Some(2)
            );
        })
        .await;
    }

    #[tokio::test]
    async fn messages_in_equal_messages_acked_plus_dead_lettered_under_random_failures() {
        within(async {
            let t = TestTelemetry::new();
            let partitions = 2;
            let (topic, producer, retries) = declared(
                &t,
                "chaos",
                fast(3).with_initial_delay(Duration::from_millis(20)),
                partitions,
            )
            .await;
            let total = 300_u32;
            let sends = (0..total).map(|i| {
                let (producer, topic) = (&producer, &topic);
                async move {
                    let id = i.to_string();
                    send(producer, topic, &id, Some(id.as_bytes()), None).await;
                }
            });
            futures_util::future::join_all(sends).await;
            // Deterministic "random" failures: 30 % transient, 5 % permanent, per attempt.
            let roll = |id: u32, attempt: u32| {
                (id.wrapping_mul(2_654_435_761) ^ attempt.wrapping_mul(40_503)) % 100
            };
            let consumer = subscribed(&t, &retries);
            let mut acked = HashSet::new();
            let handled = AtomicU32::new(0);
            let mut finished = 0;
            // Per topic and partition: the end of what was received (last offset + 1), and how
            // many messages were received; per retry topic, how many copies were sent to it.
            let mut ends: HashMap<(String, i32), i64> = HashMap::new();
            let mut received: HashMap<String, u32> = HashMap::new();
            let mut copies: HashMap<String, u32> = HashMap::new();
            let mut dead_lettered = 0;
            while finished < total {
                let m = next_message(&consumer).await;
                let id = id(&m);
                let end = ends
                    .entry((m.topic().to_owned(), m.partition()))
                    .or_default();
                *end = (*end).max(m.offset() + 1);
                *received.entry(m.topic().to_owned()).or_default() += 1;
                let decision = retries
                    .handle(&consumer, m, async |m| {
                        handled.fetch_add(1, Ordering::Relaxed);
                        match roll(id, m.attempt()) {
                            0..5 => Err(HandlerError::permanent("bad input")),
                            5..35 => Err(HandlerError::transient("flaky dependency")),
                            _ => {
                                assert!(acked.insert(id), "message {id} acknowledged twice");
                                Ok(())
                            }
                        }
                    })
                    .await
                    .expect("carried out");
                match decision {
                    Decision::Retry { next_attempt, .. } => {
                        *copies.entry(retries.retry_topic(next_attempt)).or_default() += 1;
                    }
                    Decision::DeadLetter { .. } => {
                        dead_lettered += 1;
                        finished += 1;
                    }
                    _ => finished += 1,
                }
            }
            assert_eq!(received.get(&topic), Some(&total), "each message once");
            for n in 2..=3 {
                let retry = retries.retry_topic(n);
                assert_eq!(
                    received.get(&retry),
                    copies.get(&retry),
                    "every copy sent to {retry} was received, once"
                );
            }
            let dlq_name = retries.dead_letter_topic();
            let dlq = consumer_with(t.config(), consumer_config(&unique("dlq")), &[&dlq_name]);
            let mut dead = HashSet::new();
            while dead.len() + acked.len() < total as usize {
                let m = next_message(&dlq).await;
                assert!(
                    dead.insert(id(&m)),
                    "message {} dead-lettered twice",
                    id(&m)
                );
                m.finish(Outcome::Ack);
            }
            assert_eq!(
                dead.len(),
                dead_lettered,
                "one dead-letter copy per decision"
            );
            assert!(acked.is_disjoint(&dead));
            assert_eq!(
                acked.len() + dead.len(),
                total as usize,
                "messages in = acked + dead-lettered"
            );
            assert!(
                !dead.is_empty() && acked.len() > 200,
                "acked {} dead {}",
                acked.len(),
                dead.len()
            );
            assert!(
                handled.load(Ordering::Relaxed) > total,
                "some messages were retried"
            );
            // Every partition of the topic and its retry topics is committed to the end of what
            // was received (the commits are asynchronous: wait for them). High watermarks are
            // not used: Tansu 0.6 reported a high watermark of 1 for a partition holding 150
            // messages.
            let deadline = Instant::now() + WAIT;
            loop {
                let behind: Vec<_> = committed(&consumer, &retries.topics(), partitions)
                    .into_iter()
                    .filter(|(topic, partition, committed)| {
                        let end = ends.get(&(topic.clone(), *partition)).copied();
                        end.is_some_and(|e| *committed != Some(e))
                    })
                    .collect();
                if behind.is_empty() {
                    break;
                }
                assert!(
                    Instant::now() < deadline,
                    "not committed: {behind:?} of {ends:?}"
                );
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        })
        .await;
    }

    /// Anyone can produce to a topic: a forged `mqtrace-not-before` an hour ahead on `{topic}`
    /// is not waited for at all, and on a retry topic for at most the policy's longest delay
    /// (on the original main: up to twice the 5-minute maximum delay, a stalled partition).
    #[tokio::test]
    async fn a_forged_not_before_does_not_stall_the_partition() {
        within(async {
            let t = TestTelemetry::new();
            let policy = fast(3);
            assert_eq!(policy.longest_delay(), Duration::from_millis(100));
            let (topic, producer, retries) = declared(&t, "forged", policy, 1).await;
            let retries = retries.with_commit_mode(CommitMode::Sync);
            let hour = mqtrace::retry::epoch_millis(
                std::time::SystemTime::now() + Duration::from_secs(3600),
            )
            .to_string();
            let forged = || {
                OwnedHeaders::new().insert(Header {
                    key: mqtrace::retry::NOT_BEFORE_HEADER,
                    value: Some(hour.as_str()),
                })
            };
            send(&producer, &topic, "normal", Some(b"normal"), Some(forged())).await;
            let retry_topic = retries.retry_topic(2);
            send(
                &producer,
                &retry_topic,
                "copy",
                Some(b"copy"),
                Some(forged()),
            )
            .await;
            let consumer = subscribed(&t, &retries);
            for _ in 0..2 {
                let m = next_message(&consumer).await;
                let started = Instant::now();
                let decision = tokio::time::timeout(
                    Duration::from_secs(5),
                    retries.handle(&consumer, m, async |_| Ok(())),
                )
                .await
                .expect("handle does not wait for the forged time")
                .expect("acknowledged");
                assert_eq!(decision, Decision::Ack);
                assert!(
                    started.elapsed() < Duration::from_secs(2),
                    "{:?}",
                    started.elapsed()
                );
            }
            let spans = wait(&t, &format!("commit {retry_topic}"), 1).await;
            let normal = spans.one(&format!("process {topic}"));
            assert!(
                normal.events.iter().all(|e| e.name != "mqtrace.retry.wait"),
                "{:?}",
                normal.events
            );
            let copy = spans.one(&format!("process {retry_topic}"));
            let waited = copy
                .events
                .iter()
                .find(|e| e.name == "mqtrace.retry.wait")
                .expect("the copy of a retry topic is waited for");
            let secs = waited
                .attributes
                .iter()
                .find(|kv| kv.key.as_str() == "mqtrace.retry.wait.duration")
                .and_then(|kv| match kv.value {
                    opentelemetry::Value::F64(v) => Some(v),
                    _ => None,
                })
                .expect("the wait's duration");
            assert!(secs <= 0.1, "waited {secs} s, over the longest delay");
        })
        .await;
    }
}

/// A minimal Kafka producer speaking the wire protocol itself (Produce v3, one record batch of
/// one record), for messages no client library will build: header keys that are not UTF-8.
/// The messages are then consumed through librdkafka as any other.
mod raw_produce {
    use std::io::{Read, Write};
    use std::net::TcpStream;
    use std::time::{Duration, SystemTime, UNIX_EPOCH};

    /// A header as bytes: key, value (`None` for a null value).
    pub(super) type RawHeader = (Vec<u8>, Option<Vec<u8>>);

    fn crc32c(data: &[u8]) -> u32 {
        let mut crc = !0_u32;
        for &b in data {
            crc ^= u32::from(b);
            for _ in 0..8 {
                crc = if crc & 1 == 1 {
                    (crc >> 1) ^ 0x82F6_3B78
                } else {
                    crc >> 1
                };
            }
        }
        !crc
    }

    fn varint(out: &mut Vec<u8>, v: i64) {
        let mut z = ((v << 1) ^ (v >> 63)).cast_unsigned();
        while z >= 0x80 {
            out.push(u8::try_from(z & 0x7f).unwrap_or(0) | 0x80);
            z >>= 7;
        }
        out.push(u8::try_from(z).unwrap_or(0));
    }

    fn len(n: usize) -> i64 {
        i64::try_from(n).unwrap_or(i64::MAX)
    }

    fn bytes(out: &mut Vec<u8>, b: Option<&[u8]>) {
        match b {
            None => varint(out, -1),
            Some(b) => {
                varint(out, len(b.len()));
                out.extend_from_slice(b);
            }
        }
    }

    fn batch(key: Option<&[u8]>, value: Option<&[u8]>, headers: &[RawHeader]) -> Vec<u8> {
        let mut record = vec![0_u8]; // attributes
        varint(&mut record, 0); // timestamp delta
        varint(&mut record, 0); // offset delta
        bytes(&mut record, key);
        bytes(&mut record, value);
        varint(&mut record, len(headers.len()));
        for (k, v) in headers {
            varint(&mut record, len(k.len()));
            record.extend_from_slice(k);
            bytes(&mut record, v.as_deref());
        }
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map_or(0, |d| i64::try_from(d.as_millis()).unwrap_or(0));
        let mut body = Vec::new();
        body.extend(0_i16.to_be_bytes()); // attributes
        body.extend(0_i32.to_be_bytes()); // last offset delta
        body.extend(now.to_be_bytes()); // base timestamp
        body.extend(now.to_be_bytes()); // max timestamp
        body.extend((-1_i64).to_be_bytes()); // producer id
        body.extend((-1_i16).to_be_bytes()); // producer epoch
        body.extend((-1_i32).to_be_bytes()); // base sequence
        body.extend(1_i32.to_be_bytes()); // record count
        varint(&mut body, len(record.len()));
        body.extend(record);
        let mut out = Vec::new();
        out.extend(0_i64.to_be_bytes()); // base offset
        let batch_len = i32::try_from(4 + 1 + 4 + body.len()).unwrap_or(i32::MAX);
        out.extend(batch_len.to_be_bytes());
        out.extend((-1_i32).to_be_bytes()); // partition leader epoch
        out.push(2); // magic
        out.extend(crc32c(&body).to_be_bytes());
        out.extend(body);
        out
    }

    fn i16_at(b: &[u8], at: usize) -> Result<i16, String> {
        b.get(at..at + 2)
            .and_then(|s| s.try_into().ok())
            .map(i16::from_be_bytes)
            .ok_or_else(|| format!("short produce response: {b:?}"))
    }

    /// Sends one record to partition 0 of `topic` and checks the broker's answer.
    pub(super) fn produce(
        server: &str,
        topic: &str,
        key: Option<&[u8]>,
        value: Option<&[u8]>,
        headers: &[RawHeader],
    ) -> Result<(), String> {
        let batch = batch(key, value, headers);
        let mut req = Vec::new();
        req.extend(0_i16.to_be_bytes()); // Produce
        req.extend(3_i16.to_be_bytes()); // version 3: record batches
        req.extend(7_i32.to_be_bytes()); // correlation id
        let client = b"mqtrace-raw-producer";
        req.extend(i16::try_from(client.len()).unwrap_or(0).to_be_bytes());
        req.extend(client);
        req.extend((-1_i16).to_be_bytes()); // no transactional id
        req.extend(1_i16.to_be_bytes()); // acks
        req.extend(10_000_i32.to_be_bytes()); // timeout
        req.extend(1_i32.to_be_bytes()); // one topic
        req.extend(i16::try_from(topic.len()).unwrap_or(0).to_be_bytes());
        req.extend(topic.as_bytes());
        req.extend(1_i32.to_be_bytes()); // one partition
        req.extend(0_i32.to_be_bytes()); // partition 0
        req.extend(i32::try_from(batch.len()).unwrap_or(0).to_be_bytes());
        req.extend(batch);
        let mut s = TcpStream::connect(server).map_err(|e| format!("connect {server}: {e}"))?;
        s.set_read_timeout(Some(Duration::from_secs(10)))
            .map_err(|e| e.to_string())?;
        s.write_all(&i32::try_from(req.len()).unwrap_or(0).to_be_bytes())
            .and_then(|()| s.write_all(&req))
            .map_err(|e| format!("send: {e}"))?;
        let mut size = [0_u8; 4];
        s.read_exact(&mut size).map_err(|e| format!("read: {e}"))?;
        let mut resp = vec![0_u8; usize::try_from(i32::from_be_bytes(size)).unwrap_or(0)];
        s.read_exact(&mut resp).map_err(|e| format!("read: {e}"))?;
        // correlation id, topic count, topic name, partition count, partition, error code
        let name_len = usize::try_from(i16_at(&resp, 8)?).unwrap_or(0);
        let error = i16_at(&resp, 10 + name_len + 4 + 4)?;
        if error == 0 {
            Ok(())
        } else {
            Err(format!("produce to {topic}: error code {error}"))
        }
    }
}

const FOREIGN_TRACEPARENT: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

/// Headers a broken or hostile producer may send: a key that is not UTF-8 first, a valid
/// context, a null and an empty value, another bad key last.
fn hostile_headers(with_context: bool) -> Vec<raw_produce::RawHeader> {
    let mut h = vec![(b"\xff\xfebad-key".to_vec(), Some(b"v".to_vec()))];
    if with_context {
        h.push((
            b"traceparent".to_vec(),
            Some(FOREIGN_TRACEPARENT.as_bytes().to_vec()),
        ));
    }
    h.push((b"null".to_vec(), None));
    h.push((b"empty".to_vec(), Some(Vec::new())));
    h.push((b"tail-\xc3".to_vec(), Some(b"w".to_vec())));
    h
}

fn raw_send(topic: &str, key: &[u8], headers: &[raw_produce::RawHeader]) {
    let (host, port) = first_server();
    raw_produce::produce(
        &format!("{host}:{port}"),
        topic,
        Some(key),
        Some(b"body"),
        headers,
    )
    .unwrap_or_else(|e| panic!("raw produce: {e}"));
}

#[tokio::test]
async fn header_keys_that_are_not_utf8_skip_only_their_header_and_forwarding_them_sends_one_context()
 {
    use mqtrace::carrier::{HeaderExtractor, InvalidHeader};
    use mqtrace_rdkafka::KafkaHeaders;
    use rdkafka::message::BorrowedHeaders;
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("badkey");
        let out = unique("badkey-fwd");
        create_topic(&topic, 1).await;
        create_topic(&out, 1).await;
        raw_send(&topic, b"with-context", &hostile_headers(true));
        raw_send(&topic, b"without-context", &hostile_headers(false));

        let c = consumer(t.config(), &unique("g"), &[&topic]);
        let producer = kafka::producer(
            t.config()
                .with_existing_context(mqtrace::ExistingContext::Replace),
        );
        let first = next_message(&c).await;
        let second = next_message(&c).await;
        // The valid context is used although other keys are not UTF-8.
        let foreign = TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("id");
        assert_eq!(first.span_context().trace_id(), foreign);
        let h = KafkaHeaders(first.headers());
        assert_eq!(h.header("traceparent"), Some(Ok(FOREIGN_TRACEPARENT)));
        assert_eq!(
            h.header("null"),
            Some(Err(InvalidHeader::WrongType("null")))
        );
        assert_eq!(h.header("empty"), Some(Ok("")));
        assert_eq!(h.header_keys(), vec!["traceparent", "null", "empty"]);
        assert_eq!(first.headers().map(Headers::count), Some(5));

        // Forwarding the headers: never a panic, never two contexts, no header lost.
        send(
            &producer,
            &out,
            "k1",
            Some(b"x"),
            first.headers().map(BorrowedHeaders::detach),
        )
        .await;
        send(
            &producer,
            &out,
            "k2",
            Some(b"y"),
            second.headers().map(BorrowedHeaders::detach),
        )
        .await;
        c.commit_message(&first, CommitMode::Sync).expect("commit");
        c.commit_message(&second, CommitMode::Sync).expect("commit");
        drop((first, second));

        let c2 = consumer(t.config(), &unique("g"), &[&out]);
        let f1 = next_message(&c2).await;
        let f2 = next_message(&c2).await;
        // With a context to take out and a key rdkafka cannot copy, the headers are sent as
        // given (one context: the forwarded one), and the send span says why.
        let h1 = KafkaHeaders(f1.headers());
        assert_eq!(f1.headers().map(Headers::count), Some(5));
        assert_eq!(h1.header("traceparent"), Some(Ok(FOREIGN_TRACEPARENT)));
        assert_eq!(h1.header_keys(), vec!["traceparent", "null", "empty"]);
        // Without one, the context is added after the user's headers, all of them kept.
        let h2 = KafkaHeaders(f2.headers());
        assert_eq!(f2.headers().map(Headers::count), Some(5));
        assert_eq!(h2.header_keys(), vec!["null", "empty", "traceparent"]);
        assert_eq!(
            h2.header("null"),
            Some(Err(InvalidHeader::WrongType("null")))
        );
        assert_eq!(h2.header("empty"), Some(Ok("")));
        c2.commit_message(&f1, CommitMode::Sync).expect("commit");
        c2.commit_message(&f2, CommitMode::Sync).expect("commit");
        let f2_parent = f2.span_context().clone();
        drop((f1, f2));

        let spans = wait(&t, &format!("process {out}"), 2).await;
        let sends = spans.named(&format!("send {out}"));
        assert_eq!(sends.len(), 2);
        let refused: Vec<_> = sends
            .iter()
            .filter(|s| s.attr(attr::CONTEXT_ERROR).is_some())
            .collect();
        assert_eq!(refused.len(), 1, "one send could not carry its context");
        let carried = sends
            .iter()
            .find(|s| s.attr(attr::CONTEXT_ERROR).is_none())
            .expect("the other send");
        assert_eq!(
            h2_traceparent(&spans, &out, &f2_parent),
            Some(carried.span_context.span_id())
        );
    })
    .await;
}

/// The parent span id of the process span `process`.
fn h2_traceparent(spans: &Spans, topic: &str, process: &SpanContext) -> Option<SpanId> {
    spans
        .named(&format!("process {topic}"))
        .into_iter()
        .find(|s| s.span_context.span_id() == process.span_id())
        .map(|s| s.parent_span_id)
}

/// Consumes and forwards a message with header keys that are not UTF-8 in a child process
/// (so that its panic hook is the default one, which prints every panic): nothing may be
/// printed, and the consumer continues the valid context.
#[test]
fn header_keys_that_are_not_utf8_never_reach_the_panic_hook() {
    const CHILD: &str = "MQTRACE_BAD_KEY_CHILD";
    const NAME: &str = "header_keys_that_are_not_utf8_never_reach_the_panic_hook";
    if std::env::var_os(CHILD).is_some() {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        runtime.block_on(within(async {
            use mqtrace::carrier::HeaderExtractor;
            let t = TestTelemetry::new();
            let topic = unique("badkey-hook");
            create_topic(&topic, 1).await;
            raw_send(&topic, b"k", &hostile_headers(true));
            let c = consumer(t.config(), &unique("g"), &[&topic]);
            let m = next_message(&c).await;
            assert_eq!(
                m.span_context().trace_id(),
                TraceId::from_hex("0af7651916cd43dd8448eb211c80319c").expect("id")
            );
            let headers = mqtrace_rdkafka::KafkaHeaders(m.headers());
            assert_eq!(headers.header_keys(), vec!["traceparent", "null", "empty"]);
            let producer = kafka::producer(t.config());
            send(
                &producer,
                &topic,
                "again",
                None,
                m.headers().map(rdkafka::message::BorrowedHeaders::detach),
            )
            .await;
            m.finish(Outcome::Ack);
        }));
        return;
    }
    let exe = std::env::current_exe().expect("test binary");
    let out = std::process::Command::new(exe)
        .args([NAME, "--exact", "--nocapture", "--test-threads=1"])
        .env(CHILD, "1")
        .env("RUST_BACKTRACE", "1")
        .output()
        .expect("child test");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "child failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("1 passed"), "child ran the test:\n{stdout}");
    assert!(
        !stderr.contains("panicked") && !stdout.contains("panicked"),
        "a caught panic reached the hook:\n{stderr}"
    );
}

/// Sends `n` records to partition 0 of `topic` (many in flight at once); returns the
/// delivered offsets in order of key index.
async fn send_many(p: &TracedFutureProducer, topic: &str, n: usize) -> Vec<i64> {
    futures_util::stream::iter(0..n)
        .map(|i| async move {
            let key = format!("k{i}");
            let record = FutureRecord::<str, [u8]>::to(topic)
                .key(&key)
                .partition(0)
                .payload(b"x");
            p.send(record, SEND_TIMEOUT)
                .await
                .unwrap_or_else(|(e, _)| panic!("delivery to {topic}: {e}"))
                .offset
        })
        .buffered(500)
        .collect()
        .await
}

#[tokio::test]
async fn thousands_of_stores_between_two_auto_commits_all_get_their_commit_result() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("ranges");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        let n = 5_000;
        send_many(&producer, &topic, n).await;
        let mut client = consumer_config(&unique("g"));
        client
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "100");
        let c = consumer_with(t.config(), client, &[&topic]);
        let mut held = Vec::with_capacity(n);
        while held.len() < n {
            held.push(next_message(&c).await);
        }
        // More stores than the old per-partition bound (4,096) before any report.
        for m in &held {
            c.store_offset_from_message(m).expect("store");
        }
        drop(held);
        let tracker = c.context().commit_tracker();
        assert!(tracker.waiting() <= 64, "bounded: {}", tracker.waiting());
        let deadline = Instant::now() + WAIT;
        while tracker.waiting() > 0 {
            assert!(
                Instant::now() < deadline,
                "no commit report within {WAIT:?}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), c.recv()).await;
        }
        assert_eq!(tracker.in_flight(), 0);
        let spans = t.spans();
        let commits = spans.named(&format!("commit {topic}"));
        let stores = spans.named(&format!("store_offset {topic}"));
        assert!(!commits.is_empty());
        for commit in &commits {
            assert!(
                commit
                    .events
                    .iter()
                    .all(|e| e.name != "mqtrace.settle.unreported"),
                "a commit span ended unreported"
            );
            assert!(!commit.is_error(), "{:?}", commit.status);
            commit.assert_attr(attr::OUTCOME, "ack");
        }
        let covered: i64 = commits
            .iter()
            .map(|s| s.attr_i64(attr::MESSAGING_BATCH_MESSAGE_COUNT).unwrap_or(1))
            .sum();
        assert_eq!(
            covered,
            i64::try_from(n).expect("n"),
            "every store is in a range"
        );
        assert_eq!(
            commits.len() + stores.len(),
            n,
            "one settle span per message"
        );
        let processes = spans.named(&format!("process {topic}"));
        assert_eq!(processes.len(), n);
        assert!(
            processes
                .iter()
                .all(|p| p.attr_str(attr::OUTCOME) == Some("ack"))
        );
        let committed = c.committed(SEND_TIMEOUT).expect("committed");
        assert_eq!(
            committed.find_partition(&topic, 0).map(|e| e.offset()),
            Some(Offset::Offset(i64::try_from(n).expect("n")))
        );
    })
    .await;
}

#[tokio::test]
async fn bulk_commits_and_stores_settle_every_held_message_below_the_offset_and_no_other() {
    use rdkafka::topic_partition_list::TopicPartitionList;
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("bulk");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        send_many(&producer, &topic, 10).await;

        // Manual commits: commit(&tpl) covers offsets 0..=5, commit_consumer_state the rest.
        let c = consumer(t.config(), &unique("g"), &[&topic]);
        let mut held = Vec::new();
        while held.len() < 10 {
            held.push(next_message(&c).await);
        }
        assert_eq!(c.context().commit_tracker().in_flight(), 10);
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&topic, 0, Offset::Offset(6))
            .expect("offset");
        c.commit(&offsets, CommitMode::Sync).expect("commit");
        let spans = wait(&t, &format!("process {topic}"), 6).await;
        let done: BTreeSet<i64> = spans
            .named(&format!("process {topic}"))
            .iter()
            .filter_map(|s| s.attr_i64(attr::MESSAGING_KAFKA_OFFSET))
            .collect();
        assert_eq!(done, (0..6).collect(), "only the offsets below 6 settled");
        c.commit_consumer_state(CommitMode::Sync)
            .expect("commit state");
        let spans = wait(&t, &format!("process {topic}"), 10).await;
        drop(held);
        for p in spans.named(&format!("process {topic}")) {
            p.assert_attr(attr::OUTCOME, "ack");
            assert!(!p.is_error(), "{:?}", p.status);
            let settles: Vec<_> = spans
                .children_of(p)
                .into_iter()
                .filter(|s| s.name == format!("commit {topic}"))
                .collect();
            assert_eq!(settles.len(), 1, "one commit span per message");
            settles[0].assert_kind(SpanKind::Client);
            assert_eq!(
                settles[0].attr_i64(attr::MESSAGING_KAFKA_OFFSET),
                p.attr_i64(attr::MESSAGING_KAFKA_OFFSET)
            );
        }
        assert_eq!(c.context().commit_tracker().in_flight(), 0);
        let committed = c.committed(SEND_TIMEOUT).expect("committed");
        assert_eq!(
            committed.find_partition(&topic, 0).map(|e| e.offset()),
            Some(Offset::Offset(10))
        );

        // Stored in bulk with auto-commit: the held messages below the stored offset settle
        // at the store, the commit's result arrives on one commit span.
        let t = TestTelemetry::new();
        let mut client = consumer_config(&unique("g"));
        client
            .set("enable.auto.commit", "true")
            .set("enable.auto.offset.store", "false")
            .set("auto.commit.interval.ms", "100");
        let c = consumer_with(t.config(), client, &[&topic]);
        let mut held = Vec::new();
        while held.len() < 10 {
            held.push(next_message(&c).await);
        }
        let mut offsets = TopicPartitionList::new();
        offsets
            .add_partition_offset(&topic, 0, Offset::Offset(8))
            .expect("offset");
        c.store_offsets(&offsets).expect("store");
        let tracker = c.context().commit_tracker();
        let deadline = Instant::now() + WAIT;
        while tracker.waiting() > 0 {
            assert!(
                Instant::now() < deadline,
                "no commit report within {WAIT:?}"
            );
            let _ = tokio::time::timeout(Duration::from_millis(100), c.recv()).await;
        }
        let spans = t.spans();
        let done: BTreeSet<i64> = spans
            .named(&format!("process {topic}"))
            .iter()
            .filter_map(|s| s.attr_i64(attr::MESSAGING_KAFKA_OFFSET))
            .collect();
        assert_eq!(done, (0..8).collect(), "offsets 8 and 9 stay open");
        let commit = spans.one(&format!("commit {topic}"));
        assert!(
            commit
                .events
                .iter()
                .all(|e| e.name != "mqtrace.settle.unreported")
        );
        assert_eq!(spans.named(&format!("store_offset {topic}")).len(), 7);
        for p in spans.named(&format!("process {topic}")) {
            p.assert_attr(attr::OUTCOME, "ack");
        }
        // Held messages beyond the store are settled one by one.
        for m in &held[8..] {
            c.store_offset_from_message(m).expect("store");
        }
        drop(held);
        let spans = wait(&t, &format!("process {topic}"), 10).await;
        assert!(
            spans
                .named(&format!("process {topic}"))
                .iter()
                .all(|p| !p.is_error())
        );
    })
    .await;
}

#[tokio::test]
async fn detached_messages_handled_by_a_worker_pool_keep_their_process_spans() {
    use mqtrace_rdkafka::OwnedTracedMessage;
    use tracing::Instrument as _;
    use tracing_subscriber::layer::SubscriberExt as _;
    within(async {
        let t = TestTelemetry::new();
        let subscriber = tracing_subscriber::registry()
            .with(tracing_opentelemetry::layer().with_tracer(t.provider().tracer("handler")));
        let _guard = tracing::subscriber::set_default(subscriber);
        let topic = unique("workers");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        let n = 200;
        send_many(&producer, &topic, n).await;

        let consumer = Arc::new(consumer(t.config(), &unique("g"), &[&topic]));
        let (tx, rx) = tokio::sync::mpsc::channel::<OwnedTracedMessage>(16);
        let rx = Arc::new(tokio::sync::Mutex::new(rx));
        let mut workers = Vec::new();
        for w in 0..4 {
            let rx = rx.clone();
            let consumer = consumer.clone();
            let otel = t.provider().tracer("worker");
            workers.push(tokio::spawn(async move {
                let mut handled = 0_usize;
                loop {
                    let next = rx.lock().await.recv().await;
                    let Some(m) = next else { break };
                    m.in_span(async {
                        async { tokio::task::yield_now().await }
                            .instrument(tracing::info_span!("handle", worker = w))
                            .await;
                        let mut s = otel.start("handler call");
                        tokio::task::yield_now().await;
                        s.end();
                    })
                    .await;
                    consumer
                        .commit_message(&m, CommitMode::Async)
                        .expect("commit");
                    handled += 1;
                }
                handled
            }));
        }
        for _ in 0..n {
            let m = next_message(&consumer).await.detach();
            tx.send(m).await.expect("a worker");
        }
        drop(tx);
        let mut handled = 0;
        for w in workers {
            handled += w.await.expect("worker");
        }
        assert_eq!(handled, n);

        let spans = wait(&t, &format!("process {topic}"), n).await;
        let sends: HashMap<i64, &opentelemetry_sdk::trace::SpanData> = spans
            .named(&format!("send {topic}"))
            .into_iter()
            .filter_map(|s| s.attr_i64(attr::MESSAGING_KAFKA_OFFSET).map(|o| (o, s)))
            .collect();
        let processes = spans.named(&format!("process {topic}"));
        assert_eq!(processes.len(), n, "each process span ends once");
        let offsets: BTreeSet<i64> = processes
            .iter()
            .filter_map(|p| p.attr_i64(attr::MESSAGING_KAFKA_OFFSET))
            .collect();
        assert_eq!(offsets.len(), n);
        for p in processes {
            let offset = p.attr_i64(attr::MESSAGING_KAFKA_OFFSET).expect("offset");
            p.assert_child_of(sends.get(&offset).expect("its send span"));
            p.assert_attr(attr::OUTCOME, "ack");
            let children = spans.children_of(p);
            let names: Vec<&str> = children.iter().map(|s| s.name.as_ref()).collect();
            assert_eq!(
                names.iter().filter(|n| **n == "handle").count(),
                1,
                "{names:?}"
            );
            assert_eq!(
                names.iter().filter(|n| **n == "handler call").count(),
                1,
                "{names:?}"
            );
            assert_eq!(
                names
                    .iter()
                    .filter(|n| **n == format!("commit {topic}"))
                    .count(),
                1,
                "{names:?}"
            );
        }
        assert_eq!(consumer.context().commit_tracker().in_flight(), 0);
    })
    .await;
}

#[tokio::test]
async fn a_revoke_drops_the_bulk_bookkeeping_of_its_partitions() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("revoke");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        send_many(&producer, &topic, 3).await;
        let c = consumer(t.config(), &unique("g"), &[&topic]);
        let mut held = Vec::new();
        while held.len() < 3 {
            held.push(next_message(&c).await);
        }
        let tracker = c.context().commit_tracker();
        assert_eq!(tracker.in_flight(), 3);
        c.unsubscribe();
        let deadline = Instant::now() + WAIT;
        while tracker.in_flight() > 0 {
            assert!(Instant::now() < deadline, "no revoke within {WAIT:?}");
            // Polling serves the rebalance.
            let _ = tokio::time::timeout(Duration::from_millis(100), c.recv()).await;
        }
        // The messages themselves are untouched: each still ends once, by its own settle.
        for m in &held {
            m.finish(Outcome::Ack);
        }
        drop(held);
        let spans = wait(&t, &format!("process {topic}"), 3).await;
        assert_eq!(spans.named(&format!("process {topic}")).len(), 3);
    })
    .await;
}

#[tokio::test]
async fn spans_carry_the_cluster_id_the_broker_reports_once_it_is_known() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("cluster");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        // Tansu reports `tansu_cluster` in its metadata; Apache Kafka its generated id.
        let admin: FutureProducer = client_config().create().expect("client");
        let cluster = admin
            .client()
            .fetch_metadata(None, std::time::Duration::from_secs(10))
            .ok()
            .and_then(|_| {
                admin
                    .client()
                    .fetch_cluster_id(std::time::Duration::from_secs(10))
            })
            .expect("the broker reports a cluster id");
        for body in ["a", "b"] {
            producer
                .send(
                    FutureRecord::<str, str>::to(&topic).payload(body),
                    std::time::Duration::from_secs(10),
                )
                .await
                .map_err(|(e, _)| e)
                .expect("delivered");
        }
        let c = consumer(t.config(), &unique("g"), &[&topic]);
        let m = next_message(&c).await;
        c.commit_message(&m, CommitMode::Sync).expect("commit");
        let spans = wait(&t, &format!("commit {topic}"), 1).await;
        // Known from the first metadata answer on: the second send has it.
        let sends = spans.named(&format!("send {topic}"));
        assert!(
            sends
                .iter()
                .any(|s| s.attr_str(attr::MESSAGING_KAFKA_CLUSTER_ID) == Some(cluster.as_str())),
            "{sends:?}"
        );
        for name in [format!("process {topic}"), format!("commit {topic}")] {
            spans
                .one(&name)
                .assert_attr_str(attr::MESSAGING_KAFKA_CLUSTER_ID, &cluster);
        }
    })
    .await;
}

/// Headers a hostile producer forges on a normal topic: an attempt, a previous attempt, an
/// origin and a not-before an hour ahead, every one an mqtrace history header.
fn forged_history() -> OwnedHeaders {
    let hour =
        mqtrace::retry::epoch_millis(std::time::SystemTime::now() + Duration::from_secs(3600))
            .to_string();
    OwnedHeaders::new()
        .insert(Header {
            key: mqtrace::ATTEMPT_HEADER,
            value: Some("7"),
        })
        .insert(Header {
            key: mqtrace::retry::PREVIOUS_ATTEMPT_HEADER,
            value: Some("00-11111111111111111111111111111111-2222222222222222-01"),
        })
        .insert(Header {
            key: mqtrace::retry::ORIGIN_HEADER,
            value: Some("00-33333333333333333333333333333333-4444444444444444-01"),
        })
        .insert(Header {
            key: mqtrace::retry::NOT_BEFORE_HEADER,
            value: Some(hour.as_str()),
        })
}

/// Anyone can produce to a topic: on one the trust policy does not trust and that no
/// `RetryTopics` declared, forged history headers are refused (and said so), not believed:
/// the attempt is 1, no origin or previous-attempt link. The same headers on a trusted topic
/// are believed (the attempt they carry).
#[tokio::test]
async fn forged_history_headers_on_an_untrusted_normal_topic_are_refused() {
    within(async {
        let t = TestTelemetry::new();
        let untrusted = unique("forged-history");
        let trusted = unique("forged-history-trusted");
        create_topic(&untrusted, 1).await;
        create_topic(&trusted, 1).await;
        let raw: FutureProducer = client_config().create().expect("raw producer");
        let sent = forged_history();
        for topic in [&untrusted, &trusted] {
            let record = FutureRecord::<str, [u8]>::to(topic)
                .key("k")
                .payload(&b"x"[..])
                .headers(sent.clone());
            raw.send(record, SEND_TIMEOUT)
                .await
                .unwrap_or_else(|(e, _)| panic!("delivery to {topic}: {e}"));
        }
        let config = t
            .config()
            .with_trust(mqtrace::Trust::untrusted_sources([untrusted.clone()]));
        for (topic, believed) in [(&untrusted, false), (&trusted, true)] {
            let c = consumer(config.clone(), &unique("g"), &[topic]);
            let m = next_message(&c).await;
            assert_eq!(m.attempt(), if believed { 7 } else { 1 }, "{topic}");
            // The user still sees every header as it was sent.
            assert_eq!(pairs(m.headers()), pairs(Some(&sent)));
            c.store_offset_from_message(&m).expect("store");
            drop(m);
        }
        let spans = wait(&t, &format!("store_offset {trusted}"), 1).await;
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

#[test]
fn a_delivery_future_dropped_outside_a_runtime_records_abandoned_on_span_and_metric() {
    let t = TestTelemetry::new();
    let topic = unique("abandoned");
    let runtime = tokio::runtime::Runtime::new().expect("runtime");
    runtime.block_on(create_topic(&topic, 1));
    let producer = kafka::producer(t.config().with_metrics(true));
    let delivery = producer
        .send_result(FutureRecord::to(&topic).key("k").payload("x"))
        .map_err(|(e, _)| e)
        .expect("queued");
    // No runtime here: nothing can wait for the report, so the span ends at the drop.
    drop(delivery);
    let spans = t.spans();
    let send = spans.one(&format!("send {topic}"));
    send.assert_attr_str(attr::ERROR_TYPE, "abandoned");
    assert!(send.is_error());
    assert!(
        send.events
            .iter()
            .any(|e| e.name == "mqtrace.send.abandoned")
    );
    let points = t.metric("messaging.client.operation.duration");
    let ours: Vec<_> = points
        .iter()
        .filter(|p| p.attr_str(attr::MESSAGING_DESTINATION_NAME) == Some(topic.as_str()))
        .collect();
    assert_eq!(ours.len(), 1, "{points:?}");
    assert_eq!(ours[0].attr_str(attr::ERROR_TYPE), Some("abandoned"));
}

/// A record sent, consumed by a relay stage that forwards it with the received headers
/// (context included) to a second topic, and consumed there. Returns the spans' telemetry,
/// both topics and the headers the last consumer saw.
async fn relay(rule: mqtrace::ExistingContext) -> (TestTelemetry, String, String, Pairs) {
    let t = TestTelemetry::new();
    let (t_in, t_out) = (unique("relay-in"), unique("relay-out"));
    create_topic(&t_in, 1).await;
    create_topic(&t_out, 1).await;
    let config = || t.config().with_existing_context(rule);
    let producer = kafka::producer(config());
    let user = OwnedHeaders::new().insert(Header {
        key: "order-id",
        value: Some(&b"o-7"[..]),
    });
    let cx = opentelemetry::baggage::BaggageExt::with_baggage(
        &Context::current(),
        [opentelemetry::KeyValue::new("tenant", "acme")],
    );
    send(&producer, &t_in, "k", Some(b"x"), Some(user))
        .with_context(cx)
        .await;
    let c_in = consumer(config(), &unique("relay"), &[&t_in]);
    let m = next_message(&c_in).await;
    let forwarded = m.headers().map(rdkafka::message::BorrowedHeaders::detach);
    m.in_span(send(&producer, &t_out, "k", Some(b"x"), forwarded))
        .await;
    c_in.commit_message(&m, CommitMode::Sync).expect("commit");
    drop(m);
    let c_out = consumer(config(), &unique("last"), &[&t_out]);
    let m2 = next_message(&c_out).await;
    let headers = pairs(m2.headers());
    c_out.commit_message(&m2, CommitMode::Sync).expect("commit");
    drop(m2);
    wait(&t, &format!("commit {t_out}"), 1).await;
    (t, t_in, t_out, headers)
}

fn header_str(headers: &Pairs, key: &str) -> Vec<String> {
    headers
        .iter()
        .filter(|(k, _)| k == key)
        .map(|(_, v)| String::from_utf8_lossy(v.as_deref().unwrap_or_default()).into_owned())
        .collect()
}

/// The default rule (`ExistingContext::Keep`) through Kafka: the forwarded context is sent
/// unchanged (one `traceparent`, the first producer's), so the last consumer continues the
/// first producer's span: one trace through the pipeline. The relay's send is a CLIENT span,
/// child of its process span, linking the kept context.
#[tokio::test]
async fn a_relay_that_forwards_headers_keeps_the_context_one_trace_through_kafka() {
    within(async {
        let (t, t_in, t_out, headers) = relay(mqtrace::ExistingContext::Keep).await;
        let spans = t.spans();
        let first = spans.one(&format!("send {t_in}"));
        first.assert_kind(SpanKind::Producer);
        let relay_process = spans.one(&format!("process {t_in}"));
        let forward = spans.one(&format!("send {t_out}"));
        assert_relay_send(
            mqtrace::ExistingContext::Keep,
            forward,
            relay_process,
            first,
        );
        let last = spans.one(&format!("process {t_out}"));
        last.assert_parent_context(&first.span_context);
        for s in [relay_process, forward, last] {
            assert_eq!(
                s.span_context.trace_id(),
                first.span_context.trace_id(),
                "{}",
                spans.tree()
            );
        }
        assert_eq!(
            header_str(&headers, "traceparent"),
            vec![traceparent_of(&first.span_context)]
        );
        assert_eq!(
            header_str(&headers, "baggage"),
            vec!["tenant=acme".to_owned()]
        );
        assert_eq!(header_str(&headers, "order-id"), vec!["o-7".to_owned()]);
    })
    .await;
}

/// `ExistingContext::Replace` through Kafka: the relay's own context replaces every forwarded
/// field (one `traceparent`, the relay's send span's), a PRODUCER span linking the replaced
/// context as `replaced`; the last consumer continues the relay's send span.
#[tokio::test]
async fn the_replace_rule_writes_the_relays_context_through_kafka() {
    within(async {
        let (t, t_in, t_out, headers) = relay(mqtrace::ExistingContext::Replace).await;
        let spans = t.spans();
        let first = spans.one(&format!("send {t_in}"));
        let relay_process = spans.one(&format!("process {t_in}"));
        let forward = spans.one(&format!("send {t_out}"));
        assert_relay_send(
            mqtrace::ExistingContext::Replace,
            forward,
            relay_process,
            first,
        );
        spans
            .one(&format!("process {t_out}"))
            .assert_child_of(forward);
        assert_eq!(
            header_str(&headers, "traceparent"),
            vec![traceparent_of(&forward.span_context)]
        );
        assert_eq!(
            header_str(&headers, "baggage"),
            vec!["tenant=acme".to_owned()]
        );
        assert_eq!(header_str(&headers, "order-id"), vec!["o-7".to_owned()]);
    })
    .await;
}
