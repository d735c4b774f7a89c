//! The traced `FutureProducer`.

use super::{Producing, Record, delivered, failed};
use futures_channel::oneshot::Canceled;
use mqtrace::{
    Config,
    instrument::{Answer, Instrumentation, OnAnswer, SendSpan},
};
use rdkafka::ClientConfig;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{OwnedMessage, Timestamp, ToBytes};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::{AsyncRuntime, DefaultRuntime, Timeout};
use std::ops::Deref;
use std::sync::Arc;
use std::time::{Duration, Instant};

/// An rdkafka `FutureProducer` that traces every record it sends.
///
/// `send` and `send_result` have rdkafka's signatures and results; everything else (`flush`,
/// transactions, `client()`, ...) is the `FutureProducer` itself, through `Deref` (with
/// `rdkafka::producer::Producer` in scope). Cheap to clone, like the rdkafka type.
///
/// Each record gets a PRODUCER span `send {topic}` (a child of the current context) whose
/// context is added to the record's headers; it ends on the delivery report with
/// `messaging.destination.partition.id` and `messaging.kafka.offset`, or with `error.type`.
///
/// ```no_run
/// # async fn demo() -> rdkafka::error::KafkaResult<()> {
/// use rdkafka::ClientConfig;
/// use rdkafka::producer::FutureRecord;
/// use std::time::Duration;
/// let producer = mqtrace_rdkafka::TracedFutureProducer::create(
///     ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092"),
///     mqtrace::Config::new(),
/// )?;
/// let delivery = producer
///     .send(FutureRecord::to("orders").key("o-1").payload("{}"), Duration::from_secs(5))
///     .await;
/// match delivery {
///     Ok(d) => println!("stored at {}:{}", d.partition, d.offset),
///     Err((e, _message)) => eprintln!("not delivered: {e}"),
/// }
/// # Ok(()) }
/// ```
pub struct TracedFutureProducer<C = DefaultClientContext, R = DefaultRuntime>
where
    C: ClientContext + 'static,
{
    producer: FutureProducer<C, R>,
    producing: Arc<Producing>,
}

impl<C: ClientContext + 'static, R> Clone for TracedFutureProducer<C, R> {
    fn clone(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            producing: self.producing.clone(),
        }
    }
}

impl<C: ClientContext + 'static, R> std::fmt::Debug for TracedFutureProducer<C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedFutureProducer")
            .field("client", &self.producing.info)
            .finish_non_exhaustive()
    }
}

impl TracedFutureProducer<DefaultClientContext> {
    /// Creates a producer configured with `client`, traced with `config` (with rdkafka's
    /// default runtime; for another, use [`Self::create_with_context`]).
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let producer: mqtrace_rdkafka::TracedFutureProducer = mqtrace_rdkafka::TracedFutureProducer::create(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092"),
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = producer; Ok(()) }
    /// ```
    pub fn create(client: &ClientConfig, config: Config) -> KafkaResult<Self> {
        Self::create_with_context(client, DefaultClientContext, config)
    }
}

