//! mqtrace-pubsub against Google's Pub/Sub emulator (`PUBSUB_EMULATOR_HOST`, default
//! 127.0.0.1:8085; `scripts/start-brokers.sh pubsub` starts it).
//!
//! Every test uses its own tracer provider and uniquely named topics and subscriptions, so they
//! run in parallel. Every wait is bounded.

use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::model::Message;
use mqtrace::attributes as attr;
use mqtrace::testing::{SpanDataExt, Spans, TestTelemetry};
use mqtrace::w3c;
use mqtrace_integration_tests::pubsub::{PubSub, next_message, pubsub, try_pubsub};
use mqtrace_integration_tests::support::{
    assert_relay_send, fast, python_context, python_span, traceparent_of, wait, within,
};
use mqtrace_integration_tests::unique;
use mqtrace_pubsub::attributes as ps;
use mqtrace_pubsub::prelude::*;
use mqtrace_pubsub::{
    Emulator, GOOGCLIENT_TRACEPARENT, GOOGCLIENT_TRACESTATE, GoogleContext, TracedMessageStream,
    TracedPublisher, TracedSubscriber,
};
use opentelemetry::Context;
use opentelemetry::context::FutureExt;
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceFlags, TraceId, Tracer,
    TracerProvider,
};
use std::time::{Duration, Instant};

/// A fresh tracer provider, the emulator, and a topic with one subscription on it.
struct Setup {
    t: TestTelemetry,
    ps: PubSub,
    topic: String,
    sub: String,
}

async fn setup(
    configure: impl FnOnce(
        google_cloud_pubsub::model::Subscription,
    ) -> google_cloud_pubsub::model::Subscription,
) -> Setup {
    let t = TestTelemetry::new();
    let ps = pubsub().await;
    let topic = ps.create_topic(&unique("orders")).await;
    let sub = ps
        .create_subscription(&unique("billing"), &topic, configure)
        .await;
    Setup { t, ps, topic, sub }
}

impl Setup {
    fn inst(&self) -> mqtrace::instrument::Instrumentation {
        self.ps.emulator.instrumentation(self.t.config())
    }

    async fn publisher(&self) -> TracedPublisher {
        self.publisher_to(&self.topic, |b| b).await
    }

    async fn publisher_to(
        &self,
        topic: &str,
        configure: impl FnOnce(
            google_cloud_pubsub::builder::publisher::PublisherBuilder,
        ) -> google_cloud_pubsub::builder::publisher::PublisherBuilder,
    ) -> TracedPublisher {
        self.publisher_with(topic, configure, self.t.config()).await
    }

    /// As [`Self::publisher_to`], instrumented with `config`.
    async fn publisher_with(
        &self,
        topic: &str,
        configure: impl FnOnce(
            google_cloud_pubsub::builder::publisher::PublisherBuilder,
        ) -> google_cloud_pubsub::builder::publisher::PublisherBuilder,
        config: mqtrace::Config,
    ) -> TracedPublisher {
        let raw = configure(self.ps.emulator.publisher(topic))
            .build()
            .await
            .expect("publisher");
        TracedPublisher::new(raw, topic, self.ps.emulator.instrumentation(config))
    }

    /// A publisher without instrumentation: what another producer sends.
    async fn raw_publisher(&self) -> Publisher {
        self.ps
            .emulator
            .publisher(&self.topic)
            .build()
            .await
            .expect("publisher")
    }

    async fn stream(&self, sub: &str) -> TracedMessageStream {
        let client = self
            .ps
            .emulator
            .subscriber()
            .build()
            .await
            .expect("subscriber");
        TracedSubscriber::new(client, self.inst())
            .subscribe(sub)
            .build()
    }

    async fn wait(&self, name: &str, count: usize) -> Spans {
        wait(&self.t, name, count).await
    }
}

async fn publish(p: &TracedPublisher, msg: Message) -> String {
    tokio::time::timeout(Duration::from_secs(20), p.publish(msg))
        .await
        .expect("publish answered within 20 s")
        .expect("publish")
}

fn short(name: &str) -> &str {
    mqtrace_pubsub::short_name(name)
}

#[tokio::test]
async fn publish_then_subscribe_is_one_trace_with_exact_parents_links_names_kinds_and_attributes() {
    within(async {
        let s = setup(|sub| sub).await;
        let (topic, sub) = (short(&s.topic), short(&s.sub));
        let publisher = s.publisher().await;

        // The application's own span around the publish.
        let app = s.t.provider().tracer("app");
        let cx = Context::current_with_span(app.start("checkout"));
        let id = publish(
            &publisher,
            Message::new()
                .set_data("{\"order\":1}")
                .set_attributes([("tenant", "acme")]),
        )
        .with_context(cx.clone())
        .await;
        cx.span().end();

        let mut stream = s.stream(&s.sub).await;
        let (message, handler) = next_message(&mut stream).await;
        assert_eq!(&message.data[..], b"{\"order\":1}");
        assert_eq!(message.message_id, id);
        let handled = handler
            .in_span(async {
                tokio::task::yield_now().await;
                app.start("handle").end();
            })
            .await;
        let () = handled;
        handler.ack();

        let spans = s.wait(&format!("ack {sub}"), 1).await;
        let checkout = spans.one("checkout");
        let create = spans.one(&format!("send {topic}"));
        let process = spans.one(&format!("subscribe {sub}"));
        let ack = spans.one(&format!("ack {sub}"));
        let handle = spans.one("handle");

        // One trace: checkout -> create -> subscribe -> (handle, ack).
        create.assert_child_of(checkout);
        process.assert_child_of(create);
        process.assert_links_to(&create.span_context);
        assert!(process.parent_span_is_remote);
        handle.assert_child_of(process);
        ack.assert_child_of(process);

        // What travelled: both the propagator's and Google's keys, same W3C value, the user's
        // attribute untouched, no empty trace state.
        let traceparent = w3c::encode_traceparent(&create.span_context);
        assert_eq!(message.attributes.get("traceparent"), Some(&traceparent));
        assert_eq!(
            message.attributes.get(GOOGCLIENT_TRACEPARENT),
            Some(&traceparent)
        );
        assert_eq!(
            message.attributes.get("tenant").map(String::as_str),
            Some("acme")
        );
        assert!(!message.attributes.contains_key("tracestate"));
        assert!(!message.attributes.contains_key(GOOGCLIENT_TRACESTATE));
        assert_eq!(message.attributes.len(), 3, "{:?}", message.attributes);

        // Kinds.
        checkout.assert_kind(SpanKind::Internal);
        create.assert_kind(SpanKind::Producer);
        process.assert_kind(SpanKind::Consumer);
        ack.assert_kind(SpanKind::Client);

        // Attributes.
        let (host, port) = s.ps.emulator.host_port();
        for span in [create, process, ack] {
            span.assert_attr(attr::MESSAGING_SYSTEM, "gcp_pubsub");
            span.assert_attr_str(attr::SERVER_ADDRESS, host);
            span.assert_attr_i64(attr::SERVER_PORT, i64::from(port));
        }
        create.assert_attr(attr::MESSAGING_OPERATION_NAME, "send");
        create.assert_attr(attr::MESSAGING_OPERATION_TYPE, "send");
        create.assert_attr_str(attr::MESSAGING_DESTINATION_NAME, topic);
        create.assert_attr_str(attr::MESSAGING_MESSAGE_ID, &id);
        assert!(create.attr(ps::ORDERING_KEY).is_none());
        assert!(!create.is_error());

        process.assert_attr(attr::MESSAGING_OPERATION_NAME, "subscribe");
        process.assert_attr(attr::MESSAGING_OPERATION_TYPE, "process");
        process.assert_attr_str(attr::MESSAGING_DESTINATION_NAME, sub);
        process.assert_attr_str(attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME, sub);
        process.assert_attr_str(attr::MESSAGING_MESSAGE_ID, &id);
        process.assert_attr(attr::OUTCOME, "ack");
        let ack_id = process.attr_str(ps::ACK_ID).expect("ack id recorded");
        assert!(!ack_id.is_empty());
        // No dead-letter policy: Pub/Sub does not count attempts, and we do not guess.
        assert!(process.attr(ps::DELIVERY_ATTEMPT).is_none());
        assert!(process.attr(attr::DELIVERY_ATTEMPT).is_none());
        assert!(process.attr(attr::CONTEXT_ERROR).is_none());
        assert!(!process.is_error());

        ack.assert_attr(attr::MESSAGING_OPERATION_NAME, "ack");
        ack.assert_attr(attr::MESSAGING_OPERATION_TYPE, "settle");
        ack.assert_attr_str(attr::MESSAGING_DESTINATION_NAME, sub);
        ack.assert_attr_str(ps::ACK_ID, ack_id);
        ack.assert_attr(attr::OUTCOME, "ack");
    })
    .await;
}

