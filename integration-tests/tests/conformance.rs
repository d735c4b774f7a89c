//! The contract every broker integration meets, written once and run once per broker
//! (RabbitMQ, Kafka on Tansu, the Pub/Sub emulator) through the small [`Broker`] adapter:
//!
//! - continuity: the consumer's span is in the producer's trace, the child of its send span,
//!   with the broker's span names and kinds, and the message arrives unchanged;
//! - a malformed context starts a new root that records `mqtrace.context.error`, and the
//!   message (its body and headers) arrives unchanged;
//! - retries: a transient failure twice then success is three linked attempts in one trace;
//! - dead-letters: a poison message after its last attempt and a permanent failure at once,
//!   each with its reason, the dead-letter consumer in the same trace;
//! - over N messages with random failures, messages in = acked + dead-lettered;
//! - no span is left open: every delivery handled has exactly one ended process span with
//!   an outcome.
//!
//! Broker-specific behaviour (x-death, quorum delivery limits, commit modes, not-before
//! forgeries, ...) stays in `tests/{rabbitmq,kafka,pubsub}.rs`.

use mqtrace::Config;
use mqtrace::attributes as attr;
use mqtrace::retry::{Decision, HandlerError, RetryPolicy};
use mqtrace::testing::SeenBySampler;
use mqtrace::testing::{SpanDataExt, Spans, TestTelemetry};
use mqtrace_integration_tests::support::{fast, wait, within};
use opentelemetry::Value;
use opentelemetry::trace::{SpanId, SpanKind};
use opentelemetry_sdk::trace::SpanData;
use std::collections::HashSet;
use std::time::Duration;

/// What a handler decides for one attempt, from the message's body and attempt number.
type Script<'a> = &'a (dyn Fn(&[u8], u32) -> Result<(), HandlerError> + Sync);

/// A message as a consumer saw it: its body and its headers (as text, mqtrace's included).
#[derive(Debug)]
struct Msg {
    body: Vec<u8>,
    headers: Vec<(String, String)>,
}

/// A message read from the dead-letter destination: body, reason header, attempt.
type DeadLetter = (String, String, u32);

/// The broker's span names for one test's destination.
struct Names {
    /// The producer's span of a publish to the destination.
    send: String,
    /// The process spans an attempt can have (the destination's and its retry
    /// destinations').
    attempts: Vec<String>,
    /// The settle spans of the destination's (and retry destinations') deliveries.
    settles: Vec<String>,
    /// The dead-letter consumer's process span.
    dead_letter_process: String,
    /// The dead-letter consumer's settle span.
    dead_letter_settle: String,
}

/// One broker, one fresh destination with its retry machinery, a traced producer and a
/// traced consumer: what the contract needs and no more.
trait Broker: Sized {
    /// A new destination (unique names) whose retries follow `policy`.
    async fn open(t: &TestTelemetry, policy: RetryPolicy) -> Self {
        Self::open_with(t, policy, t.config()).await
    }
    /// [`Broker::open`] with the traced clients configured by `config`.
    async fn open_with(t: &TestTelemetry, policy: RetryPolicy, config: Config) -> Self;
    /// What the process span and every settle span of a message start with, beyond the
    /// system, operation and destination: what this broker's samplers can decide on.
    fn start_attributes(&self) -> Vec<(&'static str, Value)>;
    /// What a settle span of a message carries about it (delivery tag, partition, offset,
    /// consumer group, subscription...).
    fn settle_attributes(&self) -> Vec<(&'static str, Value)>;
    /// The next message: its handler records an error of type `error_type`, then acks.
    async fn next_error_then_ack(&mut self, error_type: &'static str);
    fn names(&self) -> Names;
    /// Publishes through the traced producer, with the user's `headers`.
    async fn publish(&self, body: &[u8], headers: &[(&str, &str)]);
    /// Publishes with the raw client (no instrumentation): what another producer sends.
    async fn publish_raw(&self, body: &[u8], headers: &[(&str, &str)]);
    /// The next message, acknowledged without the retry machinery.
    async fn next_and_ack(&mut self) -> Msg;
    /// The next message (of the destination or a retry destination) through the broker's
    /// retry type, `script` deciding; returns its body and the decision carried out.
    async fn handle(&mut self, script: Script<'_>) -> (Vec<u8>, Decision);
    /// The next dead letter, acknowledged.
    async fn next_dead_letter(&mut self) -> DeadLetter;
}

fn text(b: &[u8]) -> String {
    String::from_utf8_lossy(b).into_owned()
}

/// The attempts of one message read with `Spans::attempt_chain`, over every process span name
/// an attempt can have (Kafka and Pub/Sub consume retries from another destination).
fn chain(spans: &Spans, names: &Names, origin: &SpanData) -> Vec<SpanData> {
    let attempts: Vec<SpanData> = spans
        .in_trace(origin.span_context.trace_id())
        .all()
        .iter()
        .filter(|s| names.attempts.iter().any(|n| *n == s.name))
        .cloned()
        .map(|mut s| {
            s.name = "attempt".into();
            s
        })
        .collect();
    let as_one = Spans(attempts);
    as_one
        .attempt_chain("attempt", &origin.span_context)
        .into_iter()
        .cloned()
        .collect()
}

fn process_spans<'a>(spans: &'a Spans, names: &Names) -> Vec<&'a SpanData> {
    names.attempts.iter().flat_map(|n| spans.named(n)).collect()
}

/// The producer span a span started (the copy an attempt published).
fn copy_of<'a>(spans: &'a Spans, attempt: &SpanData) -> Option<&'a SpanData> {
    spans
        .children_of(attempt)
        .into_iter()
        .find(|s| s.span_kind == SpanKind::Producer)
}

