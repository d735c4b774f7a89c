//! The traced publisher: a PRODUCER `send` span per message.

use crate::error::publish_error_type;
use crate::googclient::{self, GoogleContext};
use crate::{SEND, attributes, short_name};
use google_cloud_pubsub::client::Publisher;
use google_cloud_pubsub::error::PublishError;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::publisher::PublishFuture;
use mqtrace::attributes as attr;
use mqtrace::carrier::Injector;
use mqtrace::instrument::{Answer, Instrumentation, OnAnswer, Outgoing, SendSpan};
use opentelemetry::KeyValue;
use std::collections::HashMap;
use std::fmt;
use std::ops::Deref;
use std::sync::Arc;

/// A `google_cloud_pubsub` [`Publisher`] that traces what it publishes.
///
/// [`publish`](Self::publish) and [`flush`](Self::flush) have the client's signatures;
/// everything else (`resume_publish`, ...) is the `Publisher` itself, reached through `Deref`.
///
/// ```no_run
/// # async fn demo(publisher: google_cloud_pubsub::client::Publisher) -> Result<(), Box<dyn std::error::Error>> {
/// use google_cloud_pubsub::model::Message;
/// let inst = mqtrace_pubsub::instrumentation(mqtrace::Config::new(), None);
/// let publisher = mqtrace_pubsub::TracedPublisher::new(publisher, "projects/p/topics/orders", inst);
/// let id = publisher
///     .publish(Message::new().set_data("{}").set_attributes([("tenant", "acme")]))
///     .await?; // the send span ends here, with messaging.message.id = id
/// # let _ = id; Ok(()) }
/// ```
#[derive(Clone)]
pub struct TracedPublisher {
    inner: Publisher,
    topic: Arc<str>,
    destination: Arc<str>,
    inst: Instrumentation,
    google: GoogleContext,
}

impl fmt::Debug for TracedPublisher {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedPublisher")
            .field("topic", &self.topic)
            .field("google_context", &self.google)
            .finish_non_exhaustive()
    }
}

/// Collects what the propagator writes, so the attribute hook can read the user's attributes
/// untouched while the context is injected; moved into the attributes afterwards. Four entries
/// (traceparent, tracestate, baggage and one more) live on the stack.
#[derive(Default)]
struct Staged {
    few: [Option<(String, String)>; 4],
    more: Vec<(String, String)>,
}

impl Injector for Staged {
    fn set(&mut self, key: &str, value: String) {
        let entry = (key.to_owned(), value);
        match self.few.iter_mut().find(|e| e.is_none()) {
            Some(slot) => *slot = Some(entry),
            None => self.more.push(entry),
        }
    }
}

impl Staged {
    fn into_attributes(self, attributes: &mut HashMap<String, String>) {
        for (k, v) in self.few.into_iter().flatten().chain(self.more) {
            attributes.insert(k, v);
        }
    }
}

impl TracedPublisher {
    /// Wraps a publisher of `topic` (`projects/{project}/topics/{topic}`, as given to
    /// `Publisher::builder`).
    ///
    /// ```no_run
    /// # async fn demo() -> Result<(), Box<dyn std::error::Error>> {
    /// let topic = "projects/p/topics/orders";
    /// let publisher = google_cloud_pubsub::client::Publisher::builder(topic).build().await?;
    /// let inst = mqtrace_pubsub::instrumentation(mqtrace::Config::new(), Some(("pubsub.googleapis.com", 443)));
    /// let traced = mqtrace_pubsub::TracedPublisher::new(publisher, topic, inst);
    /// # let _ = traced; Ok(()) }
    /// ```
    pub fn new(publisher: Publisher, topic: impl Into<String>, inst: Instrumentation) -> Self {
        let topic: Arc<str> = Arc::from(topic.into());
        let destination = Arc::from(short_name(&topic));
        Self {
            inner: publisher,
            topic,
            destination,
            inst,
            google: GoogleContext::default(),
        }
    }

