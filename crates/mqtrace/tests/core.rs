//! The core's behaviours tested in the core, without a broker: what `Config` changes (parent
//! policy, trust, propagation, body size, the attribute hook, metrics), what an unsampled
//! message still does, baggage, the four metrics with their attributes, and `Processing`.
//!
//! Each test plays a broker crate: it drives `Instrumentation` with a `HashMap` for headers,
//! as the broker crates do with theirs, and asserts what a user sees in the exported spans
//! and metrics (ids, links, typed attributes, metric names, values and attributes).

use mqtrace::attributes as attr;
use mqtrace::instrument::{
    Incoming, Instrumentation, MessagingSystem, Outgoing, ProcessSpan, Processing, Settle,
    SettleError,
};
use mqtrace::testing::{MetricPoint, SpanDataExt, Spans, TestTelemetry};
use mqtrace::{Config, Operation, OperationType, Outcome, ParentPolicy, Propagation, Trust};
use opentelemetry::baggage::BaggageExt;
use opentelemetry::trace::{
    Span, SpanContext, SpanId, SpanKind, TraceContextExt, TraceId, Tracer, TracerProvider,
};
use opentelemetry::{Context, KeyValue, Value};
use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

type Headers = HashMap<String, String>;

const SEND: Operation = Operation::new("publish", OperationType::Send);
const PROCESS: Operation = Operation::new("process", OperationType::Process);
const ACK: Operation = Operation::new("ack", OperationType::Settle);

/// An instrumentation as a broker crate builds one, with the test's providers.
fn instrumentation(t: &TestTelemetry, configure: impl FnOnce(Config) -> Config) -> Instrumentation {
    Instrumentation::builder(MessagingSystem::RabbitMq, "mqtrace-core-test")
        .server("broker.test", 5672)
        .build(configure(t.config()))
}

/// Sends one message to `destination` with `cx` as the current context; returns its headers.
fn send_in(inst: &Instrumentation, destination: &str, cx: &Context) -> Headers {
    let _guard = cx.clone().attach();
    let mut headers = Headers::new();
    inst.start_send(Outgoing::new(SEND, destination), &mut headers)
        .end_ok();
    headers
}

fn send(inst: &Instrumentation, destination: &str) -> Headers {
    send_in(inst, destination, &Context::new())
}

/// The process span of a message delivered from `source` with `headers`.
fn deliver(inst: &Instrumentation, source: &str, headers: &Headers) -> ProcessSpan {
    inst.start_process(
        Incoming::new(PROCESS, source, source).with_headers(headers),
        inst.extract(headers),
    )
}

/// The baggage entry `key` as the handler sees it inside the process span.
fn handler_baggage(span: &ProcessSpan, key: &str) -> Option<String> {
    span.context()
        .baggage()
        .get(key)
        .map(|v| v.as_str().to_owned())
}

fn traced_baggage() -> Context {
    Context::new().with_baggage([KeyValue::new("tenant", "acme")])
}

fn point<'a>(points: &'a [MetricPoint], operation: &str) -> &'a MetricPoint {
    points
        .iter()
        .find(|p| p.attr_str(attr::MESSAGING_OPERATION_NAME) == Some(operation))
        .unwrap_or_else(|| panic!("no point for operation {operation:?}: {points:?}"))
}

mod parent_policy {
    use super::*;

    fn with_ambient(t: &TestTelemetry, f: impl FnOnce()) -> SpanContext {
        let ambient = t.provider().tracer("app").start("worker loop");
        let cx = Context::current_with_span(ambient);
        let sc = cx.span().span_context().clone();
        {
            let _guard = cx.clone().attach();
            f();
        }
        cx.span().end();
        sc
    }

