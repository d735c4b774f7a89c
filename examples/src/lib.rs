//! # mqtrace-examples
//!
//! A pipeline of small worker programs that pass an order from an HTTP request through
//! RabbitMQ, Kafka and Google Cloud Pub/Sub, traced end to end with mqtrace. Each program is
//! an ordinary process with its own `service.name`; copy the one you need.
//!
//! ```text
//! POST /orders ─▶ order-api ─▶ RabbitMQ orders.created ─▶ validator ─▶ Kafka orders.validated
//!                                      │  (retries: orders.created.retry.N)          │
//!                                      └▶ orders.created.dlq ─▶ dead-letters          ▼
//!                         notifier ◀─ Pub/Sub orders.ready (orders.ready.notifier) ◀─ enricher
//! ```
//!
//! | program | does |
//! | --- | --- |
//! | `order-api` | `POST /orders`: continues the caller's `traceparent`, SERVER span, publishes to `orders.created` |
//! | `validator` | consumes `orders.created` with retries and a dead-letter queue, produces valid orders to Kafka |
//! | `enricher` | consumes `orders.validated`, publishes to Pub/Sub `orders.ready`, commits |
//! | `notifier` | subscribes to `orders.ready` (subscription `orders.ready.notifier`) and acks |
//! | `dead-letters` | consumes `orders.created.dlq` and acks, so dead letters stay in the trace |
//! | `demo` | creates the topology, sends orders, waits, prints each trace as a waterfall and a table of the stages' metrics, checks them |
//!
//! This library holds what the programs share: addresses ([`mod@env`]), telemetry set-up with a
//! JSON-lines span file, an optional JSON-lines metrics file and optional OTLP ([`telemetry`]),
//! a minimal HTTP/1.1 server and client ([`http`]), the order rules ([`order`]), the reading,
//! printing and checking of the exported traces ([`trace_view`], [`check`]) and metrics
//! ([`metrics_view`]).
#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod check;
pub mod env;
pub mod http;
pub mod metrics_view;
pub mod order;
pub mod telemetry;
pub mod trace_view;

/// The error type of the example programs: anything that can go wrong, with its message.
pub type Error = Box<dyn std::error::Error + Send + Sync>;

/// The attribute the programs put on their spans with the order's id (`app.order.id`), so a
/// trace can be found by order.
pub const ORDER_ID: &str = "app.order.id";

/// Waits for Ctrl-C or SIGTERM (what the demo sends to stop a worker).
///
/// ```no_run
/// # async fn demo() {
/// tokio::select! {
///     _ = mqtrace_examples::shutdown_signal() => println!("stopping"),
///     _ = std::future::pending::<()>() => {}
/// }
/// # }
/// ```
pub async fn shutdown_signal() {
    use tokio::signal::unix::{SignalKind, signal};
    match signal(SignalKind::terminate()) {
        Ok(mut term) => {
            tokio::select! {
                _ = term.recv() => {}
                _ = tokio::signal::ctrl_c() => {}
            }
        }
        Err(_) => {
            let _ = tokio::signal::ctrl_c().await;
        }
    }
}

/// Runs a worker: sets up telemetry for `service` *before* the tokio runtime exists (the
/// blocking OTLP client must not be created or dropped inside it), runs `main` on a
/// multi-threaded runtime, then shuts telemetry down so every span is written.
///
/// ```no_run
/// fn main() -> std::process::ExitCode {
///     mqtrace_examples::run_worker("my-worker", async { Ok(()) })
/// }
/// ```
pub fn run_worker<F>(service: &'static str, main: F) -> std::process::ExitCode
where
    F: std::future::Future<Output = Result<(), Error>>,
{
    let telemetry = match telemetry::Telemetry::init(service) {
        Ok(t) => t,
        Err(e) => {
            eprintln!("[{service}] telemetry: {e}");
            return std::process::ExitCode::FAILURE;
        }
    };
    let result = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .map_err(Error::from)
        .and_then(|rt| {
            let r = rt.block_on(main);
            // Spans still ending in background tasks end here, before the exporters stop.
            rt.shutdown_timeout(std::time::Duration::from_secs(2));
            r
        });
    telemetry.shutdown();
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("[{service}] error: {e}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// Sets `app.order.id` on the current span (the process span, inside a handler).
///
/// ```
/// mqtrace_examples::record_order_id("o-1"); // a no-op outside a recording span
/// ```
pub fn record_order_id(id: &str) {
    use opentelemetry::trace::TraceContextExt;
    opentelemetry::Context::current()
        .span()
        .set_attribute(opentelemetry::KeyValue::new(ORDER_ID, id.to_owned()));
}
