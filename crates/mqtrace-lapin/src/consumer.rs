//! The traced consumer: a `Stream` of traced deliveries.

use crate::delivery::TracedDelivery;
use futures_core::Stream;
use lapin::Consumer;
use lapin::types::ShortString;
use mqtrace::instrument::{Instrumentation, OpenSpans};
use std::pin::Pin;
use std::task::{Context, Poll};

pin_project_lite::pin_project! {
    /// A `lapin::Consumer` whose deliveries each carry a CONSUMER process span.
    ///
    /// Like `lapin::Consumer` it is a `Stream`, of `lapin::Result<TracedDelivery>`. The process
    /// span of a delivery starts when the stream yields it, continues the producer's trace
    /// (see [`mqtrace::ParentPolicy`]) and ends when the delivery is settled or dropped.
    ///
    /// ```no_run
    /// # async fn demo(mut consumer: mqtrace_lapin::TracedConsumer) -> lapin::Result<()> {
    /// use futures_util::StreamExt;
    /// use lapin::options::BasicAckOptions;
    /// while let Some(delivery) = consumer.next().await {
    ///     let delivery = delivery?;
    ///     delivery.ack(BasicAckOptions::default()).await?;
    /// }
    /// # Ok(()) }
    /// ```
    pub struct TracedConsumer {
        #[pin]
        inner: Consumer,
        inst: Instrumentation,
        queue: ShortString,
        no_ack: bool,
        open: OpenSpans,
    }
}

impl std::fmt::Debug for TracedConsumer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TracedConsumer")
            .field("queue", &self.queue)
            .field("no_ack", &self.no_ack)
            .finish_non_exhaustive()
    }
}

impl TracedConsumer {
    /// Wraps a consumer of `queue`; `no_ack` as given to `basic_consume`.
    ///
    /// ```no_run
    /// # fn demo(consumer: lapin::Consumer) {
    /// let inst = mqtrace_lapin::instrumentation(mqtrace::Config::new(), None);
    /// let traced = mqtrace_lapin::TracedConsumer::new(consumer, inst, "orders".into(), false);
    /// # let _ = traced; }
    /// ```
    ///
    /// A consumer wrapped this way keeps its own record of deliveries in flight for
    /// `multiple` acks; one started by [`crate::TracedChannel::basic_consume`] shares its
    /// channel's, which also covers the channel's other consumers (delivery tags are per
    /// channel).
    pub fn new(inner: Consumer, inst: Instrumentation, queue: ShortString, no_ack: bool) -> Self {
        Self::on_channel(inner, inst, queue, no_ack, OpenSpans::new())
    }

    /// A consumer whose deliveries in flight are recorded in `open`, its channel's.
    pub(crate) fn on_channel(
        inner: Consumer,
        inst: Instrumentation,
        queue: ShortString,
        no_ack: bool,
        open: OpenSpans,
    ) -> Self {
        Self {
            inner,
            inst,
            queue,
            no_ack,
            open,
        }
    }

    /// The consumer tag.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_lapin::TracedConsumer) {
    /// println!("{}", c.tag());
    /// # }
    /// ```
    pub fn tag(&self) -> ShortString {
        self.inner.tag()
    }

    /// The queue consumed from.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_lapin::TracedConsumer) {
    /// let queue: &str = c.queue().as_str(); // the queue given to `basic_consume`
    /// # let _ = queue;
    /// # }
    /// ```
    pub fn queue(&self) -> &ShortString {
        &self.queue
    }

    /// The wrapped consumer.
    ///
    /// ```no_run
    /// # fn demo(c: mqtrace_lapin::TracedConsumer) {
    /// let raw: lapin::Consumer = c.into_inner();
    /// # let _ = raw; }
    /// ```
    pub fn into_inner(self) -> Consumer {
        self.inner
    }
}

impl Stream for TracedConsumer {
    type Item = lapin::Result<TracedDelivery>;

    fn poll_next(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        let this = self.project();
        match this.inner.poll_next(cx) {
            Poll::Ready(Some(Ok(delivery))) => Poll::Ready(Some(Ok(TracedDelivery::new_in(
                delivery,
                this.inst,
                crate::PROCESS,
                this.queue.as_str(),
                *this.no_ack,
                Some(this.open),
            )))),
            Poll::Ready(Some(Err(e))) => Poll::Ready(Some(Err(e))),
            Poll::Ready(None) => Poll::Ready(None),
            Poll::Pending => Poll::Pending,
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.inner.size_hint()
    }
}