async fn continuity<B: Broker>() {
    let t = TestTelemetry::new();
    let mut b = B::open(&t, fast(3)).await;
    b.publish(b"order-1", &[("tenant", "acme")]).await;
    let m = b.next_and_ack().await;
    assert_eq!(m.body, b"order-1", "the body is unchanged");
    assert!(
        m.headers.contains(&("tenant".into(), "acme".into())),
        "the user's header is kept: {:?}",
        m.headers
    );
    let n = b.names();
    let spans = wait(&t, &n.settles[0], 1).await;
    let send = spans.one(&n.send);
    let process = spans.one(&n.attempts[0]);
    assert_eq!(send.span_kind, SpanKind::Producer, "{}", spans.tree());
    assert_eq!(process.span_kind, SpanKind::Consumer, "{}", spans.tree());
    assert_eq!(
        process.span_context.trace_id(),
        send.span_context.trace_id(),
        "one trace:\n{}",
        spans.tree()
    );
    process.assert_child_of(send);
    process.assert_attr(attr::OUTCOME, "ack");
    // Not asserted here: `mqtrace.delivery.attempt` outside the retry types (Pub/Sub without
    // a dead-letter policy does not know the attempt, so it leaves it unset).
    let settle = spans.one(&n.settles[0]);
    assert_eq!(settle.span_context.trace_id(), send.span_context.trace_id());
}

async fn malformed_context<B: Broker>() {
    let t = TestTelemetry::new();
    let mut b = B::open(&t, fast(3)).await;
    let bad = "00-not-a-trace-01";
    b.publish_raw(b"bad", &[("traceparent", bad), ("tenant", "acme")])
        .await;
    let m = b.next_and_ack().await;
    assert_eq!(m.body, b"bad", "the body is unchanged");
    for kv in [("traceparent", bad), ("tenant", "acme")] {
        assert!(
            m.headers.contains(&(kv.0.into(), kv.1.into())),
            "{kv:?} arrives unchanged: {:?}",
            m.headers
        );
    }
    let n = b.names();
    let spans = wait(&t, &n.settles[0], 1).await;
    let process = spans.one(&n.attempts[0]);
    process.assert_root();
    assert!(process.links.links.is_empty(), "nothing to link");
    process.assert_attr_str(attr::CONTEXT_ERROR, "traceparent: length 17, expected 55");
    process.assert_attr(attr::OUTCOME, "ack");
}