    #[test]
    fn default_parents_to_the_creation_context_and_links_it() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let headers = send(&inst, "orders");
        deliver(&inst, "orders", &headers).finish(Outcome::Ack);
        let spans = t.spans();
        let (publish, process) = (spans.one("publish orders"), spans.one("process orders"));
        process.assert_child_of(publish);
        assert!(process.parent_span_is_remote);
        process.assert_links_to(&publish.span_context);
        assert_eq!(process.links.links.len(), 1);
        process.assert_kind(SpanKind::Consumer);
        publish.assert_kind(SpanKind::Producer);
    }

    #[test]
    fn always_link_starts_a_new_trace_that_links_the_creation_and_keeps_baggage() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c.with_parent_policy(ParentPolicy::AlwaysLink));
        let headers = send_in(&inst, "orders", &traced_baggage());
        let process = deliver(&inst, "orders", &headers);
        assert_eq!(
            handler_baggage(&process, "tenant").as_deref(),
            Some("acme"),
            "a trusted producer's baggage reaches the handler even when only linked"
        );
        process.finish(Outcome::Ack);
        let spans = t.spans();
        let (publish, process) = (spans.one("publish orders"), spans.one("process orders"));
        process.assert_root();
        assert_ne!(
            process.span_context.trace_id(),
            publish.span_context.trace_id()
        );
        process.assert_links_to(&publish.span_context);
        assert_eq!(process.links.links.len(), 1);
        process.assert_no_attr(attr::CONTEXT_UNTRUSTED);
    }

    #[test]
    fn always_link_with_an_ambient_span_is_its_child_and_links_the_creation() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c.with_parent_policy(ParentPolicy::AlwaysLink));
        let headers = send(&inst, "orders");
        let ambient = with_ambient(&t, || {
            deliver(&inst, "orders", &headers).finish(Outcome::Ack);
        });
        let spans = t.spans();
        let process = spans.one("process orders");
        process.assert_parent_context(&ambient);
        process.assert_links_to(&spans.one("publish orders").span_context);
    }

    #[test]
    fn a_message_without_context_is_a_root_without_links() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let process = deliver(&inst, "orders", &Headers::new());
        assert!(process.origin().is_none());
        process.finish(Outcome::Ack);
        let spans = t.spans();
        let process = spans.one("process orders");
        process.assert_root();
        assert!(process.links.links.is_empty());
        process.assert_no_attr(attr::CONTEXT_ERROR);
    }
}

mod trust {
    use super::*;

    fn untrusted_delivery(trust: Trust, source: &str) -> (Spans, Option<String>) {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c.with_trust(trust));
        let headers = send_in(&inst, source, &traced_baggage());
        let process = deliver(&inst, source, &headers);
        let tenant = handler_baggage(&process, "tenant");
        process.finish(Outcome::Ack);
        (t.spans(), tenant)
    }

    #[test]
    fn an_untrusted_source_is_only_linked_its_baggage_dropped_and_marked_untrusted() {
        for (label, trust) in [
            ("nothing", Trust::Nothing),
            ("named", Trust::untrusted_sources(["partner-feed"])),
        ] {
            let (spans, tenant) = untrusted_delivery(trust, "partner-feed");
            let publish = spans.one("publish partner-feed");
            let process = spans.one("process partner-feed");
            process.assert_root();
            assert_ne!(
                process.span_context.trace_id(),
                publish.span_context.trace_id(),
                "{label}"
            );
            process.assert_links_to(&publish.span_context);
            process.assert_attr_bool(attr::CONTEXT_UNTRUSTED, true);
            assert_eq!(
                tenant, None,
                "{label}: untrusted baggage reached the handler"
            );
        }
    }

    #[test]
    fn the_policy_is_asked_about_the_source_not_the_destination() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| {
            c.with_trust(Trust::untrusted_sources(["partner-feed"]))
        });
        let headers = send(&inst, "ex");
        // Destination "ex:rk:partner-feed", source (the queue) "partner-feed": untrusted.
        inst.start_process(
            Incoming::new(PROCESS, "ex:rk:partner-feed", "partner-feed"),
            inst.extract(&headers),
        )
        .finish(Outcome::Ack);
        // Destination "partner-feed", source "orders": trusted.
        inst.start_process(
            Incoming::new(PROCESS, "partner-feed", "orders"),
            inst.extract(&headers),
        )
        .finish(Outcome::Ack);
        let spans = t.spans();
        let publish = spans.one("publish ex");
        let untrusted = spans.one("process ex:rk:partner-feed");
        untrusted.assert_root();
        untrusted.assert_attr_bool(attr::CONTEXT_UNTRUSTED, true);
        let trusted = spans.one("process partner-feed");
        trusted.assert_child_of(publish);
        trusted.assert_no_attr(attr::CONTEXT_UNTRUSTED);
    }

    #[test]
    fn other_sources_stay_trusted() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| {
            c.with_trust(Trust::untrusted_sources(["partner-feed"]))
        });
        let headers = send_in(&inst, "orders", &traced_baggage());
        let process = deliver(&inst, "orders", &headers);
        assert_eq!(handler_baggage(&process, "tenant").as_deref(), Some("acme"));
        process.finish(Outcome::Ack);
        let spans = t.spans();
        let process = spans.one("process orders");
        process.assert_child_of(spans.one("publish orders"));
        process.assert_no_attr(attr::CONTEXT_UNTRUSTED);
    }
}

mod unsampled {
    use super::*;
    use opentelemetry_sdk::trace::Sampler;

