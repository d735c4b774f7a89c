//! Mode B: the instrumentation people write by hand from the OpenTelemetry API and the
//! messaging conventions — a span built with its attributes, the global W3C propagator
//! through a `HashMap`, a consumer span parented to the extracted context, and a CLIENT span
//! around each settle (ack / commit), ended with the broker's answer.

use opentelemetry::trace::{Span as _, SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue, global};
use opentelemetry_sdk::trace::{SdkTracer, Span};
use std::collections::HashMap;
use std::fmt::Display;

/// Mode H's header value: a valid, constant `traceparent` (no OpenTelemetry call).
pub(crate) const CONSTANT_TRACEPARENT: &str =
    "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";

/// The global propagator's fields for `cx`, as hand-written code collects them.
pub(crate) fn inject(cx: &Context) -> HashMap<String, String> {
    let mut map = HashMap::new();
    global::get_text_map_propagator(|p| p.inject_context(cx, &mut map));
    map
}

/// The global propagator's context from `map`.
pub(crate) fn extract(map: &HashMap<String, String>) -> Context {
    global::get_text_map_propagator(|p| p.extract(map))
}

/// Ends a send span with the broker's answer.
pub(crate) fn end_send(cx: &Context, error: Option<&dyn Display>) {
    let span = cx.span();
    if let Some(e) = error {
        span.set_attribute(KeyValue::new("error.type", "publish_failed"));
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

/// A CLIENT settle span (`ack {queue}`, `commit {topic}`) as a child of the process span.
pub(crate) fn settle_span(
    tracer: &SdkTracer,
    parent: &Context,
    operation: &'static str,
    system: &'static str,
    destination: &str,
) -> Span {
    tracer
        .span_builder(format!("{operation} {destination}"))
        .with_kind(SpanKind::Client)
        .with_attributes([
            KeyValue::new("messaging.system", system),
            KeyValue::new("messaging.operation.name", operation),
            KeyValue::new("messaging.operation.type", "settle"),
            KeyValue::new("messaging.destination.name", destination.to_owned()),
        ])
        .start_with_context(tracer, parent)
}

/// Ends a settle span with the broker's answer.
pub(crate) fn end_settle(mut span: Span, error: Option<&dyn Display>) {
    if let Some(e) = error {
        span.set_attribute(KeyValue::new("error.type", "settle_failed"));
        span.set_status(Status::error(e.to_string()));
    }
    span.end();
}

/// RabbitMQ publish: PRODUCER span with 8 attributes, context injected into a copy of the
/// message's header table.
pub(crate) fn rabbitmq_publish(
    tracer: &SdkTracer,
    queue: &str,
    props: &lapin::BasicProperties,
    body: &[u8],
) -> (Context, lapin::types::FieldTable) {
    let span = tracer
        .span_builder(format!("publish {queue}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.name", "publish"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", queue.to_owned()),
            KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                queue.to_owned(),
            ),
            KeyValue::new("messaging.message.body.size", body.len() as i64),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 5672_i64),
        ])
        .start(tracer);
    let cx = Context::current_with_span(span);
    let mut table = props.headers().clone().unwrap_or_default();
    into_table(inject(&cx), &mut table);
    (cx, table)
}

/// Copies propagator fields into an AMQP table as long strings.
pub(crate) fn into_table(map: HashMap<String, String>, table: &mut lapin::types::FieldTable) {
    use lapin::types::{AMQPValue, LongString};
    for (k, v) in map {
        table.insert(k.into(), AMQPValue::LongString(LongString::from(v)));
    }
}

/// The long-string headers of an AMQP table, as hand-written code reads them.
pub(crate) fn from_table(table: Option<&lapin::types::FieldTable>) -> HashMap<String, String> {
    use lapin::types::AMQPValue;
    let mut map = HashMap::new();
    for (k, v) in table.into_iter().flat_map(|t| t.inner()) {
        if let AMQPValue::LongString(s) = v {
            map.insert(
                k.as_str().to_owned(),
                String::from_utf8_lossy(s.as_bytes()).into_owned(),
            );
        }
    }
    map
}

/// RabbitMQ consume: CONSUMER span with 9 attributes, child of the extracted context.
pub(crate) fn rabbitmq_process(
    tracer: &SdkTracer,
    queue: &str,
    d: &lapin::message::Delivery,
) -> Context {
    let parent = extract(&from_table(d.properties.headers().as_ref()));
    let span = tracer
        .span_builder(format!("process {queue}"))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "rabbitmq"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", queue.to_owned()),
            KeyValue::new(
                "messaging.rabbitmq.destination.routing_key",
                d.routing_key.as_str().to_owned(),
            ),
            KeyValue::new(
                "messaging.rabbitmq.message.delivery_tag",
                i64::try_from(d.delivery_tag).unwrap_or(i64::MAX),
            ),
            KeyValue::new("messaging.message.body.size", d.data.len() as i64),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 5672_i64),
        ])
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}

