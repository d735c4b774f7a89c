//! Helpers for the Pub/Sub tests: the emulator (failing loudly with the command that starts
//! it), topic and subscription set-up, bounded waits for messages.

use crate::WAIT;
use futures_util::StreamExt;
use google_cloud_pubsub::client::{SubscriptionAdmin, TopicAdmin};
use google_cloud_pubsub::model::{DeadLetterPolicy, Message, Subscription};
use mqtrace_pubsub::{Emulator, TracedHandler, TracedMessageStream};
use std::time::Duration;

/// The command that starts the Pub/Sub emulator for the tests (named in every failure).
pub const START_PUBSUB: &str = "scripts/start-brokers.sh pubsub";

/// The project the tests create their topics and subscriptions in (the emulator accepts any).
pub const PROJECT: &str = "mqtrace-test";

/// `PUBSUB_EMULATOR_HOST`, or the emulator's default on loopback.
///
/// ```
/// assert!(mqtrace_integration_tests::pubsub::emulator().endpoint().starts_with("http://"));
/// ```
pub fn emulator() -> Emulator {
    Emulator::from_env().unwrap_or_else(|| Emulator::new("127.0.0.1:8085"))
}

/// `projects/{PROJECT}/topics/{id}`.
///
/// ```
/// assert_eq!(mqtrace_integration_tests::pubsub::topic("t1"), "projects/mqtrace-test/topics/t1");
/// ```
pub fn topic(id: &str) -> String {
    format!("projects/{PROJECT}/topics/{id}")
}

/// `projects/{PROJECT}/subscriptions/{id}`.
///
/// ```
/// assert_eq!(mqtrace_integration_tests::pubsub::subscription("s1"), "projects/mqtrace-test/subscriptions/s1");
/// ```
pub fn subscription(id: &str) -> String {
    format!("projects/{PROJECT}/subscriptions/{id}")
}

/// The emulator and its administration clients.
#[derive(Debug)]
pub struct PubSub {
    /// Where the emulator is.
    pub emulator: Emulator,
    /// Creates topics.
    pub topics: TopicAdmin,
    /// Creates subscriptions.
    pub subscriptions: SubscriptionAdmin,
}

/// Connects to the emulator, or says (within about 10 s) why not and how to start it.
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// // Nothing listens on port 1.
/// let err = mqtrace_integration_tests::pubsub::try_pubsub(mqtrace_pubsub::Emulator::new("127.0.0.1:1")).await.unwrap_err();
/// assert!(err.contains("scripts/start-brokers.sh pubsub"), "{err}");
/// # }
/// ```
pub async fn try_pubsub(emulator: Emulator) -> Result<PubSub, String> {
    let advice = format!(
        "Start it with `{START_PUBSUB}` (or set PUBSUB_EMULATOR_HOST to a running emulator)."
    );
    emulator
        .check(PROJECT, Duration::from_secs(10))
        .await
        .map_err(|e| format!("{e}. {advice}"))?;
    let topics = emulator
        .topic_admin()
        .build()
        .await
        .map_err(|e| format!("topic admin client: {e}. {advice}"))?;
    let subscriptions = emulator
        .subscription_admin()
        .build()
        .await
        .map_err(|e| format!("subscription admin client: {e}. {advice}"))?;
    Ok(PubSub {
        emulator,
        topics,
        subscriptions,
    })
}

/// Connects to the test emulator, panicking with the start command if it is not there.
///
/// ```no_run
/// # async fn demo() {
/// let ps = mqtrace_integration_tests::pubsub::pubsub().await;
/// # let _ = ps; }
/// ```
pub async fn pubsub() -> PubSub {
    match try_pubsub(emulator()).await {
        Ok(p) => p,
        Err(message) => panic!("{message}"),
    }
}

/// Bounds an administration call by [`WAIT`].
async fn bounded<T, E: std::fmt::Display>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> T {
    match tokio::time::timeout(WAIT, fut).await {
        Ok(Ok(v)) => v,
        Ok(Err(e)) => panic!("{what}: {e}"),
        Err(_) => panic!("{what}: no answer from the emulator within {WAIT:?}"),
    }
}