impl<C, R> TracedFutureProducer<C, R>
where
    C: ClientContext + 'static,
    R: AsyncRuntime,
{
    /// Creates a producer with a client context of your own.
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let producer: mqtrace_rdkafka::TracedFutureProducer = mqtrace_rdkafka::TracedFutureProducer::create_with_context(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092"),
    ///     rdkafka::client::DefaultClientContext,
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = producer; Ok(()) }
    /// ```
    pub fn create_with_context(
        client: &ClientConfig,
        context: C,
        config: Config,
    ) -> KafkaResult<Self> {
        let producer = FutureProducer::from_config_and_context(client, context)?;
        Ok(Self::new(producer, client, config))
    }

    /// Wraps an existing producer; `client` is the configuration it was created with (its
    /// bootstrap servers and client id are recorded on the spans).
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let mut client = rdkafka::ClientConfig::new();
    /// client.set("bootstrap.servers", "127.0.0.1:9092");
    /// let raw: rdkafka::producer::FutureProducer = client.create()?;
    /// let traced = mqtrace_rdkafka::TracedFutureProducer::new(raw, &client, mqtrace::Config::new());
    /// # let _ = traced; Ok(()) }
    /// ```
    pub fn new(producer: FutureProducer<C, R>, client: &ClientConfig, config: Config) -> Self {
        Self {
            producer,
            producing: Arc::new(Producing::new(config, client)),
        }
    }

    /// The instrumentation this producer's spans come from.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedFutureProducer) {
    /// let _ = p.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.producing.inst
    }

    /// The configuration the producer was created with.
    pub(crate) fn client_config(&self) -> &ClientConfig {
        &self.producing.client
    }

    /// The wrapped producer.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedFutureProducer) {
    /// let raw: rdkafka::producer::FutureProducer = p.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> FutureProducer<C, R> {
        self.producer
    }

    fn start<'a, K, P>(
        &self,
        mut record: FutureRecord<'a, K, P>,
    ) -> (SendSpan, FutureRecord<'a, K, P>)
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        crate::client::learn_cluster(
            &self.producing.inst,
            rdkafka::producer::Producer::client(&self.producer),
        );
        let headers = record.headers.take();
        let (span, headers) = self.producing.start(
            Record {
                topic: record.topic,
                partition: record.partition,
                key: record.key,
                payload: record.payload,
            },
            headers,
        );
        record.headers = headers;
        (span, record)
    }

    /// Sends a record like `FutureProducer::send` (retrying while librdkafka's queue is full,
    /// up to `queue_timeout`) and resolves to rdkafka's delivery result.
    ///
    /// The record's headers get the trace context; a header the propagation writes that is
    /// already there (e.g. copied from a consumed message) is replaced, not sent twice. On
    /// failure the returned message carries the headers as they were sent. If this future is
    /// dropped after the record was queued, the span still ends at the delivery report (in a
    /// task of the current Tokio runtime; see [`TracedDeliveryFuture`]).
    ///
    /// ```no_run
    /// # async fn demo(producer: mqtrace_rdkafka::TracedFutureProducer) {
    /// use rdkafka::producer::FutureRecord;
    /// let result = producer
    ///     .send(FutureRecord::<str, str>::to("orders").key("o-1"), std::time::Duration::from_secs(1))
    ///     .await; // a tombstone: messaging.kafka.message.tombstone = true
    /// # let _ = result; }
    /// ```
    pub async fn send<K, P, T>(
        &self,
        record: FutureRecord<'_, K, P>,
        queue_timeout: T,
    ) -> OwnedDeliveryResult
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
        T: Into<Timeout>,
    {
        let started = Instant::now();
        let queue_timeout = queue_timeout.into();
        let (span, mut record) = self.start(record);
        let topic = record.topic;
        let partition = record.partition.unwrap_or(-1);
        let mut span = Some(span);
        loop {
            match self.producer.send_result(record) {
                Ok(delivery) => {
                    let traced = Answer::new(delivery, span.take(), DeliveryAnswer);
                    return match traced.await {
                        Ok(result) => result,
                        // The producer is alive (we hold it), so this does not happen; it is
                        // reported rather than unwrapped.
                        Err(_canceled) => Err((
                            KafkaError::Canceled,
                            OwnedMessage::new(
                                None,
                                None,
                                topic.to_owned(),
                                Timestamp::NotAvailable,
                                partition,
                                0,
                                None,
                            ),
                        )),
                    };
                }
                Err((KafkaError::MessageProduction(RDKafkaErrorCode::QueueFull), back))
                    if match queue_timeout {
                        Timeout::Never => true,
                        Timeout::After(t) => started.elapsed() < t,
                    } =>
                {
                    record = back;
                    R::delay_for(Duration::from_millis(100)).await;
                }
                Err((e, back)) => {
                    if let Some(span) = span.take() {
                        failed(span, &e, partition);
                    }
                    let message = OwnedMessage::new(
                        back.payload.map(|p| p.to_bytes().to_vec()),
                        back.key.map(|k| k.to_bytes().to_vec()),
                        back.topic.to_owned(),
                        back.timestamp
                            .map_or(Timestamp::NotAvailable, Timestamp::CreateTime),
                        partition,
                        0,
                        back.headers,
                    );
                    return Err((e, message));
                }
            }
        }
    }

    /// Enqueues a record like `FutureProducer::send_result`: an enqueue failure (e.g.
    /// `QueueFull`) ends the span at once and returns the record (with the context headers
    /// added; sending it again through a traced producer replaces them); otherwise the
    /// returned future resolves to rdkafka's delivery result and ends the span.
    ///
    /// ```no_run
    /// # async fn demo(producer: mqtrace_rdkafka::TracedFutureProducer) {
    /// use rdkafka::producer::FutureRecord;
    /// match producer.send_result(FutureRecord::to("orders").key("o-1").payload("{}")) {
    ///     Ok(delivery) => { let _ = delivery.await; }
    ///     Err((e, _record)) => eprintln!("not queued: {e}"),
    /// }
    /// # }
    /// ```
    #[allow(clippy::result_large_err, clippy::type_complexity)] // rdkafka's signature
    pub fn send_result<'a, K, P>(
        &self,
        record: FutureRecord<'a, K, P>,
    ) -> Result<TracedDeliveryFuture, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (span, record) = self.start(record);
        let partition = record.partition.unwrap_or(-1);
        match self.producer.send_result(record) {
            Ok(delivery) => Ok(Answer::new(delivery, Some(span), DeliveryAnswer)),
            Err((e, record)) => {
                failed(span, &e, partition);
                Err((e, record))
            }
        }
    }
}

