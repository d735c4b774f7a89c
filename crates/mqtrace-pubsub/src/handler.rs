//! The traced handler: a subscriber `Handler` whose ack, nack or drop is recorded.

use crate::error::ack_error_type;
use crate::googclient::{self, GoogleContext};
use crate::{ACK, NACK, SUBSCRIBE, ack_id, attributes, short_name};
use google_cloud_pubsub::error::AckError;
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::subscriber::handler::{ExactlyOnce, Handler};
use mqtrace::attributes as attr;
use mqtrace::{
    Outcome, Traced,
    instrument::{
        Incoming, Instrumentation, PendingSettle, ProcessSpan, Processing, Settle, SettleError,
    },
};
use opentelemetry::KeyValue;
use std::fmt;
use std::future::Future;

/// Why a handler dropped without ack or nack is recorded as `requeue`.
const DROPPED: &str = "the handler was dropped without ack or nack; the client nacked the message";

/// A subscriber [`Handler`] with the message's CONSUMER span `subscribe {subscription}`.
///
/// The span continues the producer's trace (see [`mqtrace::ParentPolicy`]) and stays open from
/// receipt until the message is settled: [`ack`](Self::ack) (outcome `ack`),
/// [`nack`](Self::nack) (outcome `requeue`: Pub/Sub redelivers it), the confirmed variants for
/// exactly-once subscriptions, or dropping the handler, which makes the client nack the message
/// and is recorded as `requeue` with that reason. Each settles under a CLIENT span
/// `ack {subscription}` / `nack {subscription}`, a child of the process span.
///
/// The accessors every traced message has (`context`, `span_context`, `origin`, `attempt`,
/// `in_span`, `record_error`, `finish`) come from [`mqtrace::Traced`] (in [`crate::prelude`]).
///
/// ```no_run
/// # async fn demo(message: google_cloud_pubsub::model::Message, handler: mqtrace_pubsub::TracedHandler) {
/// use mqtrace_pubsub::prelude::*;
/// let ok = handler.in_span(async { std::str::from_utf8(&message.data).is_ok() }).await;
/// if ok { handler.ack() } else { handler.nack() }
/// # }
/// ```
pub struct TracedHandler {
    // Dropped first: dropping the client's handler is what nacks the message, then `settling`
    // records that nack (if nothing settled the message before).
    handler: Handler,
    settling: Settling,
    /// The subscription's short name, when the handler came from a traced stream (which
    /// shares it): lets `RetryTopics` tell a copy of its retry subscription from the rest.
    pub(crate) subscription: Option<std::sync::Arc<str>>,
    /// Set by `RetryStream` on a copy it held until due (or its limit): not waited for again.
    pub(crate) held: bool,
}

/// The process span and what its settle spans record; records the client's nack when it is
/// dropped unsettled.
struct Settling {
    processing: Processing,
}

impl fmt::Debug for TracedHandler {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("TracedHandler")
            .field("attempt", &self.attempt())
            .field("span_context", self.span_context())
            .finish_non_exhaustive()
    }
}

fn check_ack(result: &Result<(), AckError>) -> Option<SettleError> {
    result
        .as_ref()
        .err()
        .map(|e| SettleError::new(ack_error_type(e), e))
}

impl Settling {
    /// Takes the process span out and starts the settle span of `settle` (with the message's
    /// subscription, ack id and delivery attempt, from the process span), for
    /// an operation reported with [`PendingSettle::finish`]; `None` if already settled.
    fn start(&self, settle: Settle) -> Option<PendingSettle> {
        Some(self.processing.take()?.start_settle(settle))
    }

    /// Settles with `op`, which hands the handler back to the client (it returns at once).
    fn now(&self, settle: Settle, op: impl FnOnce()) {
        let pending = self.start(settle);
        op();
        if let Some(pending) = pending {
            pending.finish(None);
        }
    }
}

impl Drop for Settling {
    fn drop(&mut self) {
        // The client's handler, dropped just before, nacked the message.
        self.now(
            Settle::new(NACK, Outcome::Requeue).with_reason(DROPPED),
            || {},
        );
    }
}

