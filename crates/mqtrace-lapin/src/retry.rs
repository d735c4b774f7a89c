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
//! fails, the original is requeued instead.

use crate::channel::TracedChannel;
use crate::delivery::TracedDelivery;
use crate::headers::AmqpHeadersMut;
use crate::{ACK, NACK};
use lapin::BasicProperties;
use lapin::options::{BasicNackOptions, BasicPublishOptions, QueueDeclareOptions};
use lapin::types::{AMQPValue, FieldTable, LongString};
use mqtrace::retry::{self, Decision, HandlerError, RetryDelivery, RetryPolicy};
use mqtrace::{Outcome, Traced as _, instrument::Settle};
use opentelemetry::Context;
use opentelemetry::context::FutureExt as _;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The retry and dead-letter queues of one work queue, and the policy that uses them.
///
/// ```no_run
/// # async fn demo(channel: mqtrace_lapin::TracedChannel, mut consumer: mqtrace_lapin::TracedConsumer) -> lapin::Result<()> {
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
    /// ```no_run
    /// # async fn demo(channel: mqtrace_lapin::TracedChannel) -> lapin::Result<()> {
    /// let retries = mqtrace_lapin::RetryQueues::declare(channel, "orders", mqtrace::retry::RetryPolicy::exponential(3)).await?;
    /// let dlq = retries.dead_letter_queue(); // "orders.dlq"
    /// # let _ = dlq;
    /// # Ok(()) }
    /// ```
    pub async fn declare(
        channel: TracedChannel,
        queue: &str,
        policy: RetryPolicy,
    ) -> lapin::Result<Self> {
        let this = Self {
            shared: Arc::new(Shared {
                channel,
                queue: queue.to_owned(),
                declared: Mutex::new(HashSet::new()),
            }),
            policy,
            time_limit: None,
        };
        this.shared
            .channel
            .queue_declare(
                this.dead_letter_queue().as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await?;
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
    /// a delay, or dead-letter (see [`mqtrace::retry::run`] for panics and time limits).
    /// Returns the decision, or the broker's error (the message then stays with RabbitMQ).
    /// The returned future is `Send` when the handler's is, so it can be spawned.
    ///
    /// See the example on [`RetryQueues`].
    pub async fn handle<F>(&self, delivery: TracedDelivery, handler: F) -> lapin::Result<Decision>
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

    /// Publishes a copy of `delivery` to `queue` with its history, inside its process span.
    async fn republish(
        &self,
        delivery: &TracedDelivery,
        queue: &str,
        next_attempt: u32,
        extra: impl FnOnce(BasicProperties, &mut FieldTable) -> BasicProperties,
    ) -> lapin::Result<()> {
        let props = copy_properties(&delivery.properties);
        let mut headers = props.headers().clone().unwrap_or_default();
        retry::write_history(
            &mut AmqpHeadersMut(&mut headers),
            delivery.span_context(),
            delivery.origin(),
            next_attempt,
        );
        let props = extra(props, &mut headers).with_headers(headers);
        let cx: Context = delivery.context().clone();
        let confirm = self
            .channel
            .basic_publish(
                "".into(),
                queue.into(),
                BasicPublishOptions::default(),
                &delivery.data,
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
}

struct Retrying {
    delivery: TracedDelivery,
    queues: Arc<Shared>,
}

impl Retrying {
    /// Requeues the original after a failed republish, so the message is not lost.
    async fn requeue(self, why: String) {
        let _ = self
            .delivery
            .settle_with(
                Settle::new(NACK, Outcome::Requeue).with_reason(why),
                self.delivery.acker.nack(BasicNackOptions {
                    requeue: true,
                    ..Default::default()
                }),
            )
            .await;
    }
}

impl RetryDelivery for Retrying {
    type Error = lapin::Error;

    fn attempt(&self) -> u32 {
        self.delivery.attempt()
    }

    fn context(&self) -> &Context {
        self.delivery.context()
    }

    async fn carry_out(self, decision: &Decision) -> lapin::Result<()> {
        let q = self.queues.clone();
        let (settle, published) = match decision {
            Decision::Ack => (Settle::new(ACK, Outcome::Ack), Ok(())),
            Decision::Retry {
                delay,
                next_attempt,
            } => {
                let published = match q.ensure_retry_queue(*next_attempt).await {
                    Ok(name) => {
                        let ms = delay.as_millis().max(1).to_string();
                        q.republish(&self.delivery, &name, *next_attempt, |p, _| {
                            p.with_expiration(ms.as_str().into())
                        })
                        .await
                    }
                    Err(e) => Err(e),
                };
                let reason = format!("retry in {delay:?} as attempt {next_attempt}");
                (
                    Settle::new(ACK, Outcome::Retry).with_reason(reason),
                    published,
                )
            }
            Decision::DeadLetter { reason } => {
                let attempt = self.delivery.attempt();
                let published = q
                    .republish(&self.delivery, &q.dead_letter_queue(), attempt, |p, h| {
                        h.insert(retry::DEAD_LETTER_REASON_HEADER.into(), long(reason));
                        p
                    })
                    .await;
                (
                    Settle::new(ACK, Outcome::DeadLetter).with_reason(reason.clone()),
                    published,
                )
            }
        };
        if let Err(e) = published {
            self.requeue(format!("could not republish: {e}")).await;
            return Err(e);
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