    /// Sets whether the `googclient_` attributes of Google's client libraries are written
    /// (by default they are).
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_pubsub::TracedPublisher) {
    /// let p = p.with_google_context(mqtrace_pubsub::GoogleContext::Off);
    /// # let _ = p; }
    /// ```
    pub fn with_google_context(mut self, google: GoogleContext) -> Self {
        self.google = google;
        self
    }

    /// The topic's full name.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_pubsub::TracedPublisher) {
    /// let topic: &str = p.topic(); // e.g. "projects/p/topics/orders"
    /// # let _ = topic;
    /// # }
    /// ```
    pub fn topic(&self) -> &str {
        &self.topic
    }

    /// The instrumentation this publisher uses.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_pubsub::TracedPublisher) {
    /// let _ = p.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.inst
    }

    /// The wrapped publisher.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_pubsub::TracedPublisher) {
    /// let raw: google_cloud_pubsub::client::Publisher = p.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> Publisher {
        self.inner
    }

    /// Publishes like [`Publisher::publish`], under a PRODUCER span `send {topic}` (a child of
    /// the current context) whose context is added to the message attributes: through the
    /// configured propagator and as `googclient_traceparent` / `googclient_tracestate`. The
    /// message's own attributes are kept. The span records the ordering key, and the message id
    /// when the returned future resolves; a failed publish is recorded as an error.
    ///
    /// One message, one span: the client batches internally and tells nothing about the
    /// batches it sends, so there is no batch send span to link `create` spans from; the
    /// conventions' producer send span (the message's creation context, ending at the
    /// service's answer) is what this API can record truthfully. A context already in the
    /// attributes is kept or replaced whole per [`mqtrace::ExistingContext`].
    ///
    /// ```no_run
    /// # async fn demo(p: mqtrace_pubsub::TracedPublisher) -> Result<(), Box<dyn std::error::Error>> {
    /// use google_cloud_pubsub::model::Message;
    /// let id = p.publish(Message::new().set_data("a").set_ordering_key("customer-7")).await?;
    /// # let _ = id; Ok(()) }
    /// ```
    pub fn publish(&self, mut msg: Message) -> TracedPublishFuture {
        let mut staged = Staged::default();
        let record = |kv: &mut Vec<KeyValue>| {
            if !msg.ordering_key.is_empty() {
                kv.push(KeyValue::new(
                    attributes::ORDERING_KEY,
                    msg.ordering_key.clone(),
                ));
            }
            if self.topic.contains('/') {
                kv.push(KeyValue::new(attributes::TOPIC, self.topic.clone()));
            }
        };
        // A context already in the attributes is kept or replaced whole, never mixed.
        let existing = self.inst.existing_context(&msg.attributes);
        let span = self.inst.start_send(
            Outgoing::new(SEND, &self.destination)
                .with_body_size(msg.data.len())
                .with_headers(&msg.attributes)
                .with_existing_context(&existing)
                .with_recorded(&record),
            &mut staged,
        );
        if !existing.keeps() {
            let propagation = self.inst.config().propagation();
            if msg
                .attributes
                .keys()
                .any(|k| propagation.is_field(&k.to_ascii_lowercase()) || googclient::is_field(k))
            {
                msg.attributes.retain(|k, _| {
                    !propagation.is_field(&k.to_ascii_lowercase()) && !googclient::is_field(k)
                });
            }
        }
        staged.into_attributes(&mut msg.attributes);
        if self.google.writes() && !existing.keeps() {
            googclient::inject(span.span_context(), &mut msg.attributes);
        }
        Answer::new(
            self.inner.publish(msg),
            Some(span),
            PublishAnswer { _private: () },
        )
    }

    /// Sends every pending message now, like [`Publisher::flush`]. It records no span of its
    /// own: each message's `send` span already covers its publish up to the service's answer.
    ///
    /// ```no_run
    /// # async fn demo(p: mqtrace_pubsub::TracedPublisher) {
    /// use google_cloud_pubsub::model::Message;
    /// let a = p.publish(Message::new().set_data("a"));
    /// let b = p.publish(Message::new().set_data("b"));
    /// p.flush().await;
    /// let _ = (a.await, b.await); // two `send orders` spans
    /// # }
    /// ```
    pub async fn flush(&self) {
        self.inner.flush().await;
    }
}

impl Deref for TracedPublisher {
    type Target = Publisher;

    fn deref(&self) -> &Publisher {
        &self.inner
    }
}

/// The result of a traced publish: the server-assigned message id, like [`PublishFuture`],
/// ending the message's send span when it resolves: an [`mqtrace::instrument::Answer`] (see there for
/// the behaviour when awaited, polled again, or dropped).
///
/// Polled again after it resolved, it resolves at once to
/// `PublishError::Rpc` with a non-retryable (`binding`) error whose source is
/// [`mqtrace::instrument::PolledAfterCompletion`] (the client has no "already completed" error; this one
/// is not mistaken for a shutdown and does not invite a second publish). Dropped before it
/// resolves inside a Tokio runtime, it keeps waiting in a background task so the span still
/// ends at the service's answer; elsewhere the span ends at the drop, marked abandoned.
///
/// ```no_run
/// # async fn demo(p: mqtrace_pubsub::TracedPublisher) {
/// let f = p.publish(google_cloud_pubsub::model::Message::new().set_data("x"));
/// println!("trace {}", f.span_context().map(|sc| sc.trace_id().to_string()).unwrap_or_default());
/// match f.await {
///     Ok(id) => println!("published {id}"),
///     Err(e) => eprintln!("publish failed: {e}"),
/// }
/// # }
/// ```
pub type TracedPublishFuture = Answer<PublishFuture, PublishAnswer>;

/// How a publish result ends the message's send span (with `messaging.message.id`, or
/// `error.type`). Made by [`TracedPublisher::publish`].
pub struct PublishAnswer {
    _private: (),
}

impl fmt::Debug for PublishAnswer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("PublishAnswer").finish_non_exhaustive()
    }
}

impl OnAnswer<Result<String, PublishError>> for PublishAnswer {
    fn on_answer(self, mut span: SendSpan, result: &Result<String, PublishError>) {
        match result {
            Ok(id) => {
                span.record(|| [KeyValue::new(attr::MESSAGING_MESSAGE_ID, id.clone())]);
                span.end_ok();
            }
            Err(e) => span.end_error(publish_error_type(e), e),
        }
    }

    fn after_completion() -> Result<String, PublishError> {
        Err(PublishError::Rpc(Arc::new(
            google_cloud_pubsub::Error::binding(mqtrace::instrument::PolledAfterCompletion),
        )))
    }

    fn abandon(self, span: SendSpan) {
        drop(span);
    }
}
