//! Waiting for a copy that is not yet due, inside its process span.

use opentelemetry::trace::TraceContextExt as _;
use opentelemetry::{Context, KeyValue};
use std::time::Duration;

/// Waits `wait` inside the process span of `cx`, recording the event `mqtrace.retry.wait`
/// (with `mqtrace.retry.wait.duration` in seconds) so the span shows why it took longer.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// mqtrace::retry::wait_in_span(&opentelemetry::Context::new(), std::time::Duration::from_millis(1)).await;
/// # }
/// ```
pub async fn wait_in_span(cx: &Context, wait: Duration) {
    let span = cx.span();
    if span.is_recording() {
        span.add_event(
            "mqtrace.retry.wait",
            vec![KeyValue::new(
                "mqtrace.retry.wait.duration",
                wait.as_secs_f64(),
            )],
        );
    }
    tokio::time::sleep(wait).await;
}
