//! The globally installed propagator is honoured (B3 called through, the SDK's W3C composite
//! takes mqtrace's fast path with the SDK's bytes). Its own test binary: it installs global
//! propagators, which every other test's `Propagation::Global` would otherwise see.

use mqtrace::Propagation;
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::global;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::{SpanContext, TraceContextExt};
use std::collections::HashMap;

fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
    pairs
        .iter()
        .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
        .collect()
}

/// A minimal single-header B3 propagator, to exercise the global, non-W3C path.
#[derive(Debug)]
struct B3Single;

impl TextMapPropagator for B3Single {
    fn inject_context(&self, cx: &Context, injector: &mut dyn Injector) {
        let sc = cx.span().span_context().clone();
        let sampled = if sc.is_sampled() { "1" } else { "0" };
        injector.set(
            "b3",
            format!("{}-{}-{sampled}", sc.trace_id(), sc.span_id()),
        );
    }

    fn extract_with_context(&self, cx: &Context, extractor: &dyn Extractor) -> Context {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let Some(v) = extractor.get("b3") else {
            return cx.clone();
        };
        let parts: Vec<&str> = v.split('-').collect();
        let (Some(t), Some(s)) = (parts.first(), parts.get(1)) else {
            return cx.clone();
        };
        match (TraceId::from_hex(t), SpanId::from_hex(s)) {
            (Ok(t), Ok(s)) if t != TraceId::INVALID && s != SpanId::INVALID => cx
                .with_remote_span_context(SpanContext::new(
                    t,
                    s,
                    TraceFlags::SAMPLED,
                    true,
                    TraceState::NONE,
                )),
            _ => cx.clone(),
        }
    }

    fn fields(&self) -> opentelemetry::propagation::text_map_propagator::FieldIter<'_> {
        static FIELDS: std::sync::OnceLock<Vec<String>> = std::sync::OnceLock::new();
        opentelemetry::propagation::text_map_propagator::FieldIter::new(
            FIELDS.get_or_init(|| vec!["b3".to_owned()]),
        )
    }
}

#[test]
fn the_global_propagator_is_honoured_and_w3c_ones_take_the_fast_path() {
    use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
    let sc = SpanContext::new(
        TraceId::from(0xabc_u128),
        SpanId::from(0xdef_u64),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    // Nothing installed (the no-op default): W3C.
    let mut h: HashMap<String, String> = HashMap::new();
    Propagation::Global.inject(&sc, &Context::new(), &mut h);
    assert!(h.contains_key("traceparent"));

    // A B3 propagator installed globally: called through, both ways, with reasons.
    global::set_text_map_propagator(B3Single);
    let mut h: HashMap<String, String> = HashMap::new();
    Propagation::Global.inject(&sc, &Context::new(), &mut h);
    assert_eq!(h.len(), 1, "{h:?}");
    assert_eq!(h["b3"], format!("{}-{}-1", sc.trace_id(), sc.span_id()));
    let x = Propagation::Global.extract(&h);
    assert_eq!(x.span_context().trace_id(), sc.trace_id());
    let bad = Propagation::Global.extract(&headers(&[("b3", "zz-yy-1")]));
    assert!(!bad.span_context().is_valid());
    assert_eq!(
        bad.issues()[0].to_string(),
        "b3: the propagator found no valid span context"
    );

    // The SDK's W3C composite installed globally: same bytes as the SDK would write.
    global::set_text_map_propagator(opentelemetry::propagation::TextMapCompositePropagator::new(
        vec![
            Box::new(opentelemetry_sdk::propagation::TraceContextPropagator::new()),
            Box::new(opentelemetry_sdk::propagation::BaggagePropagator::new()),
        ],
    ));
    assert_eq!(
        Propagation::Global.fields(),
        ["traceparent", "tracestate", "baggage"]
    );
    let cx = Context::new().with_baggage([opentelemetry::KeyValue::new("k", "v w")]);
    let mut ours: HashMap<String, String> = HashMap::new();
    Propagation::Global.inject(&sc, &cx, &mut ours);
    let mut sdk: HashMap<String, String> = HashMap::new();
    global::get_text_map_propagator(|p| {
        p.inject_context(&cx.with_remote_span_context(sc.clone()), &mut sdk);
    });
    sdk.retain(|k, v| !(k == "tracestate" && v.is_empty()));
    assert_eq!(ours, sdk);
    global::set_text_map_propagator(opentelemetry::trace::noop::NoopTextMapPropagator::new());
}
