//! The traced `BaseProducer` and `ThreadedProducer`: their delivery callbacks end the spans.

use super::{Producing, Record, delivered, failed};
use mqtrace::{
    Config,
    instrument::{Instrumentation, SendSpan},
};
use rdkafka::client::{ClientContext, OAuthToken};
use rdkafka::config::{
    ClientConfig, FromClientConfig, FromClientConfigAndContext, RDKafkaLogLevel,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::{Message, ToBytes};
use rdkafka::producer::{
    BaseProducer, BaseRecord, DefaultProducerContext, DeliveryResult, NoCustomPartitioner,
    Partitioner, ProducerContext, ThreadedProducer,
};
use rdkafka::statistics::Statistics;
use rdkafka::util::{IntoOpaque, Timeout};
use std::error::Error;
use std::ops::Deref;
use std::sync::Arc;

/// The delivery opaque of a traced record: the record's PRODUCER span and your own opaque.
///
/// ```
/// // It appears in types only: `BaseProducer<TracedProducerContext<C>>` carries
/// // `Box<TracedOpaque<C::DeliveryOpaque>>`; traced producers take and return your opaque.
/// fn takes<D>(_: mqtrace_rdkafka::TracedOpaque<D>) {}
/// ```
#[derive(Debug)]
pub struct TracedOpaque<D> {
    span: SendSpan,
    opaque: D,
}

/// A producer context that ends each record's PRODUCER span on its delivery report, then
/// hands the report to the wrapped context (yours, or rdkafka's default).
///
/// Every other callback (`log`, `stats`, `error`, OAuth, the custom partitioner) is the
/// wrapped context's.
///
/// ```
/// let context = mqtrace_rdkafka::TracedProducerContext::new(rdkafka::producer::DefaultProducerContext);
/// let _inner: &rdkafka::producer::DefaultProducerContext = context.inner();
/// ```
#[derive(Debug, Default)]
pub struct TracedProducerContext<C = DefaultProducerContext> {
    inner: C,
}

impl<C> TracedProducerContext<C> {
    /// Wraps `inner`.
    ///
    /// ```
    /// let _ = mqtrace_rdkafka::TracedProducerContext::new(rdkafka::producer::DefaultProducerContext);
    /// ```
    pub fn new(inner: C) -> Self {
        Self { inner }
    }

    /// The wrapped context.
    ///
    /// ```
    /// let c = mqtrace_rdkafka::TracedProducerContext::new(rdkafka::producer::DefaultProducerContext);
    /// let _ = c.inner();
    /// ```
    pub fn inner(&self) -> &C {
        &self.inner
    }
}

impl<C: ClientContext> ClientContext for TracedProducerContext<C> {
    const ENABLE_REFRESH_OAUTH_TOKEN: bool = C::ENABLE_REFRESH_OAUTH_TOKEN;

    fn log(&self, level: RDKafkaLogLevel, fac: &str, log_message: &str) {
        self.inner.log(level, fac, log_message);
    }

    fn stats(&self, statistics: Statistics) {
        self.inner.stats(statistics);
    }

    fn stats_raw(&self, statistics: &[u8]) {
        self.inner.stats_raw(statistics);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.inner.error(error, reason);
    }

    fn generate_oauth_token(
        &self,
        oauthbearer_config: Option<&str>,
    ) -> Result<OAuthToken, Box<dyn Error>> {
        self.inner.generate_oauth_token(oauthbearer_config)
    }
}

impl<C, Part> ProducerContext<Part> for TracedProducerContext<C>
where
    C: ProducerContext<Part>,
    Part: Partitioner,
{
    type DeliveryOpaque = Box<TracedOpaque<C::DeliveryOpaque>>;

    fn delivery(&self, result: &DeliveryResult<'_>, opaque: Self::DeliveryOpaque) {
        let TracedOpaque { span, opaque } = *opaque;
        match result {
            Ok(m) => delivered(span, m.partition(), m.offset()),
            Err((e, m)) => failed(span, e, m.partition()),
        }
        self.inner.delivery(result, opaque);
    }

    fn get_custom_partitioner(&self) -> Option<&Part> {
        self.inner.get_custom_partitioner()
    }
}

type TracedRecord<'a, K, P, D> = BaseRecord<'a, K, P, Box<TracedOpaque<D>>>;

/// Starts the span of `record` and moves your opaque into a traced one.
fn start<'a, K, P, D>(
    producing: &Producing,
    record: BaseRecord<'a, K, P, D>,
) -> TracedRecord<'a, K, P, D>
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: IntoOpaque,
{
    let (span, headers) = producing.start(
        Record {
            topic: record.topic,
            partition: record.partition,
            key: record.key,
            payload: record.payload,
        },
        record.headers,
    );
    BaseRecord {
        topic: record.topic,
        partition: record.partition,
        payload: record.payload,
        key: record.key,
        timestamp: record.timestamp,
        headers,
        delivery_opaque: Box::new(TracedOpaque {
            span,
            opaque: record.delivery_opaque,
        }),
    }
}