#[tokio::test]
async fn a_publish_future_polled_again_says_so_at_once_not_shutdown() {
    within(async {
        let s = setup(|sub| sub).await;
        let publisher = s.publisher().await;
        let mut published = publisher.publish(Message::new().set_data("x"));
        let id = tokio::time::timeout(Duration::from_secs(20), &mut published)
            .await
            .expect("publish answered within 20 s")
            .expect("publish");
        let again = tokio::time::timeout(Duration::from_secs(2), &mut published)
            .await
            .expect("a poll after completion resolves at once")
            .expect_err("nothing is published twice");
        // Not `Shutdown`: the publisher is alive, and the error says what happened.
        assert!(
            !matches!(again, google_cloud_pubsub::error::PublishError::Shutdown),
            "{again}"
        );
        let mut chain = Vec::new();
        let mut source: Option<&dyn std::error::Error> = Some(&again);
        while let Some(e) = source {
            chain.push(e.to_string());
            source = e.source();
        }
        assert!(
            chain.iter().any(|e| e.contains("polled after completion")),
            "{chain:?}"
        );
        let topic = short(&s.topic);
        let spans = s.wait(&format!("send {topic}"), 1).await;
        let creates = spans.named(&format!("send {topic}"));
        assert_eq!(creates.len(), 1, "{}", spans.tree());
        creates[0].assert_attr_str(attr::MESSAGING_MESSAGE_ID, &id);
        assert!(!creates[0].is_error());
    })
    .await;
}

#[tokio::test]
async fn user_attributes_are_kept_and_googclient_keys_can_be_turned_off() {
    within(async {
        let s = setup(|sub| sub).await;
        let publisher = s.publisher().await.with_google_context(GoogleContext::Off);
        let user = [("tenant", "acme"), ("x-origin", "rust"), ("empty", "")];
        publish(
            &publisher,
            Message::new().set_data("x").set_attributes(user),
        )
        .await;

        let mut stream = s.stream(&s.sub).await;
        let (message, handler) = next_message(&mut stream).await;
        handler.ack();
        for (k, v) in user {
            assert_eq!(
                message.attributes.get(k).map(String::as_str),
                Some(v),
                "{k}"
            );
        }
        assert!(message.attributes.contains_key("traceparent"));
        assert!(!message.attributes.contains_key(GOOGCLIENT_TRACEPARENT));

        let spans = s.wait(&format!("ack {}", short(&s.sub)), 1).await;
        spans
            .one(&format!("subscribe {}", short(&s.sub)))
            .assert_child_of(spans.one(&format!("send {}", short(&s.topic))));
    })
    .await;
}

/// What a Google client library sends: only `googclient_` keys (here with a trace state).
#[tokio::test]
async fn a_google_client_context_is_continued_and_preferred_over_the_plain_keys() {
    within(async {
        let s = setup(|sub| sub).await;
        let raw = s.raw_publisher().await;
        let google_parent = SpanContext::new(
            TraceId::from(0x4bf92f3577b34da6a3ce929d0e0e4736_u128),
            SpanId::from(0x00f067aa0ba902b7_u64),
            TraceFlags::SAMPLED,
            true,
            Default::default(),
        );
        raw.publish(Message::new().set_data("g").set_attributes([
            (
                GOOGCLIENT_TRACEPARENT,
                w3c::encode_traceparent(&google_parent),
            ),
            (GOOGCLIENT_TRACESTATE, "rojo=00f067aa0ba902b7".to_owned()),
            // A plain key pointing elsewhere (e.g. a stale copy): Google's key wins.
            (
                "traceparent",
                "00-11111111111111111111111111111111-2222222222222222-01".to_owned(),
            ),
        ]))
        .await
        .expect("publish");

        let mut stream = s.stream(&s.sub).await;
        let (_m, handler) = next_message(&mut stream).await;
        assert_eq!(
            handler.span_context().trace_state().get("rojo"),
            Some("00f067aa0ba902b7")
        );
        handler.ack();
        let spans = s.wait(&format!("ack {}", short(&s.sub)), 1).await;
        let process = spans.one(&format!("subscribe {}", short(&s.sub)));
        process.assert_parent_context(&google_parent);
        process.assert_links_to(&google_parent);
        assert!(process.attr(attr::CONTEXT_ERROR).is_none());
    })
    .await;
}

#[tokio::test]
async fn a_malformed_context_starts_a_new_root_that_says_why() {
    within(async {
        let s = setup(|sub| sub).await;
        let raw = s.raw_publisher().await;
        raw.publish(
            Message::new()
                .set_data("bad")
                .set_attributes([(GOOGCLIENT_TRACEPARENT, "00-not-a-trace-01")]),
        )
        .await
        .expect("publish");

        let mut stream = s.stream(&s.sub).await;
        let (message, handler) = next_message(&mut stream).await;
        assert_eq!(&message.data[..], b"bad");
        handler.ack();
        let spans = s.wait(&format!("ack {}", short(&s.sub)), 1).await;
        let process = spans.one(&format!("subscribe {}", short(&s.sub)));
        process.assert_root();
        assert!(process.links.links.is_empty());
        process.assert_attr(
            attr::CONTEXT_ERROR,
            "googclient_traceparent: length 17, expected 55",
        );
        process.assert_attr(attr::OUTCOME, "ack");
    })
    .await;
}

