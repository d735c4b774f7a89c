//! Helpers shared by the integration tests: broker addresses, connections that fail loudly
//! with the command that starts the broker, unique names, bounded waits; [`support`] holds
//! what every broker's tests use the same way.
//!
//! ```
//! assert!(mqtrace_integration_tests::amqp_url().starts_with("amqp://"));
//! ```

pub mod kafka;
pub mod pubsub;
pub mod support;

use futures_util::StreamExt;
use lapin::ConnectionProperties;
use mqtrace::Config;
use mqtrace_lapin::{TracedConnection, TracedConsumer, TracedDelivery};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

/// The command that starts RabbitMQ for the tests (named in every connection failure).
pub const START_RABBITMQ: &str = "scripts/start-brokers.sh rabbitmq";

/// How long any single wait on a broker may take before a test fails.
pub const WAIT: Duration = Duration::from_secs(20);

/// `AMQP_URL`, or RabbitMQ's default on loopback.
///
/// ```
/// let _ = mqtrace_integration_tests::amqp_url();
/// ```
pub fn amqp_url() -> String {
    std::env::var("AMQP_URL").unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into())
}

/// Connects to RabbitMQ at `url`; the error names the command that starts the broker.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Nothing listens on port 1.
/// let err = mqtrace_integration_tests::try_rabbitmq("amqp://127.0.0.1:1/%2f", mqtrace::Config::new()).await.unwrap_err();
/// assert!(err.contains("scripts/start-brokers.sh"), "{err}");
/// # }
/// ```
pub async fn try_rabbitmq(url: &str, config: Config) -> Result<TracedConnection, String> {
    let attempt = TracedConnection::connect(url, ConnectionProperties::default(), config);
    match tokio::time::timeout(Duration::from_secs(10), attempt).await {
        Ok(Ok(c)) => Ok(c),
        Ok(Err(e)) => Err(format!(
            "RabbitMQ is not reachable at {url}: {e}. Start it with `{START_RABBITMQ}` \
             (or set AMQP_URL to a running broker)."
        )),
        Err(_) => Err(format!(
            "RabbitMQ at {url} did not answer within 10 s. Start it with `{START_RABBITMQ}` \
             (or set AMQP_URL to a running broker)."
        )),
    }
}

/// Connects to the test RabbitMQ, panicking with the start command if it is not there.
///
/// ```no_run
/// # async fn demo() {
/// let conn = mqtrace_integration_tests::rabbitmq(mqtrace::Config::new()).await;
/// # let _ = conn; }
/// ```
pub async fn rabbitmq(config: Config) -> TracedConnection {
    match try_rabbitmq(&amqp_url(), config).await {
        Ok(c) => c,
        Err(message) => panic!("{message}"),
    }
}

/// A name no other test (or earlier run) uses.
///
/// ```
/// let a = mqtrace_integration_tests::unique("q");
/// assert_ne!(a, mqtrace_integration_tests::unique("q"));
/// ```
pub fn unique(prefix: &str) -> String {
    static N: AtomicU32 = AtomicU32::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.subsec_nanos())
        .unwrap_or(0);
    format!(
        "mqtrace-test.{prefix}.{}.{}.{nanos}",
        std::process::id(),
        N.fetch_add(1, Ordering::Relaxed)
    )
}

/// The next delivery, failing the test after [`WAIT`].
///
/// ```no_run
/// # async fn demo(mut c: mqtrace_lapin::TracedConsumer) {
/// let d = mqtrace_integration_tests::next_delivery(&mut c).await;
/// # let _ = d; }
/// ```
pub async fn next_delivery(consumer: &mut TracedConsumer) -> TracedDelivery {
    match tokio::time::timeout(WAIT, consumer.next()).await {
        Ok(Some(Ok(d))) => d,
        Ok(Some(Err(e))) => panic!("consumer error: {e}"),
        Ok(None) => panic!("consumer stream ended"),
        Err(_) => panic!("no delivery on {} within {WAIT:?}", consumer.queue()),
    }
}
