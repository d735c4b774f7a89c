//! Where the brokers are (the usual variables, with loopback defaults) and the names of the
//! pipeline's queues, topics and subscriptions.

use mqtrace_pubsub::Emulator;

/// RabbitMQ queue the order API publishes to.
pub const ORDERS_CREATED: &str = "orders.created";
/// RabbitMQ queue of orders the validator gave up on (`{ORDERS_CREATED}.dlq`).
pub const ORDERS_DEAD_LETTERS: &str = "orders.created.dlq";
/// Kafka topic of validated orders.
pub const ORDERS_VALIDATED: &str = "orders.validated";
/// Kafka consumer group of the enricher.
pub const ENRICHER_GROUP: &str = "enricher";
/// Pub/Sub topic of enriched orders.
pub const ORDERS_READY: &str = "orders.ready";
/// Pub/Sub subscription of the notifier.
pub const NOTIFIER_SUBSCRIPTION: &str = "orders.ready.notifier";

fn var(name: &str, default: &str) -> String {
    std::env::var(name)
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| default.to_owned())
}

/// `AMQP_URL`, or RabbitMQ on loopback.
///
/// ```
/// assert!(mqtrace_examples::env::amqp_url().starts_with("amqp"));
/// ```
pub fn amqp_url() -> String {
    var("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
}

/// `KAFKA_BOOTSTRAP_SERVERS`, or Kafka on loopback.
///
/// ```
/// assert!(!mqtrace_examples::env::kafka_bootstrap_servers().is_empty());
/// ```
pub fn kafka_bootstrap_servers() -> String {
    var("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
}

/// The Pub/Sub emulator: `PUBSUB_EMULATOR_HOST`, or the emulator on loopback.
///
/// ```
/// assert!(mqtrace_examples::env::pubsub_emulator().endpoint().starts_with("http://"));
/// ```
pub fn pubsub_emulator() -> Emulator {
    Emulator::from_env().unwrap_or_else(|| Emulator::new("127.0.0.1:8085"))
}

/// `PUBSUB_PROJECT_ID` (the emulator accepts any), default `mqtrace-demo`.
///
/// ```
/// assert!(!mqtrace_examples::env::pubsub_project().is_empty());
/// ```
pub fn pubsub_project() -> String {
    var("PUBSUB_PROJECT_ID", "mqtrace-demo")
}

/// `projects/{project}/topics/{id}`.
///
/// ```
/// assert!(mqtrace_examples::env::pubsub_topic("orders.ready").ends_with("/topics/orders.ready"));
/// ```
pub fn pubsub_topic(id: &str) -> String {
    format!("projects/{}/topics/{id}", pubsub_project())
}

/// `projects/{project}/subscriptions/{id}`.
///
/// ```
/// assert!(mqtrace_examples::env::pubsub_subscription("s-1").ends_with("/subscriptions/s-1"));
/// ```
pub fn pubsub_subscription(id: &str) -> String {
    format!("projects/{}/subscriptions/{id}", pubsub_project())
}

/// `ORDER_API_ADDR`: where the order API listens, default `127.0.0.1:8080`.
///
/// ```
/// assert!(mqtrace_examples::env::order_api_addr().contains(':'));
/// ```
pub fn order_api_addr() -> String {
    var("ORDER_API_ADDR", "127.0.0.1:8080")
}