#[tokio::test]
async fn nack_redelivers_and_every_delivery_has_its_own_span_in_the_trace() {
    within(async {
        let s = setup(|sub| sub).await;
        let sub = short(&s.sub).to_owned();
        let publisher = s.publisher().await;
        let id = publish(&publisher, Message::new().set_data("again")).await;

        let mut stream = s.stream(&s.sub).await;
        let (first, handler) = next_message(&mut stream).await;
        assert_eq!(first.message_id, id);
        handler.nack();
        let (second, handler) = next_message(&mut stream).await;
        assert_eq!(second.message_id, id, "the nacked message comes again");
        handler.ack();

        let spans = s.wait(&format!("ack {sub}"), 1).await;
        let create = spans.one(&format!("send {}", short(&s.topic)));
        let processes = spans.named(&format!("subscribe {sub}"));
        assert_eq!(processes.len(), 2, "{}", spans.tree());
        for p in &processes {
            p.assert_child_of(create);
            p.assert_attr_str(attr::MESSAGING_MESSAGE_ID, &id);
        }
        let nacked = processes
            .iter()
            .find(|p| p.attr_str(attr::OUTCOME) == Some("requeue"))
            .expect("a requeued delivery");
        assert!(nacked.is_error());
        let nack = spans.one(&format!("nack {sub}"));
        nack.assert_child_of(nacked);
        nack.assert_kind(SpanKind::Client);
        nack.assert_attr(attr::OUTCOME, "requeue");
        let acked = processes
            .iter()
            .find(|p| p.attr_str(attr::OUTCOME) == Some("ack"))
            .expect("an acked delivery");
        assert!(!acked.is_error());
        spans.one(&format!("ack {sub}")).assert_child_of(acked);
    })
    .await;
}

#[tokio::test]
async fn a_dropped_handler_is_a_requeue_with_its_reason_not_unsettled() {
    within(async {
        let s = setup(|sub| sub).await;
        let sub = short(&s.sub).to_owned();
        let publisher = s.publisher().await;
        let id = publish(&publisher, Message::new().set_data("dropped")).await;

        let mut stream = s.stream(&s.sub).await;
        let (_m, handler) = next_message(&mut stream).await;
        drop(handler); // the client nacks it
        let (again, handler) = next_message(&mut stream).await;
        assert_eq!(again.message_id, id);
        handler.ack();

        let spans = s.wait(&format!("ack {sub}"), 1).await;
        let dropped = spans
            .named(&format!("subscribe {sub}"))
            .into_iter()
            .find(|p| p.attr_str(attr::OUTCOME) == Some("requeue"))
            .unwrap_or_else(|| panic!("no requeued delivery:\n{}", spans.tree()));
        dropped.assert_attr(
            attr::OUTCOME_REASON,
            "the handler was dropped without ack or nack; the client nacked the message",
        );
        assert!(dropped.is_error());
        spans.one(&format!("nack {sub}")).assert_child_of(dropped);
        assert!(
            spans
                .all()
                .iter()
                .all(|s| s.attr_str(attr::OUTCOME) != Some("unsettled"))
        );
    })
    .await;
}

#[tokio::test]
async fn dead_letter_policy_counts_attempts_and_the_dead_letter_stays_in_the_trace() {
    within(async {
        let t = TestTelemetry::new();
        let ps = pubsub().await;
        let topic = ps.create_topic(&unique("work")).await;
        let dlq_topic = ps.create_topic(&unique("work-dlq")).await;
        let dlq_sub = ps
            .create_subscription(&unique("work-dlq-sub"), &dlq_topic, |s| s)
            .await;
        let policy = ps.dead_letter_policy(&dlq_topic, 5);
        let sub = ps
            .create_subscription(&unique("worker"), &topic, |s| {
                s.set_dead_letter_policy(policy)
            })
            .await;
        let s = Setup {
            t,
            ps,
            topic: topic.clone(),
            sub: sub.clone(),
        };
        let publisher = s.publisher().await;
        let id = publish(&publisher, Message::new().set_data("poison")).await;

        let mut stream = s.stream(&sub).await;
        for attempt in 1..=5 {
            let (m, handler) = next_message(&mut stream).await;
            assert_eq!(m.message_id, id);
            assert_eq!(handler.delivery_attempt(), Some(attempt));
            assert_eq!(i64::from(handler.attempt()), i64::from(attempt));
            handler.nack();
        }
        // After five attempts Pub/Sub moves it to the dead-letter topic.
        let mut dead = s.stream(&dlq_sub).await;
        let (m, handler) = next_message(&mut dead).await;
        assert_eq!(&m.data[..], b"poison");
        handler.ack();

        let (sub, dlq_sub) = (short(&sub), short(&dlq_sub));
        let spans = s.wait(&format!("ack {dlq_sub}"), 1).await;
        let create = spans.one(&format!("send {}", short(&topic)));
        let mut attempts: Vec<i64> = spans
            .named(&format!("subscribe {sub}"))
            .into_iter()
            .map(|p| {
                p.assert_child_of(create);
                p.assert_attr(attr::OUTCOME, "requeue");
                let n = p.attr_i64(attr::DELIVERY_ATTEMPT).expect("attempt");
                assert_eq!(p.attr_i64(ps::DELIVERY_ATTEMPT), Some(n));
                // Its nack span carries the subscription and the delivery attempt too.
                let nack = spans
                    .children_of(p)
                    .into_iter()
                    .find(|c| c.name == format!("nack {sub}"))
                    .expect("a nack span");
                assert_eq!(nack.attr_i64(ps::DELIVERY_ATTEMPT), Some(n));
                nack.assert_attr(
                    attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
                    sub.to_owned(),
                );
                n
            })
            .collect();
        attempts.sort_unstable();
        assert_eq!(attempts, [1, 2, 3, 4, 5], "{}", spans.tree());

        // Same trace in the dead-letter subscription, still a child of the create span.
        let dead = spans.one(&format!("subscribe {dlq_sub}"));
        dead.assert_child_of(create);
        dead.assert_attr(attr::OUTCOME, "ack");
        dead.assert_attr_str(attr::MESSAGING_MESSAGE_ID, &m.message_id);
        // Pub/Sub says where it came from; the span records it.
        let source = m
            .attributes
            .get(ps::DEAD_LETTER_SOURCE_SUBSCRIPTION)
            .expect("Pub/Sub marks the dead-lettered message");
        assert_eq!(short(source), sub);
        dead.assert_attr_str(attr::DEAD_LETTER_SOURCE, sub);
        dead.assert_attr(attr::DEAD_LETTER_REASON, "max_delivery_attempts");
        assert!(dead.attr(attr::DELIVERY_ATTEMPT).is_none());
    })
    .await;
}

#[tokio::test]
async fn ordering_keys_are_recorded_and_delivered_in_order() {
    within(async {
        let s = setup(|sub| sub.set_enable_message_ordering(true)).await;
        let publisher = s.publisher().await;
        let mut ids = Vec::new();
        for i in 0..3 {
            ids.push(
                publish(
                    &publisher,
                    Message::new()
                        .set_data(format!("step {i}"))
                        .set_ordering_key("customer-7"),
                )
                .await,
            );
        }
        let mut stream = s.stream(&s.sub).await;
        for (i, id) in ids.iter().enumerate() {
            let (m, handler) = next_message(&mut stream).await;
            assert_eq!(&m.message_id, id, "message {i} out of order");
            assert_eq!(m.ordering_key, "customer-7");
            handler.ack();
        }
        let sub = short(&s.sub);
        let spans = s.wait(&format!("ack {sub}"), 3).await;
        let creates = spans.named(&format!("send {}", short(&s.topic)));
        assert_eq!(creates.len(), 3);
        for c in &creates {
            c.assert_attr(ps::ORDERING_KEY, "customer-7");
        }
        for p in spans.named(&format!("subscribe {sub}")) {
            p.assert_attr(ps::ORDERING_KEY, "customer-7");
            let create = creates
                .iter()
                .find(|c| c.span_context.span_id() == p.parent_span_id)
                .unwrap_or_else(|| panic!("no create parent:\n{}", spans.tree()));
            assert_eq!(
                create.attr_str(attr::MESSAGING_MESSAGE_ID),
                p.attr_str(attr::MESSAGING_MESSAGE_ID)
            );
        }
    })
    .await;
}