/// Kafka send: PRODUCER span with 8 attributes, context injected into new record headers.
pub(crate) fn kafka_send(
    tracer: &SdkTracer,
    topic: &str,
    key: &str,
    body_size: usize,
) -> (Context, rdkafka::message::OwnedHeaders) {
    let span = tracer
        .span_builder(format!("send {topic}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.kafka.message.key", key.to_owned()),
            KeyValue::new("messaging.message.body.size", body_size as i64),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 9092_i64),
        ])
        .start(tracer);
    let cx = Context::current_with_span(span);
    let map = inject(&cx);
    let mut headers = rdkafka::message::OwnedHeaders::new_with_capacity(map.len());
    for (k, v) in &map {
        headers = headers.insert(rdkafka::message::Header {
            key: k,
            value: Some(v.as_bytes()),
        });
    }
    (cx, headers)
}

/// Kafka consume: CONSUMER span with 9 attributes, child of the context read from the
/// record's headers (UTF-8 values only, as people write it).
pub(crate) fn kafka_process(
    tracer: &SdkTracer,
    group: &str,
    m: &rdkafka::message::BorrowedMessage<'_>,
) -> Context {
    use rdkafka::Message as _;
    use rdkafka::message::Headers as _;
    let mut map: HashMap<String, String> = HashMap::new();
    if let Some(headers) = m.headers() {
        for h in headers.iter() {
            if let Some(v) = h.value {
                map.insert(h.key.to_owned(), String::from_utf8_lossy(v).into_owned());
            }
        }
    }
    let parent = extract(&map);
    let key = m
        .key()
        .map(|k| String::from_utf8_lossy(k).into_owned())
        .unwrap_or_default();
    let span = tracer
        .span_builder(format!("process {}", m.topic()))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "kafka"),
            KeyValue::new("messaging.operation.name", "process"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new("messaging.destination.name", m.topic().to_owned()),
            KeyValue::new(
                "messaging.destination.partition.id",
                m.partition().to_string(),
            ),
            KeyValue::new("messaging.kafka.offset", m.offset()),
            KeyValue::new("messaging.kafka.message.key", key),
            KeyValue::new("messaging.consumer.group.name", group.to_owned()),
            KeyValue::new(
                "messaging.message.body.size",
                m.payload().map_or(0, <[u8]>::len) as i64,
            ),
        ])
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}

/// Pub/Sub publish: PRODUCER `send` span with 7 attributes, context injected into the
/// message's attributes through the global propagator.
pub(crate) fn pubsub_send(
    tracer: &SdkTracer,
    topic: &str,
    msg: &mut google_cloud_pubsub::model::Message,
) -> Context {
    let span = tracer
        .span_builder(format!("send {topic}"))
        .with_kind(SpanKind::Producer)
        .with_attributes([
            KeyValue::new("messaging.system", "gcp_pubsub"),
            KeyValue::new("messaging.operation.name", "send"),
            KeyValue::new("messaging.operation.type", "send"),
            KeyValue::new("messaging.destination.name", topic.to_owned()),
            KeyValue::new("messaging.message.body.size", msg.data.len() as i64),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 8085_i64),
        ])
        .start(tracer);
    let cx = Context::current_with_span(span);
    global::get_text_map_propagator(|p| p.inject_context(&cx, &mut msg.attributes));
    cx
}

/// Pub/Sub consume: CONSUMER span with 8 attributes, child of the context read from the
/// message's attributes.
pub(crate) fn pubsub_process(
    tracer: &SdkTracer,
    subscription: &str,
    msg: &google_cloud_pubsub::model::Message,
) -> Context {
    let parent = global::get_text_map_propagator(|p| p.extract(&msg.attributes));
    let span = tracer
        .span_builder(format!("subscribe {subscription}"))
        .with_kind(SpanKind::Consumer)
        .with_attributes([
            KeyValue::new("messaging.system", "gcp_pubsub"),
            KeyValue::new("messaging.operation.name", "subscribe"),
            KeyValue::new("messaging.operation.type", "process"),
            KeyValue::new(
                "messaging.destination.subscription.name",
                subscription.to_owned(),
            ),
            KeyValue::new("messaging.message.id", msg.message_id.clone()),
            KeyValue::new("messaging.message.body.size", msg.data.len() as i64),
            KeyValue::new("server.address", "127.0.0.1"),
            KeyValue::new("server.port", 8085_i64),
        ])
        .start_with_context(tracer, &parent);
    parent.with_span(span)
}