    #[test]
    fn unsampled_messages_carry_their_context_and_record_no_span_and_no_hook() {
        let t = TestTelemetry::with_sampler(Sampler::ParentBased(Box::new(Sampler::AlwaysOff)));
        let hooked = Arc::new(AtomicUsize::new(0));
        let counter = hooked.clone();
        let inst = instrumentation(&t, |c| {
            c.with_attributes_hook(move |_| {
                counter.fetch_add(1, Ordering::Relaxed);
                vec![KeyValue::new("app.hooked", true)]
            })
        });
        let headers = send(&inst, "orders");
        let tp = headers
            .get("traceparent")
            .expect("context is still carried");
        assert!(tp.ends_with("-00"), "not sampled: {tp}");
        let sent: SpanContext = mqtrace::w3c::parse_traceparent(tp).expect("a valid traceparent");

        let process = deliver(&inst, "orders", &headers);
        assert_eq!(process.span_context().trace_id(), sent.trace_id());
        assert!(process.span_context().is_valid());
        assert!(!process.span_context().is_sampled());
        // The handler's own spans follow the (unsampled) decision.
        let tracer = t.provider().tracer("handler");
        let child = tracer.start_with_context("db query", process.context());
        assert!(!child.span_context().is_sampled());
        drop(child);
        process.finish(Outcome::Ack);

        assert!(t.spans().all().is_empty(), "{}", t.spans().tree());
        assert_eq!(
            hooked.load(Ordering::Relaxed),
            0,
            "the hook runs for sampled spans only"
        );
        // Metrics count every message, sampled or not.
        assert_eq!(t.metric("messaging.client.sent.messages")[0].value, 1.0);
        assert_eq!(t.metric("messaging.client.consumed.messages")[0].value, 1.0);
    }
}

mod propagation {
    use super::*;
    use opentelemetry::propagation::{
        Extractor, Injector, TextMapCompositePropagator, TextMapPropagator,
    };
    use opentelemetry::trace::{TraceFlags, TraceState};

    /// A propagator of another format: one `x-ctx: {trace id}:{span id}` header.
    #[derive(Debug)]
    struct OneHeader;

    impl TextMapPropagator for OneHeader {
        fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
            let sc = cx.span().span_context().clone();
            injector.set("x-ctx", format!("{}:{}", sc.trace_id(), sc.span_id()));
        }

        fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
            let parsed = extractor.get("x-ctx").and_then(|v| {
                let (t, s) = v.split_once(':')?;
                Some((TraceId::from_hex(t).ok()?, SpanId::from_hex(s).ok()?))
            });
            match parsed {
                Some((trace_id, span_id)) => cx.with_remote_span_context(SpanContext::new(
                    trace_id,
                    span_id,
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::NONE,
                )),
                None => cx.clone(),
            }
        }

        fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
            opentelemetry::propagation::text_map_propagator::FieldIter::new(&[])
        }
    }

    #[test]
    fn a_custom_propagator_writes_and_reads_its_own_format_only() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| {
            c.with_propagation(Propagation::Custom(Arc::new(OneHeader)))
        });
        let headers = send(&inst, "orders");
        assert_eq!(
            headers.keys().map(String::as_str).collect::<Vec<_>>(),
            ["x-ctx"],
            "only the custom propagator's header is written"
        );
        deliver(&inst, "orders", &headers).finish(Outcome::Ack);
        let spans = t.spans();
        let publish = spans.one("publish orders");
        assert_eq!(
            headers["x-ctx"],
            format!(
                "{}:{}",
                publish.span_context.trace_id(),
                publish.span_context.span_id()
            )
        );
        spans.one("process orders").assert_child_of(publish);
    }

    #[test]
    fn the_sdk_propagators_are_called_through_and_their_rejections_diagnosed() {
        let t = TestTelemetry::new();
        let composite = TextMapCompositePropagator::new(vec![
            Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
            Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
        ]);
        let inst = instrumentation(&t, |c| {
            c.with_propagation(Propagation::Custom(Arc::new(composite)))
        });
        let headers = send_in(
            &inst,
            "orders",
            &Context::new().with_baggage([KeyValue::new("k", "v")]),
        );
        // The SDK's propagator writes an empty tracestate: called through, as configured.
        assert_eq!(headers.get("tracestate").map(String::as_str), Some(""));
        assert_eq!(headers.get("baggage").map(String::as_str), Some("k=v"));
        let good = deliver(&inst, "orders", &headers);
        assert_eq!(handler_baggage(&good, "k").as_deref(), Some("v"));
        good.finish(Outcome::Ack);

        let mut bad = Headers::new();
        bad.insert(
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-0x".into(),
        );
        deliver(&inst, "bad", &bad).finish(Outcome::Ack);

        let spans = t.spans();
        spans
            .one("process orders")
            .assert_child_of(spans.one("publish orders"));
        let rejected = spans.one("process bad");
        rejected.assert_root();
        rejected.assert_attr(
            attr::CONTEXT_ERROR,
            "traceparent: trace-flags is not 2 lowercase hex digits",
        );
    }

    #[test]
    fn a_malformed_context_gives_a_new_root_that_says_why() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c.with_propagation(Propagation::W3c));
        let mut bad = Headers::new();
        bad.insert("traceparent".into(), "00-not-hex".into());
        let process = deliver(&inst, "orders", &bad);
        assert!(process.origin().is_none());
        process.finish(Outcome::Ack);
        let spans = t.spans();
        let process = spans.one("process orders");
        process.assert_root();
        assert!(process.links.links.is_empty());
        process.assert_attr(attr::CONTEXT_ERROR, "traceparent: length 10, expected 55");
        process.assert_attr(attr::OUTCOME, "ack");
    }
}