#[tokio::test]
async fn each_publish_is_a_producer_send_span_and_a_flush_adds_none() {
    within(async {
        let s = setup(|sub| sub).await;
        // Thresholds high enough that only the flush sends the batch.
        let publisher = s
            .publisher_to(&s.topic, |b| {
                b.set_message_count_threshold(1000_u32)
                    .set_delay_threshold(Duration::from_secs(60))
            })
            .await;
        let futures: Vec<_> = (0..3)
            .map(|i| publisher.publish(Message::new().set_data(format!("m{i}"))))
            .collect();
        let created: Vec<SpanContext> = futures
            .iter()
            .map(|f| f.span_context().expect("pending").clone())
            .collect();
        tokio::time::timeout(Duration::from_secs(20), publisher.flush())
            .await
            .expect("flush within 20 s");
        for f in futures {
            tokio::time::timeout(Duration::from_secs(20), f)
                .await
                .expect("publish answered")
                .expect("publish");
        }
        let topic = short(&s.topic);
        // One PRODUCER send span per message (the client's batches cannot be observed, so no
        // create span is left without its send): each is the message's creation context.
        let spans = s.wait(&format!("send {topic}"), 3).await;
        let sends = spans.named(&format!("send {topic}"));
        assert_eq!(sends.len(), 3, "{}", spans.tree());
        for send in &sends {
            send.assert_kind(SpanKind::Producer);
            send.assert_attr(attr::MESSAGING_OPERATION_TYPE, "send");
            send.assert_attr(attr::MESSAGING_OPERATION_NAME, "send");
            send.assert_no_attr(attr::MESSAGING_BATCH_MESSAGE_COUNT);
            assert!(send.links.links.is_empty());
        }
        let mut ids: Vec<String> = sends
            .iter()
            .map(|s| s.span_context.span_id().to_string())
            .collect();
        let mut want: Vec<String> = created.iter().map(|c| c.span_id().to_string()).collect();
        ids.sort();
        want.sort();
        assert_eq!(ids, want, "each publish's context is its send span's");
        assert!(spans.named(&format!("create {topic}")).is_empty());
        // The flush records nothing of its own.
        publisher.flush().await;
        assert_eq!(s.t.spans().named(&format!("send {topic}")).len(), 3);
    })
    .await;
}

#[tokio::test]
async fn exactly_once_confirmed_ack_is_recorded() {
    within(async {
        let s = setup(|sub| sub.set_enable_exactly_once_delivery(true)).await;
        let publisher = s.publisher().await;
        publish(&publisher, Message::new().set_data("once")).await;
        let mut stream = s.stream(&s.sub).await;
        let (_m, handler) = next_message(&mut stream).await;
        assert!(
            handler.is_exactly_once(),
            "the emulator should report exactly-once"
        );
        tokio::time::timeout(Duration::from_secs(20), handler.confirmed_ack())
            .await
            .expect("confirmation within 20 s")
            .expect("confirmed ack");
        let sub = short(&s.sub);
        let spans = s.wait(&format!("ack {sub}"), 1).await;
        let ack = spans.one(&format!("ack {sub}"));
        assert!(!ack.is_error());
        assert!(ack.attr(attr::ERROR_TYPE).is_none());
        spans
            .one(&format!("subscribe {sub}"))
            .assert_attr(attr::OUTCOME, "ack");
    })
    .await;
}

#[tokio::test]
async fn a_wrong_endpoint_fails_fast_with_a_clear_error() {
    within(async {
        let started = Instant::now();
        let err = try_pubsub(Emulator::new("127.0.0.1:1"))
            .await
            .expect_err("nothing listens on port 1");
        assert!(started.elapsed() < Duration::from_secs(15), "{err}");
        assert!(err.contains("not reachable"), "{err}");
        assert!(err.contains("scripts/start-brokers.sh pubsub"), "{err}");
        assert!(err.contains("http://127.0.0.1:1"), "{err}");
    })
    .await;
}

#[tokio::test]
async fn a_process_span_started_in_an_ambient_span_is_the_creations_child_and_links_the_ambient_span()
 {
    within(async {
        let s = setup(|sub| sub).await;
        let publisher = s.publisher().await;
        publish(&publisher, Message::new().set_data("x")).await;
        let mut stream = s.stream(&s.sub).await;
        let app = s.t.provider().tracer("app");
        let poll = Context::current_with_span(app.start("poll loop"));
        let (_m, handler) = next_message(&mut stream).with_context(poll.clone()).await;
        handler.ack();
        poll.span().end();
        let sub = short(&s.sub);
        let spans = s.wait(&format!("ack {sub}"), 1).await;
        let process = spans.one(&format!("subscribe {sub}"));
        let create = spans.one(&format!("send {}", short(&s.topic)));
        process.assert_child_of(create);
        process.assert_links_to(&create.span_context);
        process.assert_links_to(&spans.one("poll loop").span_context);
    })
    .await;
}

/// Google's Python client (OpenTelemetry tracing on) publishes; we subscribe.
#[tokio::test]
async fn python_google_client_publish_is_continued_by_our_subscriber() {
    within(async {
        let s = setup(|sub| sub).await;
        let peer =
            mqtrace_integration_tests::pubsub::python_peer(&s.ps.emulator, "publish", &s.topic)
                .await;
        let py_create = python_span(&peer, "PRODUCER", " create");
        let py_context = python_context(py_create);

        let mut stream = s.stream(&s.sub).await;
        let (message, handler) = next_message(&mut stream).await;
        assert_eq!(&message.data[..], b"from python");
        assert_eq!(
            message.attributes.get("x-origin").map(String::as_str),
            Some("python")
        );
        assert!(
            message.attributes.contains_key(GOOGCLIENT_TRACEPARENT),
            "{:?}",
            message.attributes
        );
        assert_eq!(
            Some(message.message_id.as_str()),
            peer["message_id"].as_str()
        );
        handler.ack();

        let sub = short(&s.sub);
        let spans = s.wait(&format!("ack {sub}"), 1).await;
        let process = spans.one(&format!("subscribe {sub}"));
        // Python's create span is the parent (same trace, exact span id) and the link.
        process.assert_parent_context(&py_context);
        process.assert_links_to(&py_context);
        assert!(process.parent_span_is_remote);
        assert!(
            process.attr(attr::CONTEXT_ERROR).is_none(),
            "{}",
            spans.tree()
        );
        assert_eq!(
            py_create["attributes"]["messaging.message.id"].as_str(),
            process.attr_str(attr::MESSAGING_MESSAGE_ID)
        );
    })
    .await;
}

