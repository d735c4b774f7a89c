//! `order-api`: `POST /orders` with a JSON order publishes it to the RabbitMQ queue
//! `orders.created`.
//!
//! The request's `traceparent` / `tracestate` / `baggage` are read with the global propagator,
//! so a caller's trace continues here; the request gets a SERVER span `POST /orders`, and the
//! publish (a `TracedChannel`) is its child, carrying the context on to the validator.
//!
//! ```text
//! ORDER_API_ADDR=127.0.0.1:8080 AMQP_URL=amqp://guest:guest@127.0.0.1:5672/%2f \
//! MQTRACE_DEMO_SPANS=/tmp/spans cargo run -p mqtrace-examples --bin order-api
//! curl -X POST localhost:8080/orders -d '{"id":"o-1","customer":"c-1","items":[{"sku":"a","qty":1}]}'
//! ```
#![forbid(unsafe_code)]

use lapin::options::{BasicPublishOptions, ConfirmSelectOptions, QueueDeclareOptions};
use lapin::types::FieldTable;
use lapin::{BasicProperties, Confirmation, ConnectionProperties};
use mqtrace_examples::check::ORDER_API;
use mqtrace_examples::http::{self, Request};
use mqtrace_examples::{Error, ORDER_ID, env, order};
use mqtrace_lapin::{TracedChannel, TracedConnection};
use opentelemetry::context::FutureExt as _;
use opentelemetry::trace::{SpanKind, Status, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;
use tokio::net::{TcpListener, TcpStream};

fn main() -> std::process::ExitCode {
    mqtrace_examples::run_worker(ORDER_API, run())
}

async fn run() -> Result<(), Error> {
    let conn = TracedConnection::connect(
        &env::amqp_url(),
        ConnectionProperties::default(),
        mqtrace_examples::telemetry::mqtrace_config(),
    )
    .await?;
    let channel = conn.create_channel().await?;
    channel
        .confirm_select(ConfirmSelectOptions::default())
        .await?;
    channel
        .queue_declare(
            env::ORDERS_CREATED.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    let channel = Arc::new(channel);
    let addr = env::order_api_addr();
    let listener = TcpListener::bind(&addr).await?;
    eprintln!("[order-api] listening on http://{addr}");
    let shutdown = mqtrace_examples::shutdown_signal();
    tokio::pin!(shutdown);
    loop {
        tokio::select! {
            _ = &mut shutdown => break,
            accepted = listener.accept() => {
                let (stream, _) = accepted?;
                tokio::spawn(serve(stream, channel.clone()));
            }
        }
    }
    eprintln!("[order-api] stopping");
    Ok(())
}

/// One connection: one request.
async fn serve(mut stream: TcpStream, channel: Arc<TracedChannel>) {
    let request = match tokio::time::timeout(
        Duration::from_secs(10),
        http::read_request(&mut stream),
    )
    .await
    {
        Ok(Ok(Some(r))) => r,
        Ok(Ok(None)) => return,
        Ok(Err(e)) => {
            let _ = http::write_response(
                &mut stream,
                400,
                &json!({"error": e.to_string()}).to_string(),
            )
            .await;
            return;
        }
        Err(_) => return,
    };
    let (status, body) = match (request.method.as_str(), request.path.as_str()) {
        ("GET", "/health") => (200, json!({"status": "ok"})),
        ("POST", "/orders") => post_order(&request, &channel).await,
        (_, "/orders") => (405, json!({"error": "use POST"})),
        _ => (404, json!({"error": "not found"})),
    };
    let _ = http::write_response(&mut stream, status, &body.to_string()).await;
}

/// `POST /orders`: a SERVER span that continues the caller's trace, then the publish.
async fn post_order(request: &Request, channel: &TracedChannel) -> (u16, Value) {
    // The caller's context (W3C traceparent/tracestate, baggage), through the global propagator.
    let parent = global::get_text_map_propagator(|p| p.extract(request));
    let tracer = global::tracer("mqtrace-examples/order-api");
    let mut attributes = vec![
        KeyValue::new("http.request.method", "POST"),
        KeyValue::new("http.route", "/orders"),
        KeyValue::new("url.path", request.path.clone()),
        KeyValue::new("url.scheme", "http"),
        KeyValue::new(
            "network.protocol.version",
            request.version.trim_start_matches("HTTP/").to_owned(),
        ),
    ];
    if let Some(ua) = request.header("user-agent") {
        attributes.push(KeyValue::new("user_agent.original", ua.to_owned()));
    }
    let span = tracer
        .span_builder("POST /orders")
        .with_kind(SpanKind::Server)
        .with_attributes(attributes)
        .start_with_context(&tracer, &parent);
    let cx = parent.with_span(span);
    let (status, body) = accept(request, channel).with_context(cx.clone()).await;
    let span = cx.span();
    span.set_attribute(KeyValue::new(
        "http.response.status_code",
        i64::from(status),
    ));
    if status >= 500 {
        span.set_attribute(KeyValue::new("error.type", status.to_string()));
        span.set_status(Status::error(
            body["error"].as_str().unwrap_or("").to_owned(),
        ));
    }
    span.end();
    (status, body)
}

/// Parses the order and publishes it to `orders.created`, waiting for the broker's confirm.
async fn accept(request: &Request, channel: &TracedChannel) -> (u16, Value) {
    let order: Value = match serde_json::from_slice(&request.body) {
        Ok(v @ Value::Object(_)) => v,
        _ => return (400, json!({"error": "the body must be a JSON object"})),
    };
    // The API only needs an id; the validator checks the rest (and dead-letters what is wrong).
    let Some(id) = order::id(&order).map(str::to_owned) else {
        return (400, json!({"error": "the order needs an \"id\""}));
    };
    let cx = Context::current();
    cx.span().set_attribute(KeyValue::new(ORDER_ID, id.clone()));
    let trace_id = cx.span().span_context().trace_id().to_string();
    let properties = BasicProperties::default()
        .with_content_type("application/json".into())
        .with_message_id(id.as_str().into())
        .with_delivery_mode(2);
    let published = async {
        let confirm = channel
            .basic_publish(
                "".into(),
                env::ORDERS_CREATED.into(),
                BasicPublishOptions::default(),
                &request.body,
                properties,
            )
            .await?;
        confirm.await
    };
    match published.await {
        Ok(Confirmation::Nack(_)) => (503, json!({"error": "RabbitMQ refused the order"})),
        Ok(_) => (202, json!({"order_id": id, "trace_id": trace_id})),
        Err(e) => (
            503,
            json!({"error": format!("could not queue the order: {e}")}),
        ),
    }
}