mod baggage {
    use super::*;

    #[test]
    fn baggage_of_the_sender_reaches_the_handler() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c.with_propagation(Propagation::W3c));
        let headers = send_in(&inst, "orders", &traced_baggage());
        assert_eq!(
            headers.get("baggage").map(String::as_str),
            Some("tenant=acme")
        );
        let process = deliver(&inst, "orders", &headers);
        assert_eq!(handler_baggage(&process, "tenant").as_deref(), Some("acme"));
        // Also through `Processing::in_span`, as the broker crates run handlers.
        let processing = Processing::new(process);
        let seen = block_on(processing.in_span(async {
            Context::current()
                .baggage()
                .get("tenant")
                .map(|v| v.as_str().to_owned())
        }));
        assert_eq!(seen.as_deref(), Some("acme"));
        processing.finish(Outcome::Ack);
        t.spans()
            .one("process orders")
            .assert_no_attr(attr::CONTEXT_ERROR);
    }

    #[test]
    fn oversized_baggage_is_dropped_with_a_reason_and_the_trace_continues() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c.with_propagation(Propagation::W3c));
        let mut headers = Headers::new();
        headers.insert(
            "traceparent".into(),
            "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".into(),
        );
        headers.insert("baggage".into(), format!("k={}", "v".repeat(9000)));
        let process = deliver(&inst, "orders", &headers);
        assert!(process.context().baggage().is_empty());
        process.finish(Outcome::Ack);
        let spans = t.spans();
        let p = spans.one("process orders");
        assert_eq!(
            p.span_context.trace_id(),
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128)
        );
        assert_eq!(p.parent_span_id, SpanId::from(0xb7ad6b7169203331_u64));
        p.assert_attr(
            attr::CONTEXT_ERROR,
            "baggage: 9002 bytes exceeds the 8192-byte limit; baggage dropped",
        );
    }

    #[test]
    fn an_ambient_baggage_is_not_replaced_by_the_message_when_only_linked() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c.with_parent_policy(ParentPolicy::AlwaysLink));
        let headers = send_in(&inst, "orders", &traced_baggage());
        let ambient = Context::new().with_baggage([KeyValue::new("tenant", "worker")]);
        let process = {
            let _guard = ambient.attach();
            deliver(&inst, "orders", &headers)
        };
        assert_eq!(
            handler_baggage(&process, "tenant").as_deref(),
            Some("worker")
        );
        process.finish(Outcome::Ack);
    }
}

mod config {
    use super::*;

    #[test]
    fn body_size_is_recorded_as_an_integer_only_when_asked() {
        for on in [false, true] {
            let t = TestTelemetry::new();
            let inst = instrumentation(&t, |c| c.with_body_size(on));
            let mut headers = Headers::new();
            inst.start_send(
                Outgoing::new(SEND, "orders").with_body_size(5),
                &mut headers,
            )
            .end_ok();
            inst.start_process(
                Incoming::new(PROCESS, "orders", "orders").with_body_size(5),
                inst.extract(&headers),
            )
            .finish(Outcome::Ack);
            let spans = t.spans();
            for name in ["publish orders", "process orders"] {
                let span = spans.one(name);
                if on {
                    span.assert_attr_i64(attr::MESSAGING_MESSAGE_BODY_SIZE, 5);
                } else {
                    span.assert_no_attr(attr::MESSAGING_MESSAGE_BODY_SIZE);
                }
            }
        }
    }