/// We publish; Google's Python client (OpenTelemetry tracing on) subscribes.
#[tokio::test]
async fn our_publish_is_continued_by_the_python_google_client() {
    within(async {
        let s = setup(|sub| sub).await;
        let publisher = s.publisher().await;
        let id = publish(
            &publisher,
            Message::new()
                .set_data("from rust")
                .set_attributes([("x-origin", "rust")]),
        )
        .await;
        let topic = short(&s.topic);
        let spans = s.wait(&format!("send {topic}"), 1).await;
        let create = spans.one(&format!("send {topic}"));

        let peer =
            mqtrace_integration_tests::pubsub::python_peer(&s.ps.emulator, "subscribe", &s.sub)
                .await;
        assert_eq!(peer["body"], "from rust");
        assert_eq!(peer["message_id"].as_str(), Some(id.as_str()));
        assert_eq!(peer["attributes"]["x-origin"], "rust");
        let py_subscribe = python_span(&peer, "CONSUMER", " subscribe");
        assert_eq!(
            py_subscribe["trace_id"].as_str(),
            Some(create.span_context.trace_id().to_string().as_str()),
            "python's subscribe span is not in our trace: {peer}"
        );
        assert_eq!(
            py_subscribe["parent_id"].as_str(),
            Some(create.span_context.span_id().to_string().as_str()),
            "python's subscribe span is not a child of our create span: {peer}"
        );
        assert_eq!(
            py_subscribe["attributes"]["messaging.message.id"].as_str(),
            Some(id.as_str())
        );
        // Its processing span follows in the same trace.
        let py_process = python_span(&peer, "INTERNAL", " process");
        assert_eq!(py_process["trace_id"], py_subscribe["trace_id"]);
        assert_eq!(py_process["parent_id"], py_subscribe["span_id"]);
    })
    .await;
}

#[tokio::test]
async fn unsampled_messages_still_carry_their_context_and_record_nothing() {
    within(async {
        let mut s = setup(|sub| sub).await;
        s.t = TestTelemetry::with_sampler(opentelemetry_sdk::trace::Sampler::AlwaysOff);
        let publisher = s.publisher().await;
        publish(&publisher, Message::new().set_data("quiet")).await;
        let mut stream = s.stream(&s.sub).await;
        let (message, handler) = next_message(&mut stream).await;
        let tp = message.attributes.get("traceparent").expect("traceparent");
        assert!(tp.ends_with("-00"), "not sampled: {tp}");
        assert_eq!(message.attributes.get(GOOGCLIENT_TRACEPARENT), Some(tp));
        // The consumer continues the (unsampled) trace.
        assert_eq!(
            &w3c::parse_traceparent(tp).expect("valid").trace_id(),
            &handler.span_context().trace_id()
        );
        assert!(!handler.span_context().is_sampled());
        handler.ack();
        tokio::time::sleep(Duration::from_millis(100)).await;
        assert!(s.t.spans().all().is_empty(), "{}", s.t.spans().tree());
    })
    .await;
}

#[tokio::test]
async fn a_confirmed_ack_that_fails_is_recorded_on_the_ack_and_process_spans() {
    within(async {
        let s = setup(|sub| sub.set_enable_exactly_once_delivery(true)).await;
        let publisher = s.publisher().await;
        publish(&publisher, Message::new().set_data("late")).await;
        let client =
            s.ps.emulator
                .subscriber()
                .build()
                .await
                .expect("subscriber");
        let mut stream = TracedSubscriber::new(client, s.inst())
            .subscribe(&s.sub)
            .set_shutdown_behavior(
                google_cloud_pubsub::subscriber::ShutdownBehavior::NackImmediately,
            )
            .build();
        let (_m, handler) = next_message(&mut stream).await;
        // The stream shuts down before the handler acks: the ack cannot be confirmed.
        tokio::time::timeout(Duration::from_secs(20), stream.shutdown_token().shutdown())
            .await
            .expect("shutdown within 20 s");
        let err = tokio::time::timeout(Duration::from_secs(20), handler.confirmed_ack())
            .await
            .expect("an answer within 20 s")
            .expect_err("no confirmation after shutdown");
        let expected = mqtrace_pubsub::ack_error_type(&err);
        let sub = short(&s.sub);
        let spans = s.wait(&format!("ack {sub}"), 1).await;
        let ack = spans.one(&format!("ack {sub}"));
        assert!(ack.is_error(), "{}", spans.tree());
        ack.assert_attr_str(attr::ERROR_TYPE, &expected);
        let process = spans.one(&format!("subscribe {sub}"));
        // The ack failed: the message was not settled, and the process span says so.
        process.assert_attr(attr::OUTCOME, "unsettled");
        process.assert_attr_str(attr::ERROR_TYPE, &expected);
        assert!(process.is_error(), "{}", spans.tree());
    })
    .await;
}

/// Retries through a retry topic and dead-lettering to a dead-letter topic
/// (`mqtrace_pubsub::RetryTopics`), each test with its own topics and subscriptions.
mod retries {
    use super::*;
    use mqtrace::retry::{Decision, HandlerError, RetryPolicy};
    use mqtrace_integration_tests::WAIT;
    use mqtrace_integration_tests::pubsub::topic as topic_name;
    use mqtrace_pubsub::{RetryError, RetryStream, RetryTopics, TracedHandler};

    /// A topic and its subscription, with the subscription's retry topic and subscription and a
    /// dead-letter topic (its subscription is read in tests/conformance.rs).
    struct Retrying {
        s: Setup,
        retry_topic: String,
        retry_sub: String,
        dlq_topic: String,
        topics: RetryTopics,
    }

    async fn retrying(policy: RetryPolicy) -> Retrying {
        let s = setup(|sub| sub).await;
        let retry_topic = s.ps.create_topic(&unique("billing-retry")).await;
        let retry_sub =
            s.ps.create_subscription(&unique("billing-retry"), &retry_topic, |x| x)
                .await;
        let dlq_topic = s.ps.create_topic(&unique("billing-dlq")).await;
        let topics = RetryTopics::declare(
            (
                s.publisher_to(&retry_topic, |b| b).await,
                s.publisher_to(&dlq_topic, |b| b).await,
            ),
            &retry_sub,
            policy,
        )
        .await
        .expect("declare");
        Retrying {
            s,
            retry_topic,
            retry_sub,
            dlq_topic,
            topics,
        }
    }

    impl Retrying {
        async fn stream(&self) -> RetryStream {
            self.topics.stream(
                self.s.stream(&self.s.sub).await,
                self.s.stream(&self.retry_sub).await,
            )
        }

        /// The short names of the subscription and the retry subscription.
        fn subs(&self) -> (String, String) {
            (
                short(&self.s.sub).to_owned(),
                short(&self.retry_sub).to_owned(),
            )
        }

