//! Kafka helpers: the broker address, clients that fail loudly with the command that starts
//! the broker, topics, bounded receives.
//!
//! ```
//! assert!(!mqtrace_integration_tests::kafka::bootstrap_servers().is_empty());
//! ```

use crate::WAIT;
use mqtrace::Config;
use mqtrace_rdkafka::{TracedFutureProducer, TracedMessage, TracedStreamConsumer};
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use std::net::{TcpStream, ToSocketAddrs};
use std::time::Duration;

/// The command that starts Kafka (Tansu) for the tests (named in every connection failure).
pub const START_KAFKA: &str = "scripts/start-brokers.sh kafka";

/// `KAFKA_BOOTSTRAP_SERVERS`, or a broker on loopback.
///
/// ```
/// let _ = mqtrace_integration_tests::kafka::bootstrap_servers();
/// ```
pub fn bootstrap_servers() -> String {
    std::env::var("KAFKA_BOOTSTRAP_SERVERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// `server.address` and `server.port` the spans should record: the first bootstrap server.
///
/// ```
/// let (host, port) = mqtrace_integration_tests::kafka::first_server();
/// assert!(!host.is_empty() && port > 0);
/// ```
pub fn first_server() -> (String, u16) {
    let servers = bootstrap_servers();
    let first = servers.split(',').next().unwrap_or("").trim().to_owned();
    match first.rsplit_once(':') {
        Some((h, p)) => (h.to_owned(), p.parse().unwrap_or(9092)),
        None => (first, 9092),
    }
}

/// Checks that something accepts connections at the first of `servers`; the error names the
/// command that starts the broker.
///
/// ```
/// let err = mqtrace_integration_tests::kafka::try_kafka("127.0.0.1:1").unwrap_err();
/// assert!(err.contains("scripts/start-brokers.sh kafka"));
/// ```
pub fn try_kafka(servers: &str) -> Result<(), String> {
    let first = servers.split(',').next().unwrap_or("").trim();
    let hint = format!(
        "Start it with `{START_KAFKA}` (or set KAFKA_BOOTSTRAP_SERVERS to a running broker)."
    );
    let addrs: Vec<_> = first
        .to_socket_addrs()
        .map_err(|e| format!("Kafka address {first:?} does not resolve: {e}. {hint}"))?
        .collect();
    for addr in &addrs {
        if TcpStream::connect_timeout(addr, Duration::from_secs(5)).is_ok() {
            return Ok(());
        }
    }
    Err(format!("Kafka is not reachable at {first}. {hint}"))
}

/// A client configuration for the test broker, after checking that it is reachable (panics
/// with the start command otherwise).
///
/// ```no_run
/// let mut c = mqtrace_integration_tests::kafka::client_config();
/// c.set("group.id", "g");
/// ```
pub fn client_config() -> ClientConfig {
    let servers = bootstrap_servers();
    if let Err(message) = try_kafka(&servers) {
        panic!("{message}");
    }
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", &servers);
    c
}

/// A consumer configuration: group `group`, reading from the earliest offset, no auto-commit,
/// short session timeouts so rebalances are quick.
///
/// ```no_run
/// // Panics, naming the start command, when no broker answers.
/// let c = mqtrace_integration_tests::kafka::consumer_config("billing"); // group.id = billing
/// # let _ = c;
/// ```
pub fn consumer_config(group: &str) -> ClientConfig {
    let mut c = client_config();
    c.set("group.id", group)
        .set("auto.offset.reset", "earliest")
        .set("enable.auto.commit", "false")
        .set("session.timeout.ms", "6000")
        .set("heartbeat.interval.ms", "500")
        .set("topic.metadata.refresh.interval.ms", "1000");
    c
}

/// Creates `topic` with `partitions` partitions (replication 1); panics with the start command
/// when the broker is not there.
///
/// ```no_run
/// # async fn demo() {
/// mqtrace_integration_tests::kafka::create_topic(&mqtrace_integration_tests::unique("t"), 3).await;
/// # }
/// ```
pub async fn create_topic(topic: &str, partitions: i32) {
    let admin: AdminClient<DefaultClientContext> = client_config()
        .create()
        .unwrap_or_else(|e| panic!("admin client: {e}. Is Kafka running? `{START_KAFKA}`"));
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    let created = tokio::time::timeout(
        WAIT,
        admin.create_topics(
            &[NewTopic::new(topic, partitions, TopicReplication::Fixed(1))],
            &options,
        ),
    )
    .await
    .unwrap_or_else(|_| panic!("creating topic {topic} took over {WAIT:?}. `{START_KAFKA}`"));
    match created {
        Ok(results) => {
            for r in results {
                if let Err((name, code)) = r {
                    panic!("creating topic {name}: {code}");
                }
            }
        }
        Err(e) => panic!("creating topic {topic}: {e}. Is Kafka running? `{START_KAFKA}`"),
    }
}

/// A traced producer for the test broker.
///
/// ```no_run
/// let p = mqtrace_integration_tests::kafka::producer(mqtrace::Config::new());
/// # let _ = p;
/// ```
pub fn producer(config: Config) -> TracedFutureProducer {
    TracedFutureProducer::create(&client_config(), config)
        .unwrap_or_else(|e| panic!("producer: {e}. `{START_KAFKA}`"))
}

/// A traced stream consumer of `group`, subscribed to `topics` (see [`consumer_config`]).
///
/// ```no_run
/// let c = mqtrace_integration_tests::kafka::consumer(mqtrace::Config::new(), "g", &["t"]);
/// # let _ = c;
/// ```
pub fn consumer(config: Config, group: &str, topics: &[&str]) -> TracedStreamConsumer {
    consumer_with(config, consumer_config(group), topics)
}

/// A traced stream consumer with the client configuration `client`, subscribed to `topics`.
///
/// ```no_run
/// let mut c = mqtrace_integration_tests::kafka::consumer_config("g");
/// c.set("enable.auto.commit", "true");
/// let consumer = mqtrace_integration_tests::kafka::consumer_with(mqtrace::Config::new(), c, &["t"]);
/// # let _ = consumer;
/// ```
pub fn consumer_with(
    config: Config,
    client: ClientConfig,
    topics: &[&str],
) -> TracedStreamConsumer {
    use rdkafka::consumer::Consumer;
    let consumer = TracedStreamConsumer::create(&client, config)
        .unwrap_or_else(|e| panic!("consumer: {e}. `{START_KAFKA}`"));
    consumer
        .subscribe(topics)
        .unwrap_or_else(|e| panic!("subscribe {topics:?}: {e}"));
    consumer
}

/// The next message, failing the test after [`WAIT`].
///
/// ```no_run
/// # async fn demo(c: mqtrace_rdkafka::TracedStreamConsumer) {
/// let m = mqtrace_integration_tests::kafka::next_message(&c).await;
/// # let _ = m; }
/// ```
pub async fn next_message(consumer: &TracedStreamConsumer) -> TracedMessage<'_> {
    match tokio::time::timeout(WAIT, consumer.recv()).await {
        Ok(Ok(m)) => m,
        Ok(Err(e)) => panic!("consumer error: {e}"),
        Err(_) => panic!("no message within {WAIT:?}; is Kafka running? `{START_KAFKA}`"),
    }
}