    #[test]
    fn every_span_has_the_conventions_attributes_with_their_types() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let mut headers = Headers::new();
        inst.start_send(
            Outgoing::new(SEND, "orders")
                .with_message_id(Some("m-1"))
                .with_conversation_id(Some("c-1")),
            &mut headers,
        )
        .end_ok();
        let processing = Processing::new(
            inst.start_process(
                Incoming::new(PROCESS, "orders", "orders")
                    .with_message_id(Some("m-1"))
                    .with_attempt(Some(2)),
                inst.extract(&headers),
            ),
        );
        let acked: Result<(), String> =
            block_on(processing.settle(Settle::new(ACK, Outcome::Ack), async { Ok(()) }, |_| None));
        assert!(acked.is_ok());
        let spans = t.spans();
        for (name, op, ty, kind) in [
            ("publish orders", "publish", "send", SpanKind::Producer),
            ("process orders", "process", "process", SpanKind::Consumer),
            ("ack orders", "ack", "settle", SpanKind::Client),
        ] {
            let span = spans.one(name);
            span.assert_kind(kind);
            span.assert_attr(attr::MESSAGING_SYSTEM, "rabbitmq");
            span.assert_attr_str(attr::MESSAGING_OPERATION_NAME, op);
            span.assert_attr_str(attr::MESSAGING_OPERATION_TYPE, ty);
            span.assert_attr(attr::MESSAGING_DESTINATION_NAME, "orders");
            span.assert_attr(attr::SERVER_ADDRESS, "broker.test");
            span.assert_attr_i64(attr::SERVER_PORT, 5672);
        }
        let publish = spans.one("publish orders");
        publish.assert_attr(attr::MESSAGING_MESSAGE_ID, "m-1");
        publish.assert_attr(attr::MESSAGING_MESSAGE_CONVERSATION_ID, "c-1");
        let process = spans.one("process orders");
        process.assert_attr(attr::MESSAGING_MESSAGE_ID, "m-1");
        process.assert_attr_i64(attr::DELIVERY_ATTEMPT, 2);
        process.assert_attr(attr::OUTCOME, "ack");
        spans.one("ack orders").assert_attr(attr::OUTCOME, "ack");
    }

    #[test]
    fn the_attribute_hook_sees_the_operation_destination_and_headers_of_every_span() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| {
            c.with_attributes_hook(|info| {
                let tenant = info
                    .headers
                    .and_then(|h| h.header("tenant"))
                    .and_then(Result::ok)
                    .map(str::to_owned);
                let mut kv = vec![
                    KeyValue::new("app.operation", info.operation.name()),
                    KeyValue::new("app.destination", info.destination.to_owned()),
                ];
                if let Some(tenant) = tenant {
                    kv.push(KeyValue::new("app.tenant", tenant));
                }
                kv
            })
        });
        let mut headers = Headers::new();
        headers.insert("tenant".into(), "acme".into());
        let user_headers = headers.clone();
        inst.start_send(
            Outgoing::new(SEND, "orders").with_headers(&user_headers),
            &mut headers,
        )
        .end_ok();
        let processing = Processing::new(deliver(&inst, "orders", &headers));
        let _: () = block_on(processing.settle(Settle::new(ACK, Outcome::Ack), async {}, |_| None));
        let spans = t.spans();
        for (name, op, tenant) in [
            ("publish orders", "publish", Some("acme")),
            ("process orders", "process", Some("acme")),
            ("ack orders", "ack", None),
        ] {
            let span = spans.one(name);
            span.assert_attr_str("app.operation", op);
            span.assert_attr("app.destination", "orders");
            assert_eq!(span.attr_str("app.tenant"), tenant, "{name}");
        }
    }

    #[test]
    fn metrics_are_off_unless_asked_for() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c.with_metrics(false));
        let headers = send(&inst, "orders");
        deliver(&inst, "orders", &headers).finish(Outcome::Ack);
        for name in [
            "messaging.client.sent.messages",
            "messaging.client.operation.duration",
            "messaging.client.consumed.messages",
            "messaging.process.duration",
        ] {
            assert!(t.metric(name).is_empty(), "{name}: {:?}", t.metric(name));
        }
        assert!(!Config::new().metrics());
        assert!(t.config().metrics(), "a meter provider turns metrics on");
    }
}

mod metrics {
    use super::*;