/// Ends the span of a record that could not be enqueued and gives back your record.
fn refused<'a, K, P, D>(
    error: KafkaError,
    record: TracedRecord<'a, K, P, D>,
) -> (KafkaError, BaseRecord<'a, K, P, D>)
where
    K: ToBytes + ?Sized,
    P: ToBytes + ?Sized,
    D: IntoOpaque,
{
    let TracedOpaque { span, opaque } = *record.delivery_opaque;
    failed(span, &error, record.partition.unwrap_or(-1));
    let back = BaseRecord {
        topic: record.topic,
        partition: record.partition,
        payload: record.payload,
        key: record.key,
        timestamp: record.timestamp,
        headers: record.headers,
        delivery_opaque: opaque,
    };
    (error, back)
}

/// An rdkafka `BaseProducer` that traces every record it sends.
///
/// `send` takes and returns rdkafka's `BaseRecord` with your delivery opaque; the PRODUCER
/// span `send {topic}` ends in the delivery callback, which runs when you `poll` (as with
/// rdkafka) and then calls your context's `delivery`. Everything else is the `BaseProducer`,
/// through `Deref`.
///
/// ```no_run
/// # fn demo() -> rdkafka::error::KafkaResult<()> {
/// use rdkafka::producer::{BaseRecord, Producer};
/// use std::time::Duration;
/// let producer: mqtrace_rdkafka::TracedBaseProducer = rdkafka::ClientConfig::new()
///     .set("bootstrap.servers", "127.0.0.1:9092")
///     .create()?;
/// producer.send(BaseRecord::to("orders").key("o-1").payload("{}")).map_err(|(e, _)| e)?;
/// producer.flush(Duration::from_secs(5))?; // delivery callbacks run, spans end
/// # Ok(()) }
/// ```
pub struct TracedBaseProducer<C = DefaultProducerContext, Part = NoCustomPartitioner>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    producer: BaseProducer<TracedProducerContext<C>, Part>,
    producing: Producing,
}

impl<C, Part> std::fmt::Debug for TracedBaseProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedBaseProducer")
            .field("client", &self.producing.info)
            .finish_non_exhaustive()
    }
}

impl TracedBaseProducer<DefaultProducerContext> {
    /// Creates a producer configured with `client`, traced with `config`.
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let producer = mqtrace_rdkafka::TracedBaseProducer::create(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092"),
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = producer; Ok(()) }
    /// ```
    pub fn create(client: &ClientConfig, config: Config) -> KafkaResult<Self> {
        Self::create_with_context(client, DefaultProducerContext, config)
    }
}