impl TracedHandler {
    /// Starts the process span of `message`, received from `subscription` (full or short name)
    /// with `handler`; `google` says whether `googclient_` attributes are read.
    ///
    /// [`TracedMessageStream`](crate::TracedMessageStream) does this for every message; use it
    /// when you receive messages some other way.
    ///
    /// ```no_run
    /// # fn demo(message: google_cloud_pubsub::model::Message, handler: google_cloud_pubsub::subscriber::handler::Handler) {
    /// let inst = mqtrace_pubsub::instrumentation(mqtrace::Config::new(), None);
    /// let traced = mqtrace_pubsub::TracedHandler::new(
    ///     &message, handler, "projects/p/subscriptions/billing", &inst, mqtrace_pubsub::GoogleContext::default());
    /// # let _ = traced; }
    /// ```
    pub fn new(
        message: &Message,
        handler: Handler,
        subscription: &str,
        inst: &Instrumentation,
        google: GoogleContext,
    ) -> Self {
        let full = subscription;
        let subscription = short_name(subscription);
        let attrs = &message.attributes;
        let delivery_attempt = handler.delivery_attempt();
        let attempt = combined_attempt(
            delivery_attempt,
            attrs
                .get(mqtrace::ATTEMPT_HEADER)
                .filter(|_| inst.believes_history(subscription))
                .map(String::as_str),
        );
        let plain = inst.extract(attrs);
        let extracted = if google.reads() {
            googclient::prefer(attrs, plain)
        } else {
            plain
        };
        let record = |kv: &mut Vec<KeyValue>| {
            if !message.ordering_key.is_empty() {
                kv.push(KeyValue::new(
                    attributes::ORDERING_KEY,
                    message.ordering_key.clone(),
                ));
            }
            if let Some(source) = attrs.get(attributes::DEAD_LETTER_SOURCE_SUBSCRIPTION) {
                kv.push(KeyValue::new(
                    attr::DEAD_LETTER_SOURCE,
                    short_name(source).to_owned(),
                ));
                kv.push(KeyValue::new(
                    attr::DEAD_LETTER_REASON,
                    "max_delivery_attempts",
                ));
            }
        };
        // What its settle spans (ack, nack) record too.
        let settled = |kv: &mut Vec<KeyValue>| {
            if full.contains('/') {
                kv.push(KeyValue::new(attributes::SUBSCRIPTION, full.to_owned()));
            }
            if let Some(id) = ack_id::from_debug(&handler) {
                kv.push(KeyValue::new(attributes::ACK_ID, id));
            }
            if let Some(n) = delivery_attempt {
                kv.push(KeyValue::new(attributes::DELIVERY_ATTEMPT, i64::from(n)));
            }
        };
        let msg = Incoming::new(SUBSCRIBE, subscription, subscription)
            .with_message_id((!message.message_id.is_empty()).then_some(&*message.message_id))
            .with_body_size(message.data.len())
            .with_attempt(attempt)
            .with_headers(attrs)
            .with_subscription(Some(subscription))
            .with_recorded(&record)
            .with_settle_recorded(&settled)
            .with_sent_at(
                message
                    .publish_time
                    .and_then(|t| std::time::SystemTime::try_from(t).ok()),
            );
        let span = inst.start_process(msg, extracted);
        Self {
            handler,
            settling: Settling {
                processing: Processing::new(span),
            },
            subscription: None,
            held: false,
        }
    }

    /// The client's delivery attempt, like [`Handler::delivery_attempt`] (`Some` only on
    /// subscriptions with a dead-letter policy).
    ///
    /// ```no_run
    /// # fn demo(h: mqtrace_pubsub::TracedHandler) {
    /// let _ = h.delivery_attempt();
    /// # }
    /// ```
    pub fn delivery_attempt(&self) -> Option<i32> {
        self.handler.delivery_attempt()
    }

    /// Whether the subscription has exactly-once delivery (acks can be confirmed).
    ///
    /// ```no_run
    /// # fn demo(h: mqtrace_pubsub::TracedHandler) {
    /// let _ = h.is_exactly_once();
    /// # }
    /// ```
    pub fn is_exactly_once(&self) -> bool {
        matches!(self.handler, Handler::ExactlyOnce(_))
    }

    /// Settles an exactly-once handler with `op` and waits for the service's confirmation; other
    /// handlers are settled with `fallback`, which has nothing to confirm.
    async fn settle_confirmed<F>(
        self,
        settle: Settle,
        op: impl FnOnce(ExactlyOnce) -> F,
        fallback: impl FnOnce(Handler),
    ) -> Result<(), AckError>
    where
        F: Future<Output = Result<(), AckError>>,
    {
        let Self {
            handler, settling, ..
        } = self;
        match handler {
            Handler::ExactlyOnce(h) => match settling.start(settle) {
                Some(pending) => {
                    let result = op(h).await;
                    pending.finish(check_ack(&result));
                    result
                }
                None => op(h).await,
            },
            h => {
                settling.now(settle, || fallback(h));
                Ok(())
            }
        }
    }

    /// Acknowledges, like [`Handler::ack`]: outcome `ack`. The client sends the ack in the
    /// background; use [`confirmed_ack`](Self::confirmed_ack) on exactly-once subscriptions to
    /// learn whether it succeeded.
    ///
    /// ```no_run
    /// # fn demo(h: mqtrace_pubsub::TracedHandler) {
    /// h.ack();
    /// # }
    /// ```
    pub fn ack(self) {
        let Self {
            handler, settling, ..
        } = self;
        settling.now(Settle::new(ACK, Outcome::Ack), || handler.ack());
    }

    /// Negatively acknowledges, like [`Handler::nack`]: outcome `requeue` (Pub/Sub redelivers
    /// the message, or dead-letters it once a dead-letter policy's attempts are used up).
    ///
    /// ```no_run
    /// # fn demo(h: mqtrace_pubsub::TracedHandler) {
    /// h.nack();
    /// # }
    /// ```
    pub fn nack(self) {
        let Self {
            handler, settling, ..
        } = self;
        settling.now(Settle::new(NACK, Outcome::Requeue), || handler.nack());
    }