    fn assert_common(p: &MetricPoint, operation: &str, kind: &str) {
        assert_eq!(p.attr_str(attr::MESSAGING_SYSTEM), Some("rabbitmq"));
        assert_eq!(p.attr_str(attr::MESSAGING_OPERATION_NAME), Some(operation));
        assert_eq!(p.attr_str(attr::MESSAGING_OPERATION_TYPE), Some(kind));
        assert_eq!(p.attr_str(attr::MESSAGING_DESTINATION_NAME), Some("orders"));
        assert_eq!(p.attr_str(attr::SERVER_ADDRESS), Some("broker.test"));
        assert_eq!(p.attr(attr::SERVER_PORT), Some(&Value::I64(5672)));
    }

    #[test]
    fn a_sent_processed_and_acked_message_is_one_point_in_each_of_the_four_metrics() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let headers = send(&inst, "orders");
        let processing = Processing::new(deliver(&inst, "orders", &headers));
        let consumed = t.metric("messaging.client.consumed.messages");
        assert_eq!(consumed.len(), 1, "counted on delivery: {consumed:?}");
        assert!(
            t.metric("messaging.process.duration").is_empty(),
            "recorded when processing ends"
        );
        let _: () = block_on(processing.settle(Settle::new(ACK, Outcome::Ack), async {}, |_| None));

        let sent = t.metric("messaging.client.sent.messages");
        assert_eq!(sent.len(), 1, "{sent:?}");
        assert_eq!(sent[0].value, 1.0);
        assert_common(&sent[0], "publish", "send");
        assert!(sent[0].attr(attr::ERROR_TYPE).is_none());

        let operations = t.metric("messaging.client.operation.duration");
        assert_eq!(operations.len(), 2, "publish and ack: {operations:?}");
        for (op, kind) in [("publish", "send"), ("ack", "settle")] {
            let p = point(&operations, op);
            assert_eq!(p.value, 1.0, "one measurement of {op}");
            assert_common(p, op, kind);
            assert!(p.attr(attr::ERROR_TYPE).is_none());
        }

        let consumed = t.metric("messaging.client.consumed.messages");
        assert_eq!(consumed.len(), 1);
        assert_eq!(consumed[0].value, 1.0);
        assert_common(&consumed[0], "process", "process");

        let processed = t.metric("messaging.process.duration");
        assert_eq!(processed.len(), 1);
        assert_eq!(processed[0].value, 1.0);
        assert_common(&processed[0], "process", "process");
        assert!(processed[0].attr(attr::ERROR_TYPE).is_none());
    }

    #[test]
    fn failures_are_kept_apart_by_error_type() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let mut headers = Headers::new();
        inst.start_send(Outgoing::new(SEND, "orders"), &mut headers)
            .end_ok();
        inst.start_send(Outgoing::new(SEND, "orders"), &mut Headers::new())
            .end_error("nack", "the broker refused the message");
        drop(inst.start_send(Outgoing::new(SEND, "orders"), &mut Headers::new()));

        let sent = t.metric("messaging.client.sent.messages");
        let by_error = |e: Option<&str>| {
            sent.iter()
                .find(|p| p.attr_str(attr::ERROR_TYPE) == e)
                .unwrap_or_else(|| panic!("no sent point with error.type {e:?}: {sent:?}"))
                .value
        };
        assert_eq!(sent.len(), 3, "{sent:?}");
        assert_eq!(by_error(None), 1.0);
        assert_eq!(by_error(Some("nack")), 1.0);
        assert_eq!(
            by_error(Some("abandoned")),
            1.0,
            "a dropped send counts as abandoned"
        );

        // A failed outcome is the process duration's error.type; a failed settle, its own.
        deliver(&inst, "orders", &headers).finish(Outcome::Requeue);
        let processing = Processing::new(deliver(&inst, "orders", &headers));
        let r: Result<(), &str> = block_on(processing.settle(
            Settle::new(ACK, Outcome::Ack),
            async { Err("channel closed") },
            |r| r.err().map(|e| SettleError::new("channel_closed", e)),
        ));
        assert_eq!(r, Err("channel closed"), "the result is returned unchanged");
        let processed = t.metric("messaging.process.duration");
        assert_eq!(processed.len(), 2, "{processed:?}");
        for e in ["requeue", "channel_closed"] {
            assert!(
                processed
                    .iter()
                    .any(|p| p.attr_str(attr::ERROR_TYPE) == Some(e) && p.value == 1.0),
                "no process duration with error.type {e}: {processed:?}"
            );
        }
        let acks: Vec<_> = t
            .metric("messaging.client.operation.duration")
            .into_iter()
            .filter(|p| p.attr_str(attr::MESSAGING_OPERATION_NAME) == Some("ack"))
            .collect();
        assert_eq!(acks.len(), 1, "{acks:?}");
        assert_eq!(acks[0].attr_str(attr::ERROR_TYPE), Some("channel_closed"));
    }

    #[test]
    fn durations_are_histograms_in_seconds_and_counters_count_messages() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        for _ in 0..3 {
            let headers = send(&inst, "orders");
            deliver(&inst, "orders", &headers).finish(Outcome::Ack);
        }
        assert_eq!(t.metric("messaging.client.sent.messages")[0].value, 3.0);
        assert_eq!(t.metric("messaging.client.consumed.messages")[0].value, 3.0);
        assert_eq!(
            point(&t.metric("messaging.client.operation.duration"), "publish").value,
            3.0,
            "three measurements"
        );
        assert_eq!(t.metric("messaging.process.duration")[0].value, 3.0);
    }
}

