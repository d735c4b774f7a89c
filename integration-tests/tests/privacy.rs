//! Privacy against real brokers: marked secrets (a message body, a message key, a header or
//! attribute value that is not a propagation key, a password in the broker URL or the client's
//! configuration) sent through RabbitMQ, Kafka and Pub/Sub never appear in any exported span
//! (name, attributes, events, links, status: errors recorded on spans included) or metric.

use google_cloud_pubsub::model::Message as PubSubMessage;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, ConfirmSelectOptions,
    QueueDeclareOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, ConnectionProperties};
use mqtrace::testing::{SpanDataExt, TestTelemetry};
use mqtrace_integration_tests::kafka::{self, create_topic};
use mqtrace_integration_tests::pubsub::pubsub;
use mqtrace_integration_tests::support::{wait, within};
use mqtrace_integration_tests::{amqp_url, next_delivery, unique};
use mqtrace_lapin::TracedConnection;
use mqtrace_pubsub::{TracedPublisher, TracedSubscriber};
use opentelemetry_sdk::metrics::{InMemoryMetricExporter, SdkMeterProvider};
use rdkafka::consumer::CommitMode;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::time::Duration;

/// The marked secrets of one run (unique, so an earlier run's spans cannot match).
struct Secrets {
    body: String,
    key: String,
    header: String,
    password: String,
}

impl Secrets {
    fn new() -> Self {
        let tag = unique("s").replace('.', "");
        Self {
            body: format!("SECRETBODY{tag}"),
            key: format!("SECRETKEY{tag}"),
            header: format!("SECRETHEADER{tag}"),
            password: format!("SECRETPASS{tag}"),
        }
    }

    fn all(&self) -> [(&'static str, &str); 4] {
        [
            ("body", &self.body),
            ("message key", &self.key),
            ("header value", &self.header),
            ("password", &self.password),
        ]
    }
}

/// Fails if any secret occurs in `dump` (what was exported, as text).
fn assert_clean(what: &str, dump: &str, secrets: &Secrets) {
    for (kind, secret) in secrets.all() {
        assert!(
            !dump.contains(secret),
            "the {kind} leaked into the {what}: {dump}"
        );
    }
}

/// Telemetry whose every exported metric can be dumped.
struct Exported {
    t: TestTelemetry,
    meter: SdkMeterProvider,
    metrics: InMemoryMetricExporter,
}

impl Exported {
    fn new() -> Self {
        let metrics = InMemoryMetricExporter::default();
        let meter = SdkMeterProvider::builder()
            .with_periodic_exporter(metrics.clone())
            .build();
        Self {
            t: TestTelemetry::new(),
            meter,
            metrics,
        }
    }

    fn config(&self) -> mqtrace::Config {
        self.t.config().with_meter_provider(self.meter.clone())
    }

    /// Every exported span, whole (`Debug`: name, attributes, events, links, status).
    fn span_dump(&self) -> String {
        self.t
            .spans()
            .all()
            .iter()
            .map(|s| format!("{s:?}\n"))
            .collect()
    }

    /// Every exported metric point with its attributes.
    fn metric_dump(&self) -> String {
        let _ = self.meter.force_flush();
        format!("{:?}", self.metrics.get_finished_metrics())
    }