impl<C, Part> TracedBaseProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    /// Creates a producer with a context of your own (its `delivery` still runs).
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let producer = mqtrace_rdkafka::TracedBaseProducer::create_with_context(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092"),
    ///     rdkafka::producer::DefaultProducerContext,
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = producer; Ok(()) }
    /// ```
    pub fn create_with_context(
        client: &ClientConfig,
        context: C,
        config: Config,
    ) -> KafkaResult<Self> {
        let producer =
            BaseProducer::from_config_and_context(client, TracedProducerContext::new(context))?;
        Ok(Self {
            producer,
            producing: Producing::new(config, client),
        })
    }

    /// The instrumentation this producer's spans come from.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedBaseProducer) {
    /// let _ = p.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.producing.inst
    }

    /// The wrapped producer.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedBaseProducer) {
    /// let raw = p.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> BaseProducer<TracedProducerContext<C>, Part> {
        self.producer
    }

    /// Enqueues a record like `BaseProducer::send`, under a PRODUCER span that ends in the
    /// delivery callback; an enqueue failure ends it at once and gives your record back.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedBaseProducer) {
    /// use rdkafka::producer::BaseRecord;
    /// if let Err((e, _record)) = p.send(BaseRecord::to("orders").key("k").payload("v")) {
    ///     eprintln!("not queued: {e}");
    /// }
    /// p.poll(std::time::Duration::from_millis(100));
    /// # }
    /// ```
    #[allow(clippy::result_large_err, clippy::type_complexity)] // rdkafka's signature
    pub fn send<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    ) -> Result<(), (KafkaError, BaseRecord<'a, K, P, C::DeliveryOpaque>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        crate::client::learn_cluster(
            &self.producing.inst,
            rdkafka::producer::Producer::client(&self.producer),
        );
        self.producer
            .send(start(&self.producing, record))
            .map_err(|(e, r)| refused(e, r))
    }

    /// Polls the producer like `BaseProducer::poll`: delivery callbacks run (and end spans).
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedBaseProducer) {
    /// p.poll(std::time::Duration::from_millis(100));
    /// # }
    /// ```
    pub fn poll<T: Into<Timeout>>(&self, timeout: T) {
        self.producer.poll(timeout);
    }
}

impl<C, Part> Deref for TracedBaseProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    type Target = BaseProducer<TracedProducerContext<C>, Part>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl FromClientConfig for TracedBaseProducer<DefaultProducerContext> {
    /// `ClientConfig::create`: traced with the default [`mqtrace::Config`].
    fn from_config(client: &ClientConfig) -> KafkaResult<Self> {
        Self::create(client, Config::new())
    }
}

impl<C, Part> FromClientConfigAndContext<C> for TracedBaseProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    /// `ClientConfig::create_with_context`: traced with the default [`mqtrace::Config`].
    fn from_config_and_context(client: &ClientConfig, context: C) -> KafkaResult<Self> {
        Self::create_with_context(client, context, Config::new())
    }
}

/// An rdkafka `ThreadedProducer` (a `BaseProducer` polled by its own thread) that traces every
/// record it sends; see [`TracedBaseProducer`]. Cheap to clone, like the rdkafka type.
///
/// ```no_run
/// # fn demo() -> rdkafka::error::KafkaResult<()> {
/// use rdkafka::producer::{BaseRecord, Producer};
/// let producer: mqtrace_rdkafka::TracedThreadedProducer = rdkafka::ClientConfig::new()
///     .set("bootstrap.servers", "127.0.0.1:9092")
///     .create()?;
/// producer.send(BaseRecord::to("orders").key("o-1").payload("{}")).map_err(|(e, _)| e)?;
/// producer.flush(std::time::Duration::from_secs(5))?;
/// # Ok(()) }
/// ```
pub struct TracedThreadedProducer<C = DefaultProducerContext, Part = NoCustomPartitioner>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    producer: ThreadedProducer<TracedProducerContext<C>, Part>,
    producing: Arc<Producing>,
}

impl<C> Clone for TracedThreadedProducer<C>
where
    C: ProducerContext + 'static,
{
    fn clone(&self) -> Self {
        Self {
            producer: self.producer.clone(),
            producing: self.producing.clone(),
        }
    }
}