mod processing {
    use super::*;

    fn processing(inst: &Instrumentation) -> (Processing, SpanContext) {
        let headers = send(inst, "orders");
        let p = Processing::new(inst.start_process(
            Incoming::new(PROCESS, "orders", "orders").with_attempt(Some(1)),
            inst.extract(&headers),
        ));
        let sent = mqtrace::w3c::parse_traceparent(&headers["traceparent"]).expect("traceparent");
        (p, sent)
    }

    #[test]
    fn it_keeps_the_span_context_attempt_and_origin_after_the_settle() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let (p, sent) = processing(&inst);
        let sc = p.span_context().clone();
        assert_eq!(p.attempt(), Some(1));
        assert_eq!(p.origin().map(SpanContext::span_id), Some(sent.span_id()));
        assert!(!p.is_settled());
        p.finish(Outcome::Ack);
        assert!(p.is_settled());
        assert_eq!(p.span_context(), &sc);
        assert_eq!(p.context().span().span_context(), &sc);
        assert_eq!(p.attempt(), Some(1));
        let spans = t.spans();
        let process = spans.one("process orders");
        assert_eq!(process.span_context.span_id(), sc.span_id());
        process.assert_child_of(spans.one("publish orders"));
    }

    #[test]
    fn handler_spans_are_children_of_the_process_span_even_after_the_settle() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let (p, _) = processing(&inst);
        let tracer = t.provider().tracer("handler");
        block_on(p.in_span(async {
            tracer.in_span("db query", |_| {});
        }));
        p.finish(Outcome::Ack);
        block_on(p.in_span(async {
            tracer.in_span("after the ack", |_| {});
        }));
        let spans = t.spans();
        let process = spans.one("process orders");
        spans.one("db query").assert_child_of(process);
        spans.one("after the ack").assert_child_of(process);
    }

    #[test]
    fn the_first_settle_is_recorded_and_later_ones_only_run_the_operation() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let (p, _) = processing(&inst);
        let first: u8 = block_on(p.settle(Settle::new(ACK, Outcome::Ack), async { 1 }, |_| None));
        let ran = AtomicUsize::new(0);
        let second: u8 = block_on(p.settle(
            Settle::new(
                Operation::new("nack", OperationType::Settle),
                Outcome::Requeue,
            ),
            async {
                ran.fetch_add(1, Ordering::Relaxed);
                2
            },
            |_| {
                Some(SettleError::new(
                    "unexpected",
                    "a second settle is not checked",
                ))
            },
        ));
        assert_eq!((first, second), (1, 2), "each result is returned unchanged");
        assert_eq!(
            ran.load(Ordering::Relaxed),
            1,
            "the second operation still runs"
        );
        p.finish(Outcome::DeadLetter);
        assert!(p.take().is_none());

        let spans = t.spans();
        let process = spans.one("process orders");
        process.assert_attr(attr::OUTCOME, "ack");
        assert!(!process.is_error());
        let ack = spans.one("ack orders");
        ack.assert_child_of(process);
        ack.assert_attr(attr::OUTCOME, "ack");
        assert!(spans.find("nack orders").is_none());
        assert!(
            process.end_time >= ack.end_time,
            "the process span covers the settle"
        );
    }

    #[test]
    fn a_failed_settle_marks_the_settle_and_the_process_span() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let (p, _) = processing(&inst);
        let r: Result<(), String> = block_on(p.settle(
            Settle::new(ACK, Outcome::Ack),
            async { Err("channel closed".to_owned()) },
            |r| {
                r.as_ref()
                    .err()
                    .map(|e| SettleError::new("channel_closed", e))
            },
        ));
        assert!(r.is_err());
        let spans = t.spans();
        let ack = spans.one("ack orders");
        ack.assert_attr(attr::ERROR_TYPE, "channel_closed");
        assert!(ack.is_error());
        let process = spans.one("process orders");
        process.assert_attr(attr::OUTCOME, "unsettled");
        process.assert_attr(attr::ERROR_TYPE, "channel_closed");
        assert!(
            process.is_error(),
            "the settle failed, so the processing did"
        );
    }

    #[test]
    fn errors_are_recorded_until_the_settle_only() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let (p, _) = processing(&inst);
        p.record_error("validation", &"amount must be positive");
        p.finish(Outcome::Reject);
        p.record_error("late", &"after the settle");
        let spans = t.spans();
        let process = spans.one("process orders");
        process.assert_attr(attr::ERROR_TYPE, "validation");
        process.assert_attr(attr::OUTCOME, "reject");
        assert!(process.is_error());
        assert!(
            process.events.events.iter().any(|e| e.name == "exception"
                && e.attributes
                    .iter()
                    .any(|kv| kv.value.as_str() == "amount must be positive")),
            "{:?}",
            process.events
        );
    }

    #[test]
    fn a_dropped_processing_ends_unsettled_and_a_taken_span_is_settled_by_its_taker() {
        let t = TestTelemetry::new();
        let inst = instrumentation(&t, |c| c);
        let (p, _) = processing(&inst);
        drop(p);
        let (p, _) = processing(&inst);
        let mut span = p.take().expect("not settled yet");
        assert!(p.is_settled());
        span.set_drop_outcome(Outcome::AutoAck);
        drop(span);
        let spans = t.spans();
        let outcomes: Vec<_> = spans
            .named("process orders")
            .iter()
            .map(|s| (s.attr_str(attr::OUTCOME).map(str::to_owned), s.is_error()))
            .collect();
        assert_eq!(
            outcomes,
            [
                (Some("unsettled".to_owned()), true),
                (Some("auto_ack".to_owned()), false)
            ]
        );
    }
}