    /// Checks both dumps, after checking that they show what they should (so an empty dump
    /// cannot pass): `destination` appears in both.
    fn assert_clean(&self, destination: &str, secrets: &Secrets) {
        let spans = self.span_dump();
        assert!(
            spans.contains(destination),
            "the span dump shows attributes"
        );
        assert_clean("spans", &spans, secrets);
        let metrics = self.metric_dump();
        assert!(
            metrics.contains(destination),
            "the metric dump shows attributes: {metrics}"
        );
        assert_clean("metrics", &metrics, secrets);
    }
}

/// A RabbitMQ user created for one test on the shared broker, deleted on drop.
struct RabbitUser(String);

fn rabbitmqctl(args: &[&str]) {
    let out = std::process::Command::new("rabbitmqctl")
        .args(args)
        .output()
        .expect("rabbitmqctl runs");
    assert!(
        out.status.success(),
        "rabbitmqctl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

impl RabbitUser {
    fn create(name: &str, password: &str) -> Self {
        rabbitmqctl(&["add_user", name, password]);
        let user = Self(name.to_owned());
        rabbitmqctl(&["set_permissions", "-p", "/", name, ".*", ".*", ".*"]);
        user
    }
}

impl Drop for RabbitUser {
    fn drop(&mut self) {
        let _ = std::process::Command::new("rabbitmqctl")
            .args(["delete_user", &self.0])
            .output();
    }
}

#[tokio::test]
async fn rabbitmq_secrets_never_reach_spans_or_metrics() {
    within(async {
        let secrets = Secrets::new();
        let e = Exported::new();
        let user_name = unique("privacy-user");
        let _user = RabbitUser::create(&user_name, &secrets.password);
        let shared = amqp_url();
        let host = shared.rsplit('@').next().unwrap_or("127.0.0.1:5672/%2f");
        let host = host.trim_start_matches("amqp://");
        let url = format!("amqp://{user_name}:{}@{host}", secrets.password);
        let conn = TracedConnection::connect(&url, ConnectionProperties::default(), e.config())
            .await
            .expect("connect as the new user");
        let ch = conn.create_channel().await.expect("channel");
        ch.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let q = unique("privacy");
        // A named queue that expires (an auto-delete one would be temporary, and its name kept
        // out of metrics, where this test looks for it).
        let mut expires = FieldTable::default();
        expires.insert("x-expires".into(), lapin::types::AMQPValue::LongInt(60_000));
        ch.queue_declare(q.as_str().into(), QueueDeclareOptions::default(), expires)
            .await
            .expect("queue_declare");
        let mut headers = FieldTable::default();
        for key in ["x-api-key", "authorization"] {
            headers.insert(
                key.into(),
                AMQPValue::LongString(LongString::from(secrets.header.as_bytes())),
            );
        }
        let props = BasicProperties::default()
            .with_headers(headers)
            .with_message_id(q.as_str().into());
        ch.basic_publish(
            "".into(),
            q.as_str().into(),
            BasicPublishOptions::default(),
            secrets.body.as_bytes(),
            props.clone(),
        )
        .await
        .expect("publish")
        .await
        .expect("confirm");
        // Unroutable and mandatory: the broker returns the message (body and all).
        let returned = ch
            .basic_publish(
                "".into(),
                unique("nowhere").as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                secrets.body.as_bytes(),
                props.clone(),
            )
            .await
            .expect("publish")
            .await
            .expect("confirm");
        assert!(returned.take_message().is_some(), "the broker returned it");
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
        assert_eq!(
            d.data,
            secrets.body.as_bytes(),
            "the body itself is unchanged"
        );
        d.ack(BasicAckOptions::default()).await.expect("ack");
        wait(&e.t, &format!("ack {q}"), 1).await;

        // An error recorded on a span: publishing to a missing exchange closes the channel.
        let bad = conn.create_channel().await.expect("channel");
        bad.confirm_select(ConfirmSelectOptions::default())
            .await
            .expect("confirm_select");
        let missing = unique("missing-exchange");
        let failed = async {
            bad.basic_publish(
                missing.as_str().into(),
                q.as_str().into(),
                BasicPublishOptions::default(),
                secrets.body.as_bytes(),
                props,
            )
            .await?
            .await
        }
        .await;
        assert!(failed.is_err(), "publishing to a missing exchange fails");
        let failed_span = format!("publish {missing}:{q}");
        let spans = wait(&e.t, &failed_span, 1).await;
        assert!(
            spans.one(&failed_span).attr_str("error.type").is_some(),
            "the failure is recorded"
        );
        e.assert_clean(&q, &secrets);
        assert!(
            !e.span_dump().contains(&format!("{user_name}:")),
            "no user:password pair in spans"
        );
    })
    .await;
}

#[tokio::test]
async fn kafka_secrets_never_reach_spans_or_metrics() {
    within(async {
        let secrets = Secrets::new();
        let e = Exported::new();
        let topic = unique("privacy");
        create_topic(&topic, 1).await;
        // A password in the client's configuration (unused by a plaintext listener).
        let mut client = kafka::client_config();
        client
            .set("sasl.username", "mqtrace-privacy")
            .set("sasl.password", &secrets.password)
            .set("message.max.bytes", "2000");
        let producer =
            mqtrace_rdkafka::TracedFutureProducer::create(&client, e.config()).expect("producer");
        let headers = || {
            OwnedHeaders::new()
                .insert(Header {
                    key: "x-api-key",
                    value: Some(secrets.header.as_str()),
                })
                .insert(Header {
                    key: "authorization",
                    value: Some(secrets.header.as_str()),
                })
        };
        producer
            .send(
                FutureRecord::to(&topic)
                    .key(secrets.key.as_str())
                    .payload(secrets.body.as_str())
                    .headers(headers()),
                Duration::from_secs(10),
            )
            .await
            .unwrap_or_else(|(e, _)| panic!("send: {e}"));
        // An error recorded on a span: too large for `message.max.bytes`.
        let large = secrets.body.repeat(200);
        let refused = producer
            .send(
                FutureRecord::to(&topic)
                    .key(secrets.key.as_str())
                    .payload(large.as_str())
                    .headers(headers()),
                Duration::from_secs(10),
            )
            .await;
        assert!(
            refused.is_err(),
            "a record over message.max.bytes is refused"
        );

        let group = unique("privacy-group");
        let mut consumer_client = kafka::consumer_config(&group);
        consumer_client.set("sasl.password", &secrets.password);
        let consumer = kafka::consumer_with(e.config(), consumer_client, &[&topic]);
        let m = kafka::next_message(&consumer).await;
        use rdkafka::message::Message as _;
        assert_eq!(m.payload(), Some(secrets.body.as_bytes()));
        consumer
            .commit_message(&m, CommitMode::Sync)
            .expect("commit");
        drop(m);
        wait(&e.t, &format!("commit {topic}"), 1).await;
        let spans = wait(&e.t, &format!("send {topic}"), 2).await;
        assert!(
            spans
                .named(&format!("send {topic}"))
                .iter()
                .any(|s| s.attr_str("error.type").is_some()),
            "the refused send is recorded"
        );
        e.assert_clean(&topic, &secrets);
    })
    .await;
}

#[tokio::test]
async fn pubsub_secrets_never_reach_spans_or_metrics() {
    within(async {
        let secrets = Secrets::new();
        let e = Exported::new();
        let ps = pubsub().await;
        let topic = ps.create_topic(&unique("privacy")).await;
        let sub = ps
            .create_subscription(&unique("privacy-sub"), &topic, |s| s)
            .await;
        let inst = ps.emulator.instrumentation(e.config());
        let raw = ps
            .emulator
            .publisher(&topic)
            .build()
            .await
            .expect("publisher");
        let publisher = TracedPublisher::new(raw, &topic, inst.clone());
        tokio::time::timeout(
            Duration::from_secs(20),
            publisher.publish(
                PubSubMessage::new()
                    .set_data(secrets.body.clone())
                    .set_attributes([
                        ("x-api-key", secrets.header.as_str()),
                        ("authorization", secrets.header.as_str()),
                    ]),
            ),
        )
        .await
        .expect("publish within 20 s")
        .expect("publish");
        let client = ps.emulator.subscriber().build().await.expect("subscriber");
        let mut stream = TracedSubscriber::new(client, inst).subscribe(&sub).build();
        let (m, handler) = mqtrace_integration_tests::pubsub::next_message(&mut stream).await;
        assert_eq!(&m.data[..], secrets.body.as_bytes());
        handler.ack();
        let short_sub = mqtrace_pubsub::short_name(&sub);
        wait(&e.t, &format!("ack {short_sub}"), 1).await;
        e.assert_clean(short_sub, &secrets);
    })
    .await;
}