        /// The process spans of every attempt (both subscriptions), by attempt number.
        fn attempts<'a>(&self, spans: &'a Spans) -> Vec<&'a opentelemetry_sdk::trace::SpanData> {
            let (sub, retry_sub) = self.subs();
            let mut attempts = spans.named(&format!("subscribe {sub}"));
            attempts.extend(spans.named(&format!("subscribe {retry_sub}")));
            attempts.sort_by_key(|s| s.attr_i64(attr::DELIVERY_ATTEMPT));
            attempts
        }
    }

    async fn next_of(stream: &mut RetryStream) -> (Message, TracedHandler) {
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => panic!("subscriber error: {e}"),
            Ok(None) => panic!("the stream ended"),
            Err(_) => panic!("no message within {WAIT:?} ({stream:?})"),
        }
    }

    #[tokio::test]
    async fn transient_failure_twice_then_success_is_three_linked_attempts_in_one_trace() {
        within(async {
            let r = retrying(fast(5)).await;
            let (sub, retry_sub) = r.subs();
            let publisher = r.s.publisher().await;
            publish(
                &publisher,
                Message::new()
                    .set_data("order-1")
                    .set_ordering_key("customer-7")
                    .set_attributes([("tenant", "acme")]),
            )
            .await;
            let mut stream = r.stream().await;
            let mut decisions = Vec::new();
            let mut copies = Vec::new();
            let mut handled_at: Option<(Instant, Duration)> = None;
            for _ in 0..3 {
                let (m, handler) = next_of(&mut stream).await;
                if let Some((at, delay)) = handled_at {
                    // A copy is not handed out before it is due (50 ms, then 100 ms, counted
                    // from the decision; the due time is kept in whole milliseconds).
                    let waited = Instant::now().duration_since(at);
                    assert!(
                        waited + Duration::from_millis(2) >= delay,
                        "{waited:?} < {delay:?}"
                    );
                }
                copies.push(m.clone());
                let started = Instant::now();
                let decision = r
                    .topics
                    .handle((m, handler), async |m| {
                        assert_eq!(&m.data[..], b"order-1", "the payload is unchanged");
                        if m.attempt() < 3 {
                            Err(HandlerError::transient("inventory service unavailable"))
                        } else {
                            Ok(())
                        }
                    })
                    .await
                    .expect("carried out");
                if let Decision::Retry { delay, .. } = decision {
                    handled_at = Some((started, delay));
                }
                decisions.push(decision);
            }
            assert!(
                matches!(
                    decisions[..],
                    [
                        Decision::Retry {
                            next_attempt: 2,
                            ..
                        },
                        Decision::Retry {
                            next_attempt: 3,
                            ..
                        },
                        Decision::Ack
                    ]
                ),
                "{decisions:?}"
            );
            assert_eq!(stream.held(), 0);

            // The copies keep the data, the ordering key and the user's attributes, and carry
            // their attempt and when they were due.
            for (i, c) in copies.iter().enumerate().skip(1) {
                assert_eq!(c.ordering_key, "customer-7");
                assert_eq!(c.attributes.get("tenant").map(String::as_str), Some("acme"));
                assert_eq!(
                    c.attributes.get("mqtrace-attempt"),
                    Some(&(i + 1).to_string())
                );
                assert!(c.attributes.contains_key("mqtrace-not-before"));
                assert!(c.attributes.contains_key("mqtrace-previous-attempt"));
                assert!(c.attributes.contains_key("mqtrace-origin"));
            }

            let spans =
                r.s.t
                    .wait_for(
                        |s| {
                            s.named(&format!("ack {sub}")).len() == 1
                                && s.named(&format!("ack {retry_sub}")).len() == 2
                        },
                        Duration::from_secs(20),
                    )
                    .await
                    .unwrap_or_else(|e| panic!("settle spans: {e}"));
            let create = spans.one(&format!("send {}", short(&r.s.topic)));
            let attempts = r.attempts(&spans);
            assert_eq!(attempts.len(), 3, "{}", spans.tree());
            for (i, a) in attempts.iter().enumerate() {
                assert_eq!(a.attr_i64(attr::DELIVERY_ATTEMPT), Some(i as i64 + 1));
                assert_eq!(
                    a.span_context.trace_id(),
                    create.span_context.trace_id(),
                    "one trace"
                );
                a.assert_attr_i64(attr::RETRY_MAX_ATTEMPTS, 5);
                a.assert_attr(ps::ORDERING_KEY, "customer-7");
                // The stream held each copy until it was due: no wait inside the process span.
                assert!(
                    a.events.iter().all(|e| e.name != "mqtrace.retry.wait"),
                    "{:?}",
                    a.events
                );
            }
            attempts[0].assert_child_of(create);
            attempts[0].assert_attr_str(attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME, &sub);
            attempts[0].assert_attr(attr::OUTCOME, "retry");
            attempts[1].assert_attr(attr::OUTCOME, "retry");
            attempts[2].assert_attr(attr::OUTCOME, "ack");
            assert!(!attempts[2].is_error());
            for a in &attempts[..2] {
                a.assert_attr(attr::ERROR_TYPE, "transient");
                assert!(a.attr(attr::RETRY_DELAY).is_some());
                assert!(a.is_error());
                assert!(
                    a.attr_str(attr::OUTCOME_REASON)
                        .is_some_and(|r| r.starts_with("retry in"))
                );
            }
            // Attempt n+1 is a child of the copy's create span, itself a child of attempt n,
            // and links to attempt n and to the original create span.
            let republished = spans.named(&format!("send {}", short(&r.retry_topic)));
            assert_eq!(republished.len(), 2);
            for n in 1..3 {
                let copy = republished
                    .iter()
                    .find(|c| c.parent_span_id == attempts[n - 1].span_context.span_id())
                    .unwrap_or_else(|| panic!("no copy made by attempt {n}:\n{}", spans.tree()));
                attempts[n].assert_child_of(copy);
                attempts[n]
                    .assert_attr_str(attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME, &retry_sub);
                let prev = attempts[n]
                    .link_of_type("previous_attempt")
                    .expect("previous-attempt link");
                assert_eq!(
                    prev.span_context.span_id(),
                    attempts[n - 1].span_context.span_id()
                );
                let origin = attempts[n].link_of_type("origin").expect("origin link");
                assert_eq!(origin.span_context.span_id(), create.span_context.span_id());
                // The copy carries its own create span's context, not a stale one.
                assert_eq!(
                    copies[n].attributes.get("traceparent"),
                    Some(&w3c::encode_traceparent(&copy.span_context))
                );
                assert_eq!(
                    copies[n].attributes.get(GOOGCLIENT_TRACEPARENT),
                    Some(&w3c::encode_traceparent(&copy.span_context))
                );
            }
            // The settle spans: an ack with outcome retry, then the final ack.
            spans
                .one(&format!("ack {sub}"))
                .assert_attr(attr::OUTCOME, "retry");
            stream.shutdown().await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_panicking_or_hanging_handler_is_a_failure_and_the_message_is_not_lost() {
        within(async {
            let r = retrying(fast(5)).await;
            let topics = RetryTopics::declare(
                (
                    r.s.publisher_to(&r.retry_topic, |b| b).await,
                    r.s.publisher_to(&r.dlq_topic, |b| b).await,
                ),
                &r.retry_sub,
                fast(5),
            )
            .await
            .expect("declare")
            .with_time_limit(Duration::from_millis(300));
            let publisher = r.s.publisher().await;
            publish(&publisher, Message::new().set_data("fragile")).await;
            let mut stream = r.stream().await;
            for _ in 0..3 {
                let (m, handler) = next_of(&mut stream).await;
                topics
                    .handle((m, handler), async |m| match m.attempt() {
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
            let (_, retry_sub) = r.subs();
            let spans = r.s.wait(&format!("ack {retry_sub}"), 2).await;
            let attempts = r.attempts(&spans);
            assert_eq!(attempts.len(), 3, "{}", spans.tree());
            attempts[0].assert_attr(attr::ERROR_TYPE, "panic");
            attempts[0].assert_attr(attr::OUTCOME, "retry");
            attempts[1].assert_attr(attr::ERROR_TYPE, "timeout");
            attempts[1].assert_attr(attr::OUTCOME, "retry");
            attempts[2].assert_attr(attr::OUTCOME, "ack");
            stream.shutdown().await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_copy_that_cannot_be_published_is_nacked_and_the_message_comes_again() {
        within(async {
            let r = retrying(fast(3)).await;
            // A dead-letter topic that does not exist.
            let missing = topic_name(&unique("missing-dlq"));
            let topics = RetryTopics::declare(
                (
                    r.s.publisher_to(&r.retry_topic, |b| b).await,
                    r.s.publisher_to(&missing, |b| b).await,
                ),
                &r.retry_sub,
                fast(3),
            )
            .await
            .expect("declare");
            let publisher = r.s.publisher().await;
            let id = publish(&publisher, Message::new().set_data("precious")).await;
            let mut stream = r.stream().await;
            let (m, handler) = next_of(&mut stream).await;
            let err = topics
                .handle((m, handler), async |_| Err(HandlerError::permanent("bad")))
                .await
                .expect_err("the dead-letter topic is missing");
            assert!(
                matches!(&err, RetryError::Copy { destination, .. } if destination == short(&missing)),
                "{err}"
            );
            // Not lost: Pub/Sub delivers it again.
            let (again, handler) = next_of(&mut stream).await;
            assert_eq!(again.message_id, id);
            handler.ack();

            let sub = short(&r.s.sub);
            let spans = r.s.wait(&format!("ack {sub}"), 1).await;
            let requeued = spans
                .named(&format!("subscribe {sub}"))
                .into_iter()
                .find(|p| p.attr_str(attr::OUTCOME) == Some("requeue"))
                .unwrap_or_else(|| panic!("no requeued attempt:\n{}", spans.tree()));
            assert!(
                requeued
                    .attr_str(attr::OUTCOME_REASON)
                    .is_some_and(|r| r.starts_with("could not publish the copy")),
                "{}",
                spans.tree()
            );
            spans.one(&format!("nack {sub}")).assert_child_of(requeued);
            let failed = spans.one(&format!("send {}", short(&missing)));
            assert!(failed.is_error());
            failed.assert_child_of(requeued);
            stream.shutdown().await;
        })
        .await;
    }

    #[tokio::test]
    async fn a_copy_read_without_the_retry_stream_is_waited_for_inside_its_process_span() {
        within(async {
            let r = retrying(fast(3).with_initial_delay(Duration::from_millis(300))).await;
            let publisher = r.s.publisher().await;
            publish(&publisher, Message::new().set_data("later")).await;
            let mut main = r.s.stream(&r.s.sub).await;
            let (m, handler) = next_message(&mut main).await;
            let started = Instant::now();
            let first = r
                .topics
                .handle((m, handler), async |_| Err(HandlerError::transient("busy")))
                .await
                .expect("carried out");
            assert!(matches!(first, Decision::Retry { .. }), "{first:?}");
            // The retry subscription read directly: the copy comes at once, and `handle` waits.
            let mut retry = r.s.stream(&r.retry_sub).await;
            let (copy, handler) = next_message(&mut retry).await;
            assert_eq!(handler.attempt(), 2);
            r.topics
                .handle((copy, handler), async |_| Ok(()))
                .await
                .expect("carried out");
            assert!(started.elapsed() >= Duration::from_millis(295));
            let (_, retry_sub) = r.subs();
            let spans = r.s.wait(&format!("ack {retry_sub}"), 1).await;
            let second = spans.one(&format!("subscribe {retry_sub}"));
            second.assert_attr(attr::OUTCOME, "ack");
            assert!(
                second.events.iter().any(|e| e.name == "mqtrace.retry.wait"),
                "{:?}",
                second.events
            );
        })
        .await;
    }

    /// Anyone can publish to a topic: a forged `mqtrace-not-before` an hour ahead on the
    /// subscription is not waited for by `handle`, and on the retry subscription the stream
    /// holds it for at most the policy's longest delay (on the original main: `handle` waited
    /// up to twice the 5-minute maximum delay, holding up the loop).
    #[tokio::test]
    async fn a_forged_not_before_does_not_stall_the_retry_stream() {
        within(async {
            let r = retrying(fast(3)).await;
            assert_eq!(
                r.topics.policy().longest_delay(),
                Duration::from_millis(100)
            );
            let hour = mqtrace::retry::epoch_millis(
                std::time::SystemTime::now() + Duration::from_secs(3600),
            )
            .to_string();
            let forged = |data: &'static str| {
                Message::new()
                    .set_data(data)
                    .set_attributes([(mqtrace::retry::NOT_BEFORE_HEADER, hour.as_str())])
            };
            publish(&r.s.publisher().await, forged("normal")).await;
            publish(
                &r.s.publisher_to(&r.retry_topic, |b| b).await,
                forged("copy"),
            )
            .await;
            let mut stream = r.stream().await;
            let started = Instant::now();
            let mut seen = Vec::new();
            for _ in 0..2 {
                let delivery = next_of(&mut stream).await;
                seen.push(String::from_utf8_lossy(&delivery.0.data).into_owned());
                let decision = tokio::time::timeout(
                    Duration::from_secs(5),
                    r.topics.handle(delivery, async |_| Ok(())),
                )
                .await
                .expect("handle does not wait for the forged time")
                .expect("acknowledged");
                assert_eq!(decision, Decision::Ack);
            }
            seen.sort();
            assert_eq!(seen, ["copy", "normal"]);
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "{:?}",
                started.elapsed()
            );
            let (sub, retry_sub) = r.subs();
            let spans = r.s.wait(&format!("ack {retry_sub}"), 1).await;
            for name in [format!("subscribe {sub}"), format!("subscribe {retry_sub}")] {
                let process = spans.one(&name);
                process.assert_attr(attr::OUTCOME, "ack");
                assert!(
                    process
                        .events
                        .iter()
                        .all(|e| e.name != "mqtrace.retry.wait"),
                    "{name}: {:?}",
                    process.events
                );
            }
            stream.shutdown().await;
        })
        .await;
    }
}

/// Anyone can publish to a topic: on a subscription the trust policy does not trust and that
/// no `RetryTopics` declared, forged history attributes (an attempt, a previous attempt, an
/// origin, a not-before) are refused and said so, not believed: no attempt counted, no origin
/// or previous-attempt link. The same message on a trusted subscription is believed.
#[tokio::test]
async fn forged_history_attributes_on_an_untrusted_normal_subscription_are_refused() {
    within(async {
        let s = setup(|sub| sub).await;
        let trusted_sub =
            s.ps.create_subscription(&unique("billing-trusted"), &s.topic, |sub| sub)
                .await;
        let untrusted = short(&s.sub).to_owned();
        let trusted = short(&trusted_sub).to_owned();
        let raw = s.raw_publisher().await;
        let forged = [
            (mqtrace::ATTEMPT_HEADER, "7"),
            (
                mqtrace::retry::PREVIOUS_ATTEMPT_HEADER,
                "00-11111111111111111111111111111111-2222222222222222-01",
            ),
            (
                mqtrace::retry::ORIGIN_HEADER,
                "00-33333333333333333333333333333333-4444444444444444-01",
            ),
            (mqtrace::retry::NOT_BEFORE_HEADER, "99999999999999"),
        ];
        raw.publish(Message::new().set_data("x").set_attributes(forged))
            .await
            .expect("publish");
        let inst = s.ps.emulator.instrumentation(
            s.t.config()
                .with_trust(mqtrace::Trust::untrusted_sources([untrusted.clone()])),
        );
        for (sub, believed) in [(&s.sub, false), (&trusted_sub, true)] {
            let client =
                s.ps.emulator
                    .subscriber()
                    .build()
                    .await
                    .expect("subscriber");
            let mut stream = TracedSubscriber::new(client, inst.clone())
                .subscribe(sub)
                .build();
            let (message, handler) = next_message(&mut stream).await;
            assert_eq!(handler.attempt(), if believed { 7 } else { 1 }, "{sub}");
            assert_eq!(
                message.attributes.len(),
                forged.len(),
                "attributes unchanged"
            );
            for (k, v) in forged {
                assert_eq!(message.attributes.get(k).map(String::as_str), Some(v));
            }
            handler.ack();
        }
        let spans = s.wait(&format!("ack {trusted}"), 1).await;
        let refused = spans.one(&format!("subscribe {untrusted}"));
        assert_eq!(refused.attr_i64(attr::DELIVERY_ATTEMPT), None);
        assert!(refused.link_of_type("origin").is_none());
        assert!(refused.link_of_type("previous_attempt").is_none());
        assert_eq!(
            refused.attr_str(attr::CONTEXT_REFUSED),
            Some(
                "mqtrace-attempt: untrusted source; mqtrace-previous-attempt: untrusted source; \
                 mqtrace-origin: untrusted source; mqtrace-not-before: untrusted source"
            )
        );
        let believed = spans.one(&format!("subscribe {trusted}"));
        believed.assert_attr_i64(attr::DELIVERY_ATTEMPT, 7);
        assert!(believed.link_of_type("origin").is_some());
        assert_eq!(believed.attr(attr::CONTEXT_REFUSED), None);
    })
    .await;
}

/// What a relay test leaves: the spans, the short names of the two topics and two
/// subscriptions, and the attributes the last subscriber saw.
struct Relayed {
    spans: Spans,
    t_in: String,
    t_out: String,
    relay_sub: String,
    last_sub: String,
    attributes: std::collections::HashMap<String, String>,
}

/// A relay through Pub/Sub: a message published with baggage and a user attribute, received,
/// and republished with its attributes by a publisher whose config has `rule`; the last
/// subscriber's view of it.
async fn relay(rule: mqtrace::ExistingContext) -> Relayed {
    let s = setup(|sub| sub).await;
    let out_topic = s.ps.create_topic(&unique("relay-out")).await;
    let out_sub =
        s.ps.create_subscription(&unique("relay-last"), &out_topic, |sub| sub)
            .await;
    let publisher = s.publisher().await;
    let forwarder = s
        .publisher_with(&out_topic, |b| b, s.t.config().with_existing_context(rule))
        .await;
    let cx = opentelemetry::baggage::BaggageExt::with_baggage(
        &Context::current(),
        [opentelemetry::KeyValue::new("tenant", "acme")],
    );
    publish(
        &publisher,
        Message::new()
            .set_data("x")
            .set_attributes([("order-id", "o-7")]),
    )
    .with_context(cx)
    .await;
    let mut stream = s.stream(&s.sub).await;
    let (m, handler) = next_message(&mut stream).await;
    let forwarded = Message::new()
        .set_data(m.data.clone())
        .set_attributes(m.attributes.clone());
    handler.in_span(publish(&forwarder, forwarded)).await;
    handler.ack();
    let mut last_stream = s.stream(&out_sub).await;
    let (last_m, last) = next_message(&mut last_stream).await;
    last.ack();
    let spans = s.wait(&format!("ack {}", short(&out_sub)), 1).await;
    Relayed {
        spans,
        t_in: short(&s.topic).to_owned(),
        t_out: short(&out_topic).to_owned(),
        relay_sub: short(&s.sub).to_owned(),
        last_sub: short(&out_sub).to_owned(),
        attributes: last_m.attributes.into_iter().collect(),
    }
}

impl Relayed {
    /// The first publish's baggage and user attribute reached the last subscriber unchanged.
    fn assert_baggage_and_user_attribute_go_on(&self) {
        let get = |k: &str| self.attributes.get(k).map(String::as_str);
        assert_eq!(get("baggage"), Some("tenant=acme"));
        assert_eq!(get("order-id"), Some("o-7"));
    }
}

/// The default `ExistingContext::Keep` through Pub/Sub: a relay that republishes a received
/// message's attributes sends its context unchanged (a CLIENT send span, child of the relay's
/// subscribe span, linking it), so the last subscriber continues the first publish: one trace.
#[tokio::test]
async fn a_relay_that_forwards_attributes_keeps_the_context_one_trace_through_pubsub() {
    within(async {
        let r = relay(mqtrace::ExistingContext::Keep).await;
        let spans = &r.spans;
        let first = spans.one(&format!("send {}", r.t_in));
        let relay = spans.one(&format!("subscribe {}", r.relay_sub));
        let forward = spans.one(&format!("send {}", r.t_out));
        assert_relay_send(mqtrace::ExistingContext::Keep, forward, relay, first);
        let last_span = spans.one(&format!("subscribe {}", r.last_sub));
        last_span.assert_parent_context(&first.span_context);
        let kept = traceparent_of(&first.span_context);
        assert_eq!(
            r.attributes.get("traceparent"),
            Some(&kept),
            "the first publish's traceparent, unchanged"
        );
        assert_eq!(r.attributes.get(GOOGCLIENT_TRACEPARENT), Some(&kept));
        r.assert_baggage_and_user_attribute_go_on();
    })
    .await;
}

/// `ExistingContext::Replace` through Pub/Sub: the relay's own context replaces every
/// forwarded field, both `traceparent` and `googclient_traceparent` (never two contexts on one
/// message); its send span is a PRODUCER span linking the replaced context as `replaced`, and
/// the last subscriber continues the relay's send span. The user's attribute and the baggage
/// (the relay's context carries it) go on.
#[tokio::test]
async fn the_replace_rule_writes_the_relays_context_through_pubsub() {
    within(async {
        let r = relay(mqtrace::ExistingContext::Replace).await;
        let spans = &r.spans;
        let first = spans.one(&format!("send {}", r.t_in));
        let relay = spans.one(&format!("subscribe {}", r.relay_sub));
        let forward = spans.one(&format!("send {}", r.t_out));
        assert_relay_send(mqtrace::ExistingContext::Replace, forward, relay, first);
        let last_span = spans.one(&format!("subscribe {}", r.last_sub));
        last_span.assert_child_of(forward);
        let relays = traceparent_of(&forward.span_context);
        assert_eq!(r.attributes.get("traceparent"), Some(&relays));
        assert_eq!(r.attributes.get(GOOGCLIENT_TRACEPARENT), Some(&relays));
        r.assert_baggage_and_user_attribute_go_on();
    })
    .await;
}