/// Runs a future to completion on a current-thread runtime (the core's futures need no
/// reactor).
fn block_on<F: std::future::Future>(fut: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread()
        .build()
        .expect("a current-thread runtime")
        .block_on(fut)
}

/// A sampler that keeps every span except process spans, and remembers every span name it
/// was asked about.
#[derive(Debug, Clone, Default)]
struct DropProcess(Arc<std::sync::Mutex<Vec<String>>>);

impl opentelemetry_sdk::trace::ShouldSample for DropProcess {
    fn should_sample(
        &self,
        _parent: Option<&Context>,
        _trace_id: TraceId,
        name: &str,
        _kind: &SpanKind,
        _attributes: &[KeyValue],
        _links: &[opentelemetry::trace::Link],
    ) -> opentelemetry_sdk::trace::SamplingResult {
        use opentelemetry_sdk::trace::{SamplingDecision, SamplingResult};
        self.0
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .push(name.to_owned());
        SamplingResult {
            decision: if name.starts_with("process") {
                SamplingDecision::Drop
            } else {
                SamplingDecision::RecordAndSample
            },
            attributes: Vec::new(),
            trace_state: Default::default(),
        }
    }
}

mod unsampled_settle {
    use super::*;

    /// A message whose process span was sampled out gets no settle span: the sampler is not
    /// even asked (nothing is built on the unsampled path), and no orphan `ack` span (a child
    /// of a dropped parent) reaches the exporter. The settle itself still runs and the
    /// message is still settled.
    #[tokio::test]
    async fn a_sampled_out_process_span_builds_no_settle_span() {
        let asked = DropProcess::default();
        let exporter = opentelemetry_sdk::trace::InMemorySpanExporter::default();
        let provider = opentelemetry_sdk::trace::SdkTracerProvider::builder()
            .with_simple_exporter(exporter.clone())
            .with_sampler(asked.clone())
            .build();
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "mqtrace-core-test")
            .build(Config::new().with_tracer_provider(provider.clone()));
        let processing = Processing::new(deliver(&inst, "orders", &Headers::new()));
        let settled: Result<bool, std::io::Error> = processing
            .settle(Settle::new(ACK, Outcome::Ack), async { Ok(true) }, |_| None)
            .await;
        assert!(settled.is_ok_and(|acked| acked) && processing.is_settled());
        let names = asked.0.lock().map(|n| n.clone()).unwrap_or_default();
        assert_eq!(
            names,
            ["process orders"],
            "the sampler was asked about {names:?}"
        );
        let _ = provider.force_flush();
        let exported = exporter.get_finished_spans().unwrap_or_default();
        assert!(
            exported.iter().all(|s| s.name != "ack orders"),
            "an orphan settle span was exported: {:?}",
            exported.iter().map(|s| &s.name).collect::<Vec<_>>()
        );
    }
}
