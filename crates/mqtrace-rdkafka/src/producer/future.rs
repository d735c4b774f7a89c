//! The traced `FutureProducer`.

use super::{Producing, Record, delivered, failed};
use mqtrace::{
    Config,
    instrument::{Instrumentation, SendSpan},
};
use rdkafka::ClientConfig;
use rdkafka::client::{ClientContext, DefaultClientContext};
use rdkafka::config::{FromClientConfig, FromClientConfigAndContext};
use rdkafka::error::{KafkaError, KafkaResult, RDKafkaErrorCode};
use rdkafka::message::{OwnedMessage, Timestamp, ToBytes};
use rdkafka::producer::future_producer::OwnedDeliveryResult;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::util::{AsyncRuntime, DefaultRuntime, Timeout};
use std::future::Future;
use std::marker::PhantomData;
use std::ops::Deref;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
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
    /// task of the runtime `R`).
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
                    let traced = TracedDeliveryFuture::<R>::new(delivery, span.take());
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
    ) -> Result<TracedDeliveryFuture<R>, (KafkaError, FutureRecord<'a, K, P>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let (span, record) = self.start(record);
        let partition = record.partition.unwrap_or(-1);
        match self.producer.send_result(record) {
            Ok(delivery) => Ok(TracedDeliveryFuture::new(delivery, Some(span))),
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

fn finish<E>(span: SendSpan, result: &Result<OwnedDeliveryResult, E>) {
    match result {
        Ok(Ok(d)) => delivered(span, d.partition, d.offset),
        Ok(Err((e, message))) => failed(span, e, rdkafka::Message::partition(message)),
        Err(_) => span.end_error(
            "Canceled",
            "the producer was dropped before the delivery report",
        ),
    }
}

/// A `DeliveryFuture` that ends the record's PRODUCER span when the delivery report arrives.
///
/// It resolves to exactly what rdkafka's `DeliveryFuture` resolves to. Dropped before that
/// inside a Tokio runtime, it keeps waiting for the report in a task of the runtime `R`, so
/// the span still ends at the broker's answer; elsewhere the span ends at the drop, with the
/// event `mqtrace.send.abandoned`.
///
/// ```no_run
/// # async fn demo(producer: mqtrace_rdkafka::TracedFutureProducer) {
/// use rdkafka::producer::FutureRecord;
/// if let Ok(delivery) = producer.send_result(FutureRecord::to("orders").key("k").payload("v")) {
///     match delivery.await {
///         Ok(Ok(d)) => println!("offset {}", d.offset),
///         Ok(Err((e, _))) => eprintln!("failed: {e}"),
///         Err(_) => eprintln!("producer dropped"),
///     }
/// }
/// # }
/// ```
#[must_use = "await the delivery to learn the broker's answer"]
pub struct TracedDeliveryFuture<R: AsyncRuntime = DefaultRuntime> {
    inner: Option<DeliveryFuture>,
    span: Option<SendSpan>,
    runtime: PhantomData<fn() -> R>,
}

impl<R: AsyncRuntime> std::fmt::Debug for TracedDeliveryFuture<R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedDeliveryFuture")
            .field("span", &self.span)
            .finish_non_exhaustive()
    }
}

impl<R: AsyncRuntime> TracedDeliveryFuture<R> {
    fn new(inner: DeliveryFuture, span: Option<SendSpan>) -> Self {
        Self {
            inner: Some(inner),
            span,
            runtime: PhantomData,
        }
    }

    /// The PRODUCER span's context, while it waits for the delivery report.
    ///
    /// ```no_run
    /// # fn demo(d: mqtrace_rdkafka::TracedDeliveryFuture) {
    /// let _ = d.span_context().map(|sc| sc.trace_id());
    /// # }
    /// ```
    pub fn span_context(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.span.as_ref().map(SendSpan::span_context)
    }
}

impl<R: AsyncRuntime> Future for TracedDeliveryFuture<R> {
    type Output = <DeliveryFuture as Future>::Output;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Pending;
        };
        let result = match Pin::new(inner).poll(cx) {
            Poll::Pending => return Poll::Pending,
            Poll::Ready(r) => r,
        };
        this.inner = None;
        if let Some(span) = this.span.take() {
            finish(span, &result);
        }
        Poll::Ready(result)
    }
}

impl<R: AsyncRuntime> Drop for TracedDeliveryFuture<R> {
    fn drop(&mut self) {
        let (Some(inner), Some(span)) = (self.inner.take(), self.span.take()) else {
            return;
        };
        // Spawning needs a running runtime; without one the span ends now, marked abandoned.
        if tokio::runtime::Handle::try_current().is_ok() {
            R::spawn(async move {
                let result = inner.await;
                finish(span, &result);
            });
        }
    }
}