impl PubSub {
    /// Creates topic `id`; returns its full name.
    ///
    /// ```no_run
    /// # async fn demo(ps: mqtrace_integration_tests::pubsub::PubSub) {
    /// let t = ps.create_topic("orders-1").await;
    /// # let _ = t; }
    /// ```
    pub async fn create_topic(&self, id: &str) -> String {
        let name = topic(id);
        bounded(
            &format!("create topic {name}"),
            self.topics.create_topic().set_name(&name).send(),
        )
        .await;
        name
    }

    /// Creates subscription `id` on `topic` with the settings `configure` adds (ordering,
    /// dead-letter policy, ...); returns its full name.
    ///
    /// ```no_run
    /// # async fn demo(ps: mqtrace_integration_tests::pubsub::PubSub) {
    /// let t = ps.create_topic("orders-2").await;
    /// let s = ps.create_subscription("billing-2", &t, |s| s.set_enable_message_ordering(true)).await;
    /// # let _ = s; }
    /// ```
    pub async fn create_subscription(
        &self,
        id: &str,
        topic: &str,
        configure: impl FnOnce(Subscription) -> Subscription,
    ) -> String {
        let name = subscription(id);
        let request = configure(
            Subscription::new()
                .set_name(&name)
                .set_topic(topic)
                .set_ack_deadline_seconds(10),
        );
        bounded(
            &format!("create subscription {name}"),
            self.subscriptions
                .create_subscription()
                .with_request(request)
                .send(),
        )
        .await;
        name
    }

    /// A dead-letter policy sending to `dead_letter_topic` after `max_attempts` deliveries.
    ///
    /// ```no_run
    /// # fn demo(ps: mqtrace_integration_tests::pubsub::PubSub) {
    /// let p = ps.dead_letter_policy("projects/mqtrace-test/topics/dlq", 5);
    /// # let _ = p; }
    /// ```
    pub fn dead_letter_policy(
        &self,
        dead_letter_topic: &str,
        max_attempts: i32,
    ) -> DeadLetterPolicy {
        DeadLetterPolicy::new()
            .set_dead_letter_topic(dead_letter_topic)
            .set_max_delivery_attempts(max_attempts)
    }
}

/// The next message, failing the test after [`WAIT`].
///
/// ```no_run
/// # async fn demo(mut s: mqtrace_pubsub::TracedMessageStream) {
/// let (message, handler) = mqtrace_integration_tests::pubsub::next_message(&mut s).await;
/// handler.ack();
/// # let _ = message; }
/// ```
pub async fn next_message(stream: &mut TracedMessageStream) -> (Message, TracedHandler) {
    match tokio::time::timeout(WAIT, stream.next()).await {
        Ok(Some(Ok(m))) => m,
        Ok(Some(Err(e))) => panic!("subscriber error on {}: {e}", stream.subscription()),
        Ok(None) => panic!("the stream of {} ended", stream.subscription()),
        Err(_) => panic!("no message on {} within {WAIT:?}", stream.subscription()),
    }
}

/// Runs the Python peer `integration-tests/interop/pubsub_peer.py` (Google's Pub/Sub client
/// with its OpenTelemetry tracing) in the pinned venv of `scripts/interop-venv.sh`, against the
/// emulator, and returns the JSON it prints (its spans and what it saw).
///
/// ```no_run
/// # async fn demo() {
/// let e = mqtrace_integration_tests::pubsub::emulator();
/// let out = mqtrace_integration_tests::pubsub::python_peer(&e, "publish", "projects/p/topics/t").await;
/// let spans = &out["spans"]; // the peer's spans, each with kind, name and ids
/// # let _ = spans;
/// # }
/// ```
pub async fn python_peer(emulator: &Emulator, mode: &str, name: &str) -> serde_json::Value {
    let (host, port) = emulator.host_port();
    // The venv may be created on first use (pip install, under a minute here).
    crate::support::python_peer(
        "pubsub_peer.py",
        &[mode, name],
        &[("PUBSUB_EMULATOR_HOST", format!("{host}:{port}"))],
        Duration::from_secs(300),
    )
    .await
}