impl<C: ClientContext + 'static, R> Deref for TracedFutureProducer<C, R> {
    type Target = FutureProducer<C, R>;

    fn deref(&self) -> &FutureProducer<C, R> {
        &self.producer
    }
}

impl<R: AsyncRuntime> FromClientConfig for TracedFutureProducer<DefaultClientContext, R> {
    /// `ClientConfig::create`: traced with the default [`mqtrace::Config`] (global tracer
    /// provider and propagator).
    fn from_config(client: &ClientConfig) -> KafkaResult<Self> {
        Self::create_with_context(client, DefaultClientContext, Config::new())
    }
}

impl<C, R> FromClientConfigAndContext<C> for TracedFutureProducer<C, R>
where
    C: ClientContext + 'static,
    R: AsyncRuntime,
{
    /// `ClientConfig::create_with_context`: traced with the default [`mqtrace::Config`].
    fn from_config_and_context(client: &ClientConfig, context: C) -> KafkaResult<Self> {
        Self::create_with_context(client, context, Config::new())
    }
}

/// How a delivery report ends the record's PRODUCER span: delivered (with
/// `messaging.destination.partition.id` and `messaging.kafka.offset`) or failed (with
/// `error.type`, the Kafka error code).
///
/// ```no_run
/// # fn demo(delivery: rdkafka::producer::DeliveryFuture, span: mqtrace::instrument::SendSpan) {
/// let traced: mqtrace_rdkafka::TracedDeliveryFuture =
///     mqtrace::instrument::Answer::new(delivery, Some(span), mqtrace_rdkafka::DeliveryAnswer);
/// # let _ = traced; }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct DeliveryAnswer;

impl OnAnswer<Result<OwnedDeliveryResult, Canceled>> for DeliveryAnswer {
    fn on_answer(self, span: SendSpan, result: &Result<OwnedDeliveryResult, Canceled>) {
        match result {
            Ok(Ok(d)) => delivered(span, d.partition, d.offset),
            Ok(Err((e, message))) => failed(span, e, rdkafka::Message::partition(message)),
            Err(_) => span.end_error(
                "Canceled",
                "the producer was dropped before the delivery report",
            ),
        }
    }

    fn after_completion() -> Result<OwnedDeliveryResult, Canceled> {
        Err(Canceled)
    }
}

/// A `DeliveryFuture` that ends the record's PRODUCER span when the delivery report arrives:
/// an [`mqtrace::instrument::Answer`] (see there for the behaviour when awaited, polled again, or dropped).
///
/// It resolves to exactly what rdkafka's `DeliveryFuture` resolves to. Polled again after it
/// resolved, it resolves at once to `Err(Canceled)` (what rdkafka returns when no report will
/// come). Dropped before that inside a Tokio runtime, it keeps waiting for the report in a
/// background task, so the span still ends at the broker's answer; elsewhere the span ends at
/// the drop, with the event `mqtrace.send.abandoned` and the reason in
/// [`mqtrace::instrument::ABANDON_REASON`].
///
/// ```no_run
/// # async fn demo(producer: mqtrace_rdkafka::TracedFutureProducer) {
/// use rdkafka::producer::FutureRecord;
/// if let Ok(delivery) = producer.send_result(FutureRecord::to("orders").key("k").payload("v")) {
///     println!("trace {:?}", delivery.span_context().map(|sc| sc.trace_id()));
///     match delivery.await {
///         Ok(Ok(d)) => println!("offset {}", d.offset),
///         Ok(Err((e, _))) => eprintln!("failed: {e}"),
///         Err(_) => eprintln!("producer dropped"),
///     }
/// }
/// # }
/// ```
pub type TracedDeliveryFuture = Answer<DeliveryFuture, DeliveryAnswer>;
