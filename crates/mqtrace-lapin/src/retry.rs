//! Retries after a delay and dead-lettering on RabbitMQ, driven by a [`RetryPolicy`].
//!
//! - **retry after a delay**: the message is republished to a delay queue
//!   `{queue}.retry.{attempt}` with a per-message expiration; the delay queue dead-letters it
//!   back to `{queue}` when it expires. The copy carries `mqtrace-attempt`, the previous
//!   attempt's process span and the first delivery's creation context; then the original is
//!   acknowledged.
//! - **dead-letter**: the message is published to `{queue}.dlq` with the reason
//!   (`mqtrace-dead-letter-reason`) and the same history; then the original is acknowledged.
//!
//! The copy is published (and, on a channel in confirm mode, confirmed) *before* the original
//! is acknowledged, so a failure in between gives a duplicate, never a loss; if the publish
//! fails, the original is requeued instead. The flow is the core's ([`mqtrace::retry::run`]);
//! this module supplies its three primitives (publish a copy, nack with requeue, ack).

use crate::channel::TracedChannel;
use crate::delivery::TracedDelivery;
use crate::headers::AmqpHeadersMut;
use crate::{ACK, NACK};
use lapin::BasicProperties;
use lapin::options::{BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use mqtrace::instrument::Processing;
use mqtrace::retry::{
    self, CopyHeaders, CopyTo, Decision, HandlerError, RetryBroker, RetryPolicy, Settlement,
};
use mqtrace::{Outcome, Traced as _, instrument::Settle};
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The retry and dead-letter queues of one work queue, and the policy that uses them.
///
/// ```no_run
/// # async fn demo(channel: mqtrace_lapin::TracedChannel, mut consumer: mqtrace_lapin::TracedConsumer) -> Result<(), Box<dyn std::error::Error>> {
/// use futures_util::StreamExt;
/// use mqtrace::retry::{HandlerError, RetryPolicy};
/// let retries = mqtrace_lapin::RetryQueues::declare(channel, "orders", RetryPolicy::exponential(5)).await?;
/// while let Some(delivery) = consumer.next().await {
///     retries.handle(delivery?, async |d| {
///         let order: u64 = std::str::from_utf8(&d.data)
///             .map_err(HandlerError::permanent)?
///             .parse()
///             .map_err(HandlerError::permanent)?;
///         let _ = order; // transient errors (`?` on any error) are retried
///         Ok(())
///     }).await?;
/// }
/// # Ok(()) }
/// ```
#[derive(Debug, Clone)]
pub struct RetryQueues {
    shared: Arc<Shared>,
    policy: RetryPolicy,
    time_limit: Option<Duration>,
}

/// What the copies of every delivery share: owned, so `handle`'s future is `Send`.
#[derive(Debug)]
struct Shared {
    channel: TracedChannel,
    queue: String,
    declared: Mutex<HashSet<u32>>,
}

fn long(s: &str) -> AMQPValue {
    AMQPValue::LongString(LongString::from(s))
}

/// Why [`RetryQueues`] could not be declared or could not carry out its decision: the core's
/// [`mqtrace::retry::RetryError`] over lapin's error.
///
/// ```
/// let e = mqtrace_lapin::RetryError::InvalidName { name: "q".into(), reason: "too long".into() };
/// assert!(e.to_string().contains("too long"));
/// ```
pub type RetryError = mqtrace::retry::RetryError<lapin::Error>;

/// The longest AMQP queue name (a short string).
const MAX_QUEUE_NAME: usize = 255;

/// The message's properties for a republished copy: everything but `expiration` (set per
/// purpose) and `user_id` (RabbitMQ checks it against the publishing connection's user).
fn copy_properties(p: &BasicProperties) -> BasicProperties {
    let mut out = BasicProperties::default();
    if let Some(v) = p.content_type() {
        out = out.with_content_type(v.clone());
    }
    if let Some(v) = p.content_encoding() {
        out = out.with_content_encoding(v.clone());
    }
    if let Some(v) = p.headers() {
        out = out.with_headers(v.clone());
    }
    if let Some(v) = p.delivery_mode() {
        out = out.with_delivery_mode(*v);
    }
    if let Some(v) = p.priority() {
        out = out.with_priority(*v);
    }
    if let Some(v) = p.correlation_id() {
        out = out.with_correlation_id(v.clone());
    }
    if let Some(v) = p.reply_to() {
        out = out.with_reply_to(v.clone());
    }
    if let Some(v) = p.message_id() {
        out = out.with_message_id(v.clone());
    }
    if let Some(v) = p.timestamp() {
        out = out.with_timestamp(*v);
    }
    if let Some(v) = p.kind() {
        out = out.with_type(v.clone());
    }
    if let Some(v) = p.app_id() {
        out = out.with_app_id(v.clone());
    }
    if let Some(v) = p.cluster_id() {
        out = out.with_cluster_id(v.clone());
    }
    out
}

impl RetryQueues {
    /// Declares `{queue}.dlq` (durable) and prepares the delay queues of `queue` (declared on
    /// first use, one per attempt so short delays never wait behind long ones).
    ///
    /// Returns [`RetryError::InvalidName`](mqtrace::retry::RetryError::InvalidName), having
    /// declared nothing, when a name it would use (`{queue}.retry.{n}` for the policy's last
    /// attempt, `{queue}.dlq`) passes AMQP's 255 bytes; [`RetryError::Declare`] when RabbitMQ
    /// refuses the dead-letter queue.
    ///
    /// ```no_run
    /// # async fn demo(channel: mqtrace_lapin::TracedChannel) -> Result<(), mqtrace_lapin::RetryError> {
    /// let retries = mqtrace_lapin::RetryQueues::declare(channel, "orders", mqtrace::retry::RetryPolicy::exponential(3)).await?;
    /// let dlq = retries.dead_letter_queue(); // "orders.dlq"
    /// # let _ = dlq;
    /// # Ok(()) }
    /// ```
    pub async fn declare(
        channel: TracedChannel,
        queue: &str,
        policy: RetryPolicy,
    ) -> Result<Self, RetryError> {
        let this = Self {
            shared: Arc::new(Shared {
                channel,
                queue: queue.to_owned(),
                declared: Mutex::new(HashSet::new()),
            }),
            policy,
            time_limit: None,
        };
        for name in [
            this.retry_queue(this.policy.max_attempts()),
            this.dead_letter_queue(),
        ] {
            if name.len() > MAX_QUEUE_NAME {
                return Err(RetryError::InvalidName {
                    reason: format!(
                        "{} bytes, over AMQP's {MAX_QUEUE_NAME}-byte limit for a queue name",
                        name.len()
                    ),
                    name,
                });
            }
        }
        let dlq = this.dead_letter_queue();
        this.shared
            .channel
            .queue_declare(
                dlq.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|source| RetryError::Declare {
                name: dlq.clone(),
                source,
            })?;
        // Retried copies come back to `queue` itself; dead-lettered ones wait in `{queue}.dlq`.
        retry::declare_source(queue);
        retry::declare_source(&dlq);
        Ok(this)
    }

    /// Gives each handler run at most `limit`; a handler that takes longer counts as a
    /// transient failure (`error.type = timeout`).
    ///
    /// ```no_run
    /// # async fn demo(r: mqtrace_lapin::RetryQueues) {
    /// let r = r.with_time_limit(std::time::Duration::from_secs(30));
    /// # let _ = r; }
    /// ```
    pub fn with_time_limit(mut self, limit: Duration) -> Self {
        self.time_limit = Some(limit);
        self
    }

    /// The policy.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_lapin::RetryQueues) {
    /// let _ = r.policy().max_attempts();
    /// # }
    /// ```
    pub fn policy(&self) -> &RetryPolicy {
        &self.policy
    }

    /// `{queue}.dlq`.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_lapin::RetryQueues) {
    /// println!("{}", r.dead_letter_queue());
    /// # }
    /// ```
    pub fn dead_letter_queue(&self) -> String {
        self.shared.dead_letter_queue()
    }

    /// `{queue}.retry.{attempt}`: where a message waits before delivery attempt `attempt`.
    ///
    /// ```no_run
    /// # fn demo(r: mqtrace_lapin::RetryQueues) {
    /// let second = r.retry_queue(2); // "orders.retry.2" for the queue "orders"
    /// # let _ = second;
    /// # }
    /// ```
    pub fn retry_queue(&self, attempt: u32) -> String {
        self.shared.retry_queue(attempt)
    }

    /// Runs `handler` for `delivery` and carries out what the policy decides: ack, retry after
    /// a delay, or dead-letter (see [`mqtrace::retry::run`] for panics, time limits, outcomes
    /// and reasons). Returns the decision, or why it could not be carried out
    /// ([`RetryError::Copy`](mqtrace::retry::RetryError::Copy): the original was requeued;
    /// [`RetryError::Settle`](mqtrace::retry::RetryError::Settle): the ack failed). The
    /// returned future is `Send` when the handler's is, so it can be spawned.
    ///
    /// See the example on [`RetryQueues`].
    pub async fn handle<F>(
        &self,
        delivery: TracedDelivery,
        handler: F,
    ) -> Result<Decision, RetryError>
    where
        F: AsyncFnOnce(&TracedDelivery) -> Result<(), HandlerError>,
    {
        let retrying = Retrying {
            delivery,
            queues: self.shared.clone(),
        };
        retry::run(
            retrying,
            &self.policy,
            self.time_limit,
            async |r: &Retrying| handler(&r.delivery).await,
        )
        .await
    }
}

impl Shared {
    fn dead_letter_queue(&self) -> String {
        format!("{}.dlq", self.queue)
    }

    fn retry_queue(&self, attempt: u32) -> String {
        format!("{}.retry.{attempt}", self.queue)
    }

    async fn ensure_retry_queue(&self, attempt: u32) -> lapin::Result<String> {
        let name = self.retry_queue(attempt);
        let known = self
            .declared
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .contains(&attempt);
        if !known {
            let mut args = FieldTable::default();
            args.insert("x-dead-letter-exchange".into(), long(""));
            args.insert("x-dead-letter-routing-key".into(), long(&self.queue));
            self.channel
                .queue_declare(
                    name.as_str().into(),
                    QueueDeclareOptions {
                        durable: true,
                        ..Default::default()
                    },
                    args,
                )
                .await?;
            self.declared
                .lock()
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .insert(attempt);
        }
        Ok(name)
    }
}

/// One delivery on its way through [`retry::run`].
struct Retrying {
    delivery: TracedDelivery,
    queues: Arc<Shared>,
}

impl RetryBroker for Retrying {
    type PublishError = lapin::Error;
    type SettleError = lapin::Error;
    /// A delay queue holds the copy until its expiration.
    const DELAYS_COPIES: bool = true;

    fn processing(&self) -> &Processing {
        self.delivery.processing()
    }

    fn destination(&self, to: &CopyTo<'_>) -> String {
        match to {
            CopyTo::Retry { attempt, .. } => self.queues.retry_queue(*attempt),
            CopyTo::DeadLetter { .. } => self.queues.dead_letter_queue(),
        }
    }

    /// Publishes a copy (properties and headers kept, mqtrace's own headers replaced) to the
    /// delay queue of the attempt (declared on first use, with the delay as expiration) or to
    /// the dead-letter queue, and waits for the confirm.
    async fn publish_copy(&self, to: &CopyTo<'_>, headers: &CopyHeaders) -> lapin::Result<()> {
        let (queue, expiration) = match to {
            CopyTo::Retry { attempt, delay } => (
                self.queues.ensure_retry_queue(*attempt).await?,
                Some(delay.as_millis().max(1).to_string()),
            ),
            CopyTo::DeadLetter { .. } => (self.queues.dead_letter_queue(), None),
        };
        let d = &self.delivery;
        let mut props = copy_properties(&d.properties);
        let mut table = props.headers().clone().unwrap_or_default();
        let propagation = self.queues.channel.instrumentation().config().propagation();
        if table
            .inner()
            .keys()
            .any(|k| retry::left_out_of_copy(k.as_str(), propagation))
        {
            let kept: Vec<_> = table
                .inner()
                .iter()
                .filter(|(k, _)| !retry::left_out_of_copy(k.as_str(), propagation))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            table = FieldTable::default();
            for (k, v) in kept {
                table.insert(k, v);
            }
        }
        headers.write(&mut AmqpHeadersMut(&mut table));
        props = props.with_headers(table);
        if let Some(ms) = expiration {
            props = props.with_expiration(ms.as_str().into());
        }
        let cx: Context = d.context().clone();
        let confirm = self
            .queues
            .channel
            .basic_publish(
                "".into(),
                queue.as_str().into(),
                BasicPublishOptions::default(),
                &d.data,
                props,
            )
            .with_context(cx.clone())
            .await?;
        match confirm.with_context(cx).await? {
            lapin::Confirmation::Nack(_) => Err(lapin::Error::from(std::io::Error::other(
                format!("the broker refused the copy published to {queue}"),
            ))),
            _ => Ok(()),
        }
    }

    /// Nacks the original with requeue, so the message is not lost.
    async fn requeue(self, reason: String) {
        let _ = self
            .delivery
            .settle_with(
                Settle::new(NACK, Outcome::Requeue).with_reason(reason),
                self.delivery.acker.nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                }),
            )
            .await;
    }

    /// Acks the original.
    async fn settle(self, settlement: Settlement) -> lapin::Result<()> {
        let mut settle = Settle::new(ACK, settlement.outcome);
        if let Some(reason) = settlement.reason {
            settle = settle.with_reason(reason);
        }
        self.delivery
            .settle_with(
                settle,
                self.delivery
                    .acker
                    .ack(lapin::options::BasicAckOptions::default()),
            )
            .await
            .map(|_| ())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn assert_send<T: Send>(_: &T) {}

    /// Compiles only if `handle`'s future can be spawned.
    #[allow(dead_code)]
    fn handle_future_is_send(retries: RetryQueues, delivery: TracedDelivery) {
        let fut = async move {
            retries
                .handle(delivery, async |d| {
                    tokio::task::yield_now().await;
                    let _ = d.attempt();
                    Ok(())
                })
                .await
        };
        assert_send(&fut);
    }
}