async fn transient_twice_then_success<B: Broker>() {
    let t = TestTelemetry::new();
    let mut b = B::open(&t, fast(5)).await;
    b.publish(b"order-1", &[("tenant", "acme")]).await;
    let mut decisions = Vec::new();
    for _ in 0..3 {
        let (body, decision) = b
            .handle(&|body, attempt| {
                assert_eq!(body, b"order-1", "the body is unchanged on every attempt");
                if attempt < 3 {
                    Err(HandlerError::transient("inventory service unavailable"))
                } else {
                    Ok(())
                }
            })
            .await;
        assert_eq!(body, b"order-1");
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
    let n = b.names();
    let spans = t
        .wait_for(
            |s| process_spans(s, &n).len() >= 3,
            mqtrace_integration_tests::WAIT,
        )
        .await
        .expect("three attempts");
    let send = spans.one(&n.send);
    let attempts = chain(&spans, &n, send);
    assert_eq!(attempts.len(), 3, "{}", spans.tree());
    attempts[0].assert_child_of(send);
    for (a, outcome) in attempts.iter().zip(["retry", "retry", "ack"]) {
        a.assert_attr(attr::OUTCOME, outcome);
        a.assert_attr_i64(attr::RETRY_MAX_ATTEMPTS, 5);
        assert_eq!(a.span_kind, SpanKind::Consumer);
    }
    attempts[0].assert_attr(attr::ERROR_TYPE, "transient");
    assert!(attempts[0].attr(attr::RETRY_DELAY).is_some());
    assert!(!attempts[2].is_error());
    // Attempt n+1 is the child of the copy attempt n published.
    for i in 1..3 {
        let copy = copy_of(&spans, &attempts[i - 1])
            .unwrap_or_else(|| panic!("attempt {i} published no copy:\n{}", spans.tree()));
        assert_eq!(attempts[i].parent_span_id, copy.span_context.span_id());
    }
}

async fn dead_letters<B: Broker>() {
    let t = TestTelemetry::new();
    let mut b = B::open(&t, fast(3)).await;
    b.publish(b"permanent", &[]).await;
    b.publish(b"always-transient", &[]).await;
    let mut dead = 0;
    for _ in 0..4 {
        let (_, decision) = b
            .handle(&|body, _| {
                if body == b"permanent" {
                    Err(HandlerError::permanent("order has no items")
                        .with_error_type("invalid_order"))
                } else {
                    Err(HandlerError::transient("db down"))
                }
            })
            .await;
        dead += usize::from(matches!(decision, Decision::DeadLetter { .. }));
    }
    assert_eq!(dead, 2);
    let mut letters = vec![b.next_dead_letter().await, b.next_dead_letter().await];
    letters.sort();
    assert_eq!(
        letters,
        [
            (
                "always-transient".into(),
                "gave up after 3 of 3 attempts: db down".into(),
                3
            ),
            (
                "permanent".into(),
                "permanent failure: order has no items".into(),
                1
            ),
        ]
    );
    let n = b.names();
    let spans = wait(&t, &n.dead_letter_settle, 2).await;
    let dead_processes = spans.named(&n.dead_letter_process);
    assert_eq!(dead_processes.len(), 2, "{}", spans.tree());
    let sends = spans.named(&n.send);
    for dead_process in dead_processes {
        // The dead-letter consumer continues the trace of the message's producer.
        let original = sends
            .iter()
            .find(|s| s.span_context.trace_id() == dead_process.span_context.trace_id())
            .unwrap_or_else(|| panic!("not in a producer's trace:\n{}", spans.tree()));
        let dl_copy = spans
            .by_id(dead_process.parent_span_id)
            .expect("the dead-letter copy's producer span is the parent");
        assert_eq!(dl_copy.span_kind, SpanKind::Producer);
        let last_attempt = spans
            .by_id(dl_copy.parent_span_id)
            .expect("the last attempt made the copy");
        last_attempt.assert_attr(attr::OUTCOME, "dead_letter");
        assert!(last_attempt.attr_str(attr::OUTCOME_REASON).is_some());
        let prev = dead_process
            .link_of_type("previous_attempt")
            .expect("previous-attempt link");
        assert_eq!(
            prev.span_context.span_id(),
            last_attempt.span_context.span_id()
        );
        let origin = dead_process.link_of_type("origin").expect("origin link");
        assert_eq!(
            origin.span_context.span_id(),
            original.span_context.span_id()
        );
        // The reason is said once, from the copy's reason header (on RabbitMQ: not also the
        // `expired` of the delay queue's x-death).
        let said = dead_process
            .attributes
            .iter()
            .filter(|kv| kv.key.as_str() == attr::DEAD_LETTER_REASON)
            .count();
        assert_eq!(said, 1, "{:?}", dead_process.attributes);
        let why = dead_process
            .attr_str(attr::DEAD_LETTER_REASON)
            .expect("the reason");
        assert!(
            why.starts_with("permanent failure") || why.starts_with("gave up after 3"),
            "{why}"
        );
    }
    let permanent = process_spans(&spans, &n)
        .into_iter()
        .find(|s| s.attr_str(attr::ERROR_TYPE) == Some("invalid_order"))
        .expect("the permanent failure's span");
    permanent.assert_attr(attr::OUTCOME, "dead_letter");
    permanent.assert_attr_i64(attr::DELIVERY_ATTEMPT, 1);
    permanent.assert_attr(
        attr::OUTCOME_REASON,
        "permanent failure: order has no items",
    );
    assert!(permanent.attr(attr::RETRY_DELAY).is_none(), "not retried");
}

async fn in_equals_acked_plus_dead_lettered<B: Broker>() {
    let t = TestTelemetry::new();
    let mut b = B::open(&t, fast(3).with_initial_delay(Duration::from_millis(20))).await;
    let total = 100_u32;
    for i in 0..total {
        b.publish(i.to_string().as_bytes(), &[]).await;
    }
    // Deterministic "random" failures: 30 % transient, 5 % permanent, per attempt.
    let roll = |id: u32, attempt: u32| {
        (id.wrapping_mul(2_654_435_761) ^ attempt.wrapping_mul(40_503)) % 100
    };
    let id_of = |body: &[u8]| -> u32 { text(body).parse().expect("an id") };
    let mut acked = HashSet::new();
    let mut finished = HashSet::new();
    let mut deliveries = 0_usize;
    let mut duplicates = 0;
    while finished.len() < total as usize {
        let (body, decision) = b
            .handle(&|body, attempt| match roll(id_of(body), attempt) {
                0..5 => Err(HandlerError::permanent("bad input")),
                5..35 => Err(HandlerError::transient("flaky dependency")),
                _ => Ok(()),
            })
            .await;
        deliveries += 1;
        let id = id_of(&body);
        match decision {
            Decision::Retry { .. } => {}
            Decision::Ack => {
                acked.insert(id);
                duplicates += usize::from(!finished.insert(id));
            }
            Decision::DeadLetter { .. } => {
                duplicates += usize::from(!finished.insert(id));
            }
        }
    }
    let mut dead = HashSet::new();
    let mut letters = 0;
    while dead.len() + acked.len() < total as usize {
        let (body, _, _) = b.next_dead_letter().await;
        letters += 1;
        duplicates += usize::from(!dead.insert(id_of(body.as_bytes())));
    }
    assert!(acked.is_disjoint(&dead), "{:?}", acked.intersection(&dead));
    let all: HashSet<u32> = (0..total).collect();
    assert_eq!(&acked | &dead, all, "messages in = acked + dead-lettered");
    assert!(
        !dead.is_empty() && acked.len() > 70,
        "acked {} dead {}",
        acked.len(),
        dead.len()
    );
    assert!(deliveries > total as usize, "some messages were retried");
    // At-least-once brokers may redeliver; there should be few.
    assert!(duplicates < 5, "{duplicates} duplicate deliveries");

    // No span left open: every delivery handled ended exactly one process span with an
    // outcome, and so did every dead letter read.
    let n = b.names();
    let spans = t
        .wait_for(
            |s| {
                process_spans(s, &n).len() >= deliveries
                    && s.named(&n.dead_letter_process).len() >= letters
            },
            mqtrace_integration_tests::WAIT,
        )
        .await
        .unwrap_or_else(|e| panic!("process spans left open: {e}"));
    let processes = process_spans(&spans, &n);
    assert_eq!(processes.len(), deliveries);
    assert_eq!(spans.named(&n.dead_letter_process).len(), letters);
    let ids: HashSet<SpanId> = processes.iter().map(|s| s.span_context.span_id()).collect();
    assert_eq!(ids.len(), deliveries, "each span ended once");
    for p in processes
        .iter()
        .chain(spans.named(&n.dead_letter_process).iter())
    {
        assert!(
            p.attr_str(attr::OUTCOME).is_some(),
            "{} has no outcome",
            p.name
        );
    }
}

/// The server a test's broker listens on, as `server.*` records it.
fn server_of(n: &Names, spans: &Spans) -> (String, i64) {
    let send = spans.one(&n.send);
    let address = send
        .attr_str(attr::SERVER_ADDRESS)
        .unwrap_or_else(|| panic!("{} has no server.address", send.name))
        .to_owned();
    let port = match send.attr(attr::SERVER_PORT) {
        Some(Value::I64(p)) => *p,
        other => panic!("{}: server.port {other:?}", send.name),
    };
    (address, port)
}

async fn samplers_see_what_is_known_at_start<B: Broker>() {
    let seen = SeenBySampler::default();
    let t = TestTelemetry::with_sampler(seen.clone());
    let mut b = B::open(&t, fast(3)).await;
    b.publish(b"order-1", &[]).await;
    b.next_and_ack().await;
    let n = b.names();
    let spans = wait(&t, &n.settles[0], 1).await;
    let (address, port) = server_of(&n, &spans);
    let send = seen.first(&n.send);
    assert_eq!(send.kind, SpanKind::Producer);
    for shown in [send, seen.first(&n.attempts[0]), seen.first(&n.settles[0])] {
        shown.assert_attr(attr::SERVER_ADDRESS, address.clone());
        shown.assert_attr(attr::SERVER_PORT, port);
        if shown.name != n.send {
            for (key, value) in b.start_attributes() {
                shown.assert_attr(key, value);
            }
        }
    }
}

async fn settle_spans_carry_the_message<B: Broker>() {
    let t = TestTelemetry::new();
    let mut b = B::open(&t, fast(3)).await;
    b.publish(b"order-1", &[]).await;
    b.next_and_ack().await;
    let n = b.names();
    let spans = wait(&t, &n.settles[0], 1).await;
    let settle = spans.one(&n.settles[0]);
    let process = spans.one(&n.attempts[0]);
    settle.assert_child_of(process);
    for (key, value) in b
        .start_attributes()
        .into_iter()
        .chain(b.settle_attributes())
    {
        assert_eq!(
            settle.attr(key),
            Some(&value),
            "{}: {key}\n{:?}",
            settle.name,
            settle.attributes
        );
        assert_eq!(process.attr(key), Some(&value), "{}: {key}", process.name);
    }
}

/// `messaging.client.id` of the spans of one client instance: one id, not a shared default.
async fn client_ids_are_unique_per_client<B: Broker>() {
    let mut ids = Vec::new();
    for _ in 0..2 {
        let t = TestTelemetry::new();
        let mut b = B::open(&t, fast(3)).await;
        b.publish(b"order-1", &[]).await;
        b.next_and_ack().await;
        let n = b.names();
        let spans = wait(&t, &n.settles[0], 1).await;
        let process = spans.one(&n.attempts[0]);
        let settle = spans.one(&n.settles[0]);
        let id = process
            .attr_str(attr::MESSAGING_CLIENT_ID)
            .unwrap_or_else(|| panic!("{} has no messaging.client.id", process.name))
            .to_owned();
        assert_ne!(id, "rdkafka", "not librdkafka's default");
        assert_eq!(
            settle.attr_str(attr::MESSAGING_CLIENT_ID),
            Some(id.as_str())
        );
        assert!(
            spans
                .one(&n.send)
                .attr_str(attr::MESSAGING_CLIENT_ID)
                .is_some()
        );
        ids.push(id);
    }
    assert_ne!(ids[0], ids[1], "two client instances, two ids");
}

/// The rule: a handler error then an ack is a failed processing, on the span and on the
/// process-duration metric alike (the message is gone, the handling failed).
async fn an_error_then_ack_is_a_failure_on_span_and_metric<B: Broker>() {
    let t = TestTelemetry::new();
    let mut b = B::open_with(&t, fast(3), t.config().with_metrics(true)).await;
    b.publish(b"order-1", &[]).await;
    b.next_error_then_ack("validation").await;
    let n = b.names();
    let spans = wait(&t, &n.settles[0], 1).await;
    let process = spans.one(&n.attempts[0]);
    process.assert_attr(attr::OUTCOME, "ack");
    process.assert_attr(attr::ERROR_TYPE, "validation");
    assert!(process.is_error(), "the span is a failure");
    let settle = spans.one(&n.settles[0]);
    assert!(
        settle.attr(attr::ERROR_TYPE).is_none(),
        "the ack itself worked"
    );
    let points = t.metric("messaging.process.duration");
    let destination = process
        .attr_str(attr::MESSAGING_DESTINATION_NAME)
        .unwrap_or_default()
        .to_owned();
    let ours: Vec<_> = points
        .iter()
        .filter(|p| {
            p.attr_str(attr::MESSAGING_DESTINATION_NAME)
                .is_some_and(|d| destination.starts_with(d) || d.starts_with(&destination))
        })
        .collect();
    assert!(!ours.is_empty(), "a process-duration point: {points:?}");
    for p in ours {
        assert_eq!(p.attr_str(attr::ERROR_TYPE), Some("validation"), "{p:?}");
    }
}

/// One `#[tokio::test]` per scenario for a broker.
macro_rules! conformance {
    ($broker:ident, $adapter:ty) => {
        mod $broker {
            use super::*;

            #[tokio::test]
            async fn continuity_one_trace_exact_parent_names_and_kinds() {
                within(continuity::<$adapter>()).await;
            }

            #[tokio::test]
            async fn malformed_context_is_a_new_root_with_the_reason_and_the_message_unchanged() {
                within(malformed_context::<$adapter>()).await;
            }

            #[tokio::test]
            async fn transient_failure_twice_then_success_is_three_linked_attempts_in_one_trace()
            {
                within(transient_twice_then_success::<$adapter>()).await;
            }

            #[tokio::test]
            async fn poison_and_permanent_failures_are_dead_lettered_with_their_reason_in_the_trace()
            {
                within(dead_letters::<$adapter>()).await;
            }

            #[tokio::test]
            async fn messages_in_equal_acked_plus_dead_lettered_and_no_span_is_left_open() {
                within(in_equals_acked_plus_dead_lettered::<$adapter>()).await;
            }

            #[tokio::test]
            async fn samplers_see_server_and_the_messages_own_attributes_on_send_process_and_settle()
            {
                within(samplers_see_what_is_known_at_start::<$adapter>()).await;
            }

            #[tokio::test]
            async fn settle_spans_carry_the_message_attributes_the_conventions_ask() {
                within(settle_spans_carry_the_message::<$adapter>()).await;
            }

            #[tokio::test]
            async fn messaging_client_id_is_unique_per_client_instance() {
                within(client_ids_are_unique_per_client::<$adapter>()).await;
            }

            #[tokio::test]
            async fn record_error_then_ack_is_a_failure_on_both_span_and_metric() {
                within(an_error_then_ack_is_a_failure_on_span_and_metric::<$adapter>()).await;
            }
        }
    };
}

conformance!(rabbitmq, adapters::Rabbit);
conformance!(kafka, adapters::Kafka);
conformance!(pubsub, adapters::PubSub);

mod adapters {
    use super::*;

    pub(crate) struct Rabbit {
        _conn: mqtrace_lapin::TracedConnection,
        ch: mqtrace_lapin::TracedChannel,
        queue: String,
        consumer: mqtrace_lapin::TracedConsumer,
        dlq: Option<mqtrace_lapin::TracedConsumer>,
        retries: mqtrace_lapin::RetryQueues,
    }

    mod rabbit {
        use lapin::BasicProperties;
        use lapin::types::{AMQPValue, FieldTable, LongString};

        pub(super) fn props(headers: &[(&str, &str)]) -> BasicProperties {
            let mut table = FieldTable::default();
            for (k, v) in headers {
                table.insert(
                    (*k).into(),
                    AMQPValue::LongString(LongString::from(v.as_bytes())),
                );
            }
            BasicProperties::default().with_headers(table)
        }

        pub(super) fn headers(props: &BasicProperties) -> Vec<(String, String)> {
            props
                .headers()
                .as_ref()
                .map(|h| {
                    h.inner()
                        .iter()
                        .filter_map(|(k, v)| match v {
                            AMQPValue::LongString(s) => Some((
                                k.as_str().to_owned(),
                                String::from_utf8_lossy(s.as_bytes()).into_owned(),
                            )),
                            _ => None,
                        })
                        .collect()
                })
                .unwrap_or_default()
        }
    }

    impl Broker for Rabbit {
        async fn open_with(_t: &TestTelemetry, policy: RetryPolicy, config: Config) -> Self {
            use lapin::options::{BasicConsumeOptions, ConfirmSelectOptions, QueueDeclareOptions};
            use lapin::types::{AMQPValue, FieldTable};
            let conn = mqtrace_integration_tests::rabbitmq(config).await;
            let ch = conn.create_channel().await.expect("create_channel");
            ch.confirm_select(ConfirmSelectOptions::default())
                .await
                .expect("confirm_select");
            let queue = mqtrace_integration_tests::unique("conformance");
            let mut args = FieldTable::default();
            args.insert("x-expires".into(), AMQPValue::LongInt(60_000));
            ch.queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
                .await
                .expect("queue_declare");
            let retries = mqtrace_lapin::RetryQueues::declare(ch.clone(), &queue, policy)
                .await
                .expect("declare the retry queues");
            let consumer = ch
                .basic_consume(
                    queue.as_str().into(),
                    "".into(),
                    BasicConsumeOptions::default(),
                    FieldTable::default(),
                )
                .await
                .expect("basic_consume");
            Rabbit {
                _conn: conn,
                ch,
                queue,
                consumer,
                dlq: None,
                retries,
            }
        }

        fn start_attributes(&self) -> Vec<(&'static str, Value)> {
            Vec::new()
        }

        fn settle_attributes(&self) -> Vec<(&'static str, Value)> {
            // The first delivery on the test's own channel; the broker's node, as connected.
            vec![
                (attr::MESSAGING_RABBITMQ_MESSAGE_DELIVERY_TAG, Value::I64(1)),
                (attr::NETWORK_PEER_ADDRESS, Value::from("127.0.0.1")),
                (attr::NETWORK_PEER_PORT, Value::I64(5672)),
            ]
        }

        async fn next_error_then_ack(&mut self, error_type: &'static str) {
            use mqtrace_lapin::prelude::*;
            let d = mqtrace_integration_tests::next_delivery(&mut self.consumer).await;
            d.record_error(error_type, &"amount must be positive");
            d.ack(Default::default()).await.expect("ack");
        }

        fn names(&self) -> Names {
            let q = &self.queue;
            let dlq = self.retries.dead_letter_queue();
            Names {
                send: format!("publish {q}"),
                attempts: vec![format!("process {q}")],
                settles: vec![format!("ack {q}")],
                dead_letter_process: format!("process {dlq}"),
                dead_letter_settle: format!("ack {dlq}"),
            }
        }

        async fn publish(&self, body: &[u8], headers: &[(&str, &str)]) {
            self.ch
                .basic_publish(
                    "".into(),
                    self.queue.as_str().into(),
                    Default::default(),
                    body,
                    rabbit::props(headers),
                )
                .await
                .expect("basic_publish")
                .await
                .expect("confirm");
        }

        async fn publish_raw(&self, body: &[u8], headers: &[(&str, &str)]) {
            lapin::Channel::basic_publish(
                &self.ch,
                "".into(),
                self.queue.as_str().into(),
                Default::default(),
                body,
                rabbit::props(headers),
            )
            .await
            .expect("basic_publish")
            .await
            .expect("confirm");
        }

        async fn next_and_ack(&mut self) -> Msg {
            let d = mqtrace_integration_tests::next_delivery(&mut self.consumer).await;
            let m = Msg {
                body: d.data.clone(),
                headers: rabbit::headers(&d.properties),
            };
            d.ack(Default::default()).await.expect("ack");
            m
        }

        async fn handle(&mut self, script: Script<'_>) -> (Vec<u8>, Decision) {
            use mqtrace_lapin::prelude::*;
            let d = mqtrace_integration_tests::next_delivery(&mut self.consumer).await;
            let body = d.data.clone();
            let decision = self
                .retries
                .handle(d, async |d| script(&d.data, d.attempt()))
                .await
                .expect("carried out");
            (body, decision)
        }

        async fn next_dead_letter(&mut self) -> DeadLetter {
            use mqtrace_lapin::prelude::*;
            if self.dlq.is_none() {
                let dlq = self
                    .ch
                    .basic_consume(
                        self.retries.dead_letter_queue().as_str().into(),
                        "".into(),
                        Default::default(),
                        Default::default(),
                    )
                    .await
                    .expect("basic_consume the dead letters");
                self.dlq = Some(dlq);
            }
            let Some(dlq) = self.dlq.as_mut() else {
                unreachable!("set above")
            };
            let d = mqtrace_integration_tests::next_delivery(dlq).await;
            let reason = rabbit::headers(&d.properties)
                .into_iter()
                .find(|(k, _)| k == mqtrace::retry::DEAD_LETTER_REASON_HEADER)
                .map(|(_, v)| v)
                .expect("a reason header");
            let letter = (text(&d.data), reason, d.attempt());
            d.ack(Default::default()).await.expect("ack");
            letter
        }
    }

    pub(crate) struct Kafka {
        t: TestTelemetry,
        group: String,
        topic: String,
        producer: mqtrace_rdkafka::TracedFutureProducer,
        retries: mqtrace_rdkafka::RetryTopics,
        consumer: mqtrace_rdkafka::TracedStreamConsumer,
        dlq: Option<mqtrace_rdkafka::TracedStreamConsumer>,
    }

    mod kafka {
        use rdkafka::message::{Header, Headers, OwnedHeaders};

        pub(super) fn owned(headers: &[(&str, &str)]) -> Option<OwnedHeaders> {
            if headers.is_empty() {
                return None;
            }
            Some(headers.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: Some(v.as_bytes()),
                })
            }))
        }

        pub(super) fn text<H: Headers>(h: Option<&H>) -> Vec<(String, String)> {
            h.map(|h| {
                h.iter()
                    .map(|h| {
                        (
                            h.key.to_owned(),
                            String::from_utf8_lossy(h.value.unwrap_or_default()).into_owned(),
                        )
                    })
                    .collect()
            })
            .unwrap_or_default()
        }
    }

    const SEND_TIMEOUT: Duration = Duration::from_secs(10);

    impl Broker for Kafka {
        async fn open_with(t: &TestTelemetry, policy: RetryPolicy, config: Config) -> Self {
            use mqtrace_integration_tests::kafka as k;
            let topic = mqtrace_integration_tests::unique("conformance");
            k::create_topic(&topic, 1).await;
            let producer = k::producer(config.clone());
            let retries = mqtrace_rdkafka::RetryTopics::declare(producer.clone(), &topic, policy)
                .await
                .expect("declare the retry topics")
                .with_commit_mode(rdkafka::consumer::CommitMode::Sync);
            let topics = retries.topics();
            let topics: Vec<&str> = topics.iter().map(String::as_str).collect();
            let group = mqtrace_integration_tests::unique("g");
            let mut client = k::consumer_config(&group);
            // Fetches return after 10 ms, so copies arrive before they are due.
            client.set("fetch.wait.max.ms", "10");
            let consumer = k::consumer_with(config, client, &topics);
            Kafka {
                t: t.clone(),
                group,
                topic,
                producer,
                retries,
                consumer,
                dlq: None,
            }
        }

        fn start_attributes(&self) -> Vec<(&'static str, Value)> {
            vec![
                (attr::MESSAGING_DESTINATION_PARTITION_ID, Value::from("0")),
                (
                    attr::MESSAGING_CONSUMER_GROUP_NAME,
                    Value::from(self.group.clone()),
                ),
            ]
        }

        fn settle_attributes(&self) -> Vec<(&'static str, Value)> {
            vec![(attr::MESSAGING_KAFKA_OFFSET, Value::I64(0))]
        }

        async fn next_error_then_ack(&mut self, error_type: &'static str) {
            use mqtrace_rdkafka::prelude::*;
            let m = mqtrace_integration_tests::kafka::next_message(&self.consumer).await;
            m.record_error(error_type, &"amount must be positive");
            self.consumer
                .commit_message(&m, rdkafka::consumer::CommitMode::Sync)
                .expect("commit");
        }

        fn names(&self) -> Names {
            let t = &self.topic;
            let dlq = self.retries.dead_letter_topic();
            let all = self.retries.topics();
            Names {
                send: format!("send {t}"),
                attempts: all.iter().map(|n| format!("process {n}")).collect(),
                settles: all.iter().map(|n| format!("commit {n}")).collect(),
                dead_letter_process: format!("process {dlq}"),
                dead_letter_settle: format!("commit {dlq}"),
            }
        }

        async fn publish(&self, body: &[u8], headers: &[(&str, &str)]) {
            let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(&self.topic);
            record.payload = Some(body);
            record.headers = kafka::owned(headers);
            self.producer
                .send(record, SEND_TIMEOUT)
                .await
                .unwrap_or_else(|(e, _)| panic!("delivery to {}: {e}", self.topic));
        }

        async fn publish_raw(&self, body: &[u8], headers: &[(&str, &str)]) {
            let raw: rdkafka::producer::FutureProducer =
                mqtrace_integration_tests::kafka::client_config()
                    .create()
                    .expect("raw producer");
            let mut record = rdkafka::producer::FutureRecord::<str, [u8]>::to(&self.topic);
            record.payload = Some(body);
            record.headers = kafka::owned(headers);
            raw.send(record, SEND_TIMEOUT)
                .await
                .unwrap_or_else(|(e, _)| panic!("raw delivery to {}: {e}", self.topic));
        }

        async fn next_and_ack(&mut self) -> Msg {
            use rdkafka::Message;
            let m = mqtrace_integration_tests::kafka::next_message(&self.consumer).await;
            let msg = Msg {
                body: m.payload().unwrap_or_default().to_vec(),
                headers: kafka::text(m.headers()),
            };
            self.consumer
                .commit_message(&m, rdkafka::consumer::CommitMode::Sync)
                .expect("commit");
            msg
        }

        async fn handle(&mut self, script: Script<'_>) -> (Vec<u8>, Decision) {
            use mqtrace_rdkafka::prelude::*;
            use rdkafka::Message;
            let m = mqtrace_integration_tests::kafka::next_message(&self.consumer).await;
            let body = m.payload().unwrap_or_default().to_vec();
            let decision = self
                .retries
                .handle(&self.consumer, m, async |m| {
                    script(m.payload().unwrap_or_default(), m.attempt())
                })
                .await
                .expect("carried out");
            (body, decision)
        }

        async fn next_dead_letter(&mut self) -> DeadLetter {
            use mqtrace_rdkafka::prelude::*;
            use rdkafka::Message;
            let dlq = self.dlq.get_or_insert_with(|| {
                use mqtrace_integration_tests::kafka as k;
                k::consumer_with(
                    self.t.config(),
                    k::consumer_config(&mqtrace_integration_tests::unique("dlq")),
                    &[&self.retries.dead_letter_topic()],
                )
            });
            let m = mqtrace_integration_tests::kafka::next_message(dlq).await;
            let reason = kafka::text(m.headers())
                .into_iter()
                .find(|(k, _)| k == mqtrace::retry::DEAD_LETTER_REASON_HEADER)
                .map(|(_, v)| v)
                .expect("a reason header");
            let letter = (text(m.payload().unwrap_or_default()), reason, m.attempt());
            dlq.commit_message(&m, rdkafka::consumer::CommitMode::Sync)
                .expect("commit");
            letter
        }
    }

    pub(crate) struct PubSub {
        t: TestTelemetry,
        ps: mqtrace_integration_tests::pubsub::PubSub,
        topic: String,
        sub: String,
        retry_sub: String,
        dlq_sub: String,
        publisher: mqtrace_pubsub::TracedPublisher,
        retries: mqtrace_pubsub::RetryTopics,
        stream: mqtrace_pubsub::RetryStream,
        dlq: Option<mqtrace_pubsub::TracedMessageStream>,
    }

    fn short(name: &str) -> String {
        mqtrace_pubsub::short_name(name).to_owned()
    }

    async fn next_pubsub(
        stream: &mut mqtrace_pubsub::RetryStream,
    ) -> (
        google_cloud_pubsub::model::Message,
        mqtrace_pubsub::TracedHandler,
    ) {
        use mqtrace_integration_tests::WAIT;
        match tokio::time::timeout(WAIT, stream.next()).await {
            Ok(Some(Ok(m))) => m,
            Ok(Some(Err(e))) => panic!("subscriber error: {e}"),
            Ok(None) => panic!("the stream ended"),
            Err(_) => panic!("no message within {WAIT:?} ({stream:?})"),
        }
    }

    impl PubSub {
        fn inst(&self) -> mqtrace::instrument::Instrumentation {
            self.ps.emulator.instrumentation(self.t.config())
        }

        async fn plain_stream(&self, sub: &str) -> mqtrace_pubsub::TracedMessageStream {
            plain_stream(&self.ps, self.inst(), sub).await
        }
    }

    async fn plain_stream(
        ps: &mqtrace_integration_tests::pubsub::PubSub,
        inst: mqtrace::instrument::Instrumentation,
        sub: &str,
    ) -> mqtrace_pubsub::TracedMessageStream {
        let client = ps.emulator.subscriber().build().await.expect("subscriber");
        mqtrace_pubsub::TracedSubscriber::new(client, inst)
            .subscribe(sub)
            .build()
    }

    async fn publisher_to(
        ps: &mqtrace_integration_tests::pubsub::PubSub,
        inst: mqtrace::instrument::Instrumentation,
        topic: &str,
    ) -> mqtrace_pubsub::TracedPublisher {
        let raw = ps
            .emulator
            .publisher(topic)
            .build()
            .await
            .expect("publisher");
        mqtrace_pubsub::TracedPublisher::new(raw, topic, inst)
    }

    fn message(body: &[u8], headers: &[(&str, &str)]) -> google_cloud_pubsub::model::Message {
        google_cloud_pubsub::model::Message::new()
            .set_data(body.to_vec())
            .set_attributes(headers.iter().map(|(k, v)| (*k, *v)))
    }

    fn attributes(m: &google_cloud_pubsub::model::Message) -> Vec<(String, String)> {
        m.attributes
            .iter()
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    impl Broker for PubSub {
        async fn open_with(t: &TestTelemetry, policy: RetryPolicy, config: Config) -> Self {
            use mqtrace_integration_tests::unique;
            let ps = mqtrace_integration_tests::pubsub::pubsub().await;
            let inst = || ps.emulator.instrumentation(config.clone());
            let topic = ps.create_topic(&unique("orders")).await;
            let sub = ps
                .create_subscription(&unique("billing"), &topic, |x| x)
                .await;
            let retry_topic = ps.create_topic(&unique("billing-retry")).await;
            let retry_sub = ps
                .create_subscription(&unique("billing-retry"), &retry_topic, |x| x)
                .await;
            let dlq_topic = ps.create_topic(&unique("billing-dlq")).await;
            let dlq_sub = ps
                .create_subscription(&unique("billing-dlq"), &dlq_topic, |x| x)
                .await;
            let retries = mqtrace_pubsub::RetryTopics::declare(
                (
                    publisher_to(&ps, inst(), &retry_topic).await,
                    publisher_to(&ps, inst(), &dlq_topic).await,
                ),
                &retry_sub,
                policy,
            )
            .await
            .expect("declare");
            let publisher = publisher_to(&ps, inst(), &topic).await;
            let stream = retries.stream(
                plain_stream(&ps, inst(), &sub).await,
                plain_stream(&ps, inst(), &retry_sub).await,
            );
            PubSub {
                t: t.clone(),
                ps,
                topic,
                sub,
                retry_sub,
                dlq_sub,
                publisher,
                retries,
                stream,
                dlq: None,
            }
        }

        fn start_attributes(&self) -> Vec<(&'static str, Value)> {
            vec![(
                attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
                Value::from(short(&self.sub)),
            )]
        }

        fn settle_attributes(&self) -> Vec<(&'static str, Value)> {
            // No dead-letter policy on this subscription: the emulator reports no delivery
            // attempt, so none is recorded (pubsub.rs checks it where one is reported).
            vec![(
                mqtrace_pubsub::attributes::SUBSCRIPTION,
                Value::from(self.sub.clone()),
            )]
        }

        async fn next_error_then_ack(&mut self, error_type: &'static str) {
            use mqtrace_pubsub::prelude::*;
            let (_m, handler) = next_pubsub(&mut self.stream).await;
            handler.record_error(error_type, &"amount must be positive");
            handler.ack();
        }

        fn names(&self) -> Names {
            let (sub, retry_sub, dlq) = (
                short(&self.sub),
                short(&self.retry_sub),
                short(&self.dlq_sub),
            );
            Names {
                send: format!("send {}", short(&self.topic)),
                attempts: vec![format!("subscribe {sub}"), format!("subscribe {retry_sub}")],
                settles: vec![format!("ack {sub}"), format!("ack {retry_sub}")],
                dead_letter_process: format!("subscribe {dlq}"),
                dead_letter_settle: format!("ack {dlq}"),
            }
        }

        async fn publish(&self, body: &[u8], headers: &[(&str, &str)]) {
            tokio::time::timeout(
                Duration::from_secs(20),
                self.publisher.publish(message(body, headers)),
            )
            .await
            .expect("publish answered within 20 s")
            .expect("publish");
        }

        async fn publish_raw(&self, body: &[u8], headers: &[(&str, &str)]) {
            let raw = self
                .ps
                .emulator
                .publisher(&self.topic)
                .build()
                .await
                .expect("publisher");
            raw.publish(message(body, headers)).await.expect("publish");
        }

        async fn next_and_ack(&mut self) -> Msg {
            let (m, handler) = next_pubsub(&mut self.stream).await;
            handler.ack();
            Msg {
                body: m.data.to_vec(),
                headers: attributes(&m),
            }
        }

        async fn handle(&mut self, script: Script<'_>) -> (Vec<u8>, Decision) {
            let (m, handler) = next_pubsub(&mut self.stream).await;
            let body = m.data.to_vec();
            let decision = self
                .retries
                .handle((m, handler), async |m| script(&m.data, m.attempt()))
                .await
                .expect("carried out");
            (body, decision)
        }

        async fn next_dead_letter(&mut self) -> DeadLetter {
            use mqtrace_pubsub::prelude::*;
            if self.dlq.is_none() {
                let dlq = self.plain_stream(&self.dlq_sub).await;
                self.dlq = Some(dlq);
            }
            let Some(dlq) = self.dlq.as_mut() else {
                unreachable!("set above")
            };
            let (m, handler) = mqtrace_integration_tests::pubsub::next_message(dlq).await;
            let reason = m
                .attributes
                .get(mqtrace::retry::DEAD_LETTER_REASON_HEADER)
                .cloned()
                .expect("a reason attribute");
            let letter = (text(&m.data), reason, handler.attempt());
            handler.ack();
            letter
        }
    }
}