impl<C, Part> std::fmt::Debug for TracedThreadedProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedThreadedProducer")
            .field("client", &self.producing.info)
            .finish_non_exhaustive()
    }
}

impl TracedThreadedProducer<DefaultProducerContext> {
    /// Creates a producer configured with `client`, traced with `config`.
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let producer = mqtrace_rdkafka::TracedThreadedProducer::create(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092"),
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = producer; Ok(()) }
    /// ```
    pub fn create(client: &ClientConfig, config: Config) -> KafkaResult<Self> {
        Self::create_with_context(client, DefaultProducerContext, config)
    }
}

impl<C, Part> TracedThreadedProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner + Send + Sync + 'static,
{
    /// Creates a producer with a context of your own (its `delivery` still runs).
    ///
    /// ```no_run
    /// # fn demo() -> rdkafka::error::KafkaResult<()> {
    /// let producer = mqtrace_rdkafka::TracedThreadedProducer::create_with_context(
    ///     rdkafka::ClientConfig::new().set("bootstrap.servers", "127.0.0.1:9092"),
    ///     rdkafka::producer::DefaultProducerContext,
    ///     mqtrace::Config::new(),
    /// )?;
    /// # let _ = producer; Ok(()) }
    /// ```
    pub fn create_with_context(
        client: &ClientConfig,
        context: C,
        config: Config,
    ) -> KafkaResult<Self> {
        let producer =
            ThreadedProducer::from_config_and_context(client, TracedProducerContext::new(context))?;
        Ok(Self {
            producer,
            producing: Arc::new(Producing::new(config, client)),
        })
    }
}

impl<C, Part> TracedThreadedProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    /// The instrumentation this producer's spans come from.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedThreadedProducer) {
    /// let _ = p.instrumentation().config();
    /// # }
    /// ```
    pub fn instrumentation(&self) -> &Instrumentation {
        &self.producing.inst
    }

    /// The wrapped producer.
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedThreadedProducer) {
    /// let raw = p.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> ThreadedProducer<TracedProducerContext<C>, Part> {
        self.producer
    }

    /// Enqueues a record like `ThreadedProducer::send`; see [`TracedBaseProducer::send`].
    ///
    /// ```no_run
    /// # fn demo(p: mqtrace_rdkafka::TracedThreadedProducer) {
    /// use rdkafka::producer::BaseRecord;
    /// let _ = p.send(BaseRecord::to("orders").key("k").payload("v"));
    /// # }
    /// ```
    #[allow(clippy::result_large_err, clippy::type_complexity)] // rdkafka's signature
    pub fn send<'a, K, P>(
        &self,
        record: BaseRecord<'a, K, P, C::DeliveryOpaque>,
    ) -> Result<(), (KafkaError, BaseRecord<'a, K, P, C::DeliveryOpaque>)>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        crate::client::learn_cluster(
            &self.producing.inst,
            rdkafka::producer::Producer::client(&self.producer),
        );
        self.producer
            .send(start(&self.producing, record))
            .map_err(|(e, r)| refused(e, r))
    }
}

impl<C, Part> Deref for TracedThreadedProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner,
{
    type Target = ThreadedProducer<TracedProducerContext<C>, Part>;

    fn deref(&self) -> &Self::Target {
        &self.producer
    }
}

impl FromClientConfig for TracedThreadedProducer<DefaultProducerContext> {
    /// `ClientConfig::create`: traced with the default [`mqtrace::Config`].
    fn from_config(client: &ClientConfig) -> KafkaResult<Self> {
        Self::create(client, Config::new())
    }
}

impl<C, Part> FromClientConfigAndContext<C> for TracedThreadedProducer<C, Part>
where
    C: ProducerContext<Part> + 'static,
    Part: Partitioner + Send + Sync + 'static,
{
    /// `ClientConfig::create_with_context`: traced with the default [`mqtrace::Config`].
    fn from_config_and_context(client: &ClientConfig, context: C) -> KafkaResult<Self> {
        Self::create_with_context(client, context, Config::new())
    }
}