    /// Acknowledges and waits for the service to confirm it (exactly-once subscriptions): the
    /// ack span covers the wait and records a failure (`error.type` such as `lease_expired`),
    /// which also marks the process span as failed. On other subscriptions this is
    /// [`ack`](Self::ack) and returns `Ok(())`, as there is nothing to confirm.
    ///
    /// ```no_run
    /// # async fn demo(h: mqtrace_pubsub::TracedHandler) {
    /// if let Err(e) = h.confirmed_ack().await {
    ///     eprintln!("the ack was not confirmed, the message will come again: {e}");
    /// }
    /// # }
    /// ```
    pub async fn confirmed_ack(self) -> Result<(), AckError> {
        self.settle_confirmed(
            Settle::new(ACK, Outcome::Ack),
            ExactlyOnce::confirmed_ack,
            Handler::ack,
        )
        .await
    }

    /// Negatively acknowledges and waits for the service to confirm it (exactly-once
    /// subscriptions); outcome `requeue`. On other subscriptions this is [`nack`](Self::nack).
    ///
    /// ```no_run
    /// # async fn demo(h: mqtrace_pubsub::TracedHandler) {
    /// let _ = h.confirmed_nack().await;
    /// # }
    /// ```
    pub async fn confirmed_nack(self) -> Result<(), AckError> {
        self.settle_confirmed(
            Settle::new(NACK, Outcome::Requeue),
            ExactlyOnce::confirmed_nack,
            Handler::nack,
        )
        .await
    }

    /// Acks (`ack` true) or nacks with `settle`'s outcome and reason, waiting for the
    /// confirmation on exactly-once subscriptions.
    pub(crate) async fn settle_as(self, settle: Settle, ack: bool) -> Result<(), AckError> {
        if ack {
            self.settle_confirmed(settle, ExactlyOnce::confirmed_ack, Handler::ack)
                .await
        } else {
            self.settle_confirmed(settle, ExactlyOnce::confirmed_nack, Handler::nack)
                .await
        }
    }

    /// The wrapped handler and the process span, for settling by other means (the span ends
    /// when you finish or drop it; dropping the handler nacks the message).
    ///
    /// ```no_run
    /// # fn demo(h: mqtrace_pubsub::TracedHandler) {
    /// let (handler, span) = h.into_parts();
    /// handler.ack();
    /// if let Some(span) = span { span.finish(mqtrace::Outcome::Ack); }
    /// # }
    /// ```
    pub fn into_parts(self) -> (Handler, Option<ProcessSpan>) {
        let Self {
            handler, settling, ..
        } = self;
        let span = settling.processing.take();
        (handler, span)
    }
}

/// The attempt of a delivery: Pub/Sub's count (subscriptions with a dead-letter policy) and the
/// `mqtrace-attempt` a republished copy carries. A copy's own redeliveries add to its attempt.
fn combined_attempt(delivery_attempt: Option<i32>, carried: Option<&str>) -> Option<u32> {
    let counted = delivery_attempt
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| *n > 0);
    let carried = carried.and_then(mqtrace::retry::parse_attempt);
    match (counted, carried) {
        (Some(n), Some(c)) => Some(c.saturating_add(n - 1)),
        (n, c) => n.or(c),
    }
}

impl Traced for TracedHandler {
    /// The process span this handler holds until the message is settled. Its
    /// [`attempt`](Traced::attempt) is 1 when unknown: Pub/Sub counts attempts only on
    /// subscriptions with a dead-letter policy; a copy that [`RetryTopics`](crate::RetryTopics)
    /// published carries its attempt in the `mqtrace-attempt` attribute (when both are there,
    /// Pub/Sub's redeliveries of the copy add to the attempt it carries).
    ///
    /// ```no_run
    /// # fn demo(h: mqtrace_pubsub::TracedHandler) {
    /// use mqtrace_pubsub::prelude::*;
    /// let known = h.processing().attempt().is_some();
    /// println!("attempt {} ({})", h.attempt(), if known { "counted" } else { "assumed" });
    /// # }
    /// ```
    fn processing(&self) -> &Processing {
        &self.settling.processing
    }
}

#[cfg(test)]
mod tests {
    use super::combined_attempt;

    #[test]
    fn attempts_combine_pubsub_counts_with_the_carried_attempt() {
        assert_eq!(combined_attempt(None, None), None);
        assert_eq!(combined_attempt(Some(2), None), Some(2));
        assert_eq!(combined_attempt(None, Some("3")), Some(3));
        assert_eq!(combined_attempt(Some(1), Some(" 3 ")), Some(3));
        assert_eq!(combined_attempt(Some(2), Some("3")), Some(4));
        assert_eq!(combined_attempt(Some(0), Some("x")), None);
        assert_eq!(combined_attempt(Some(-1), Some("0")), None);
    }
}
