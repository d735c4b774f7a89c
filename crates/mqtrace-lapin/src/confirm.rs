//! The publisher confirm of a traced publish: ends the PRODUCER span at the broker's answer.

use crate::error::error_type;
use lapin::{Confirmation, PublisherConfirm};
use mqtrace::instrument::SendSpan;
use opentelemetry::KeyValue;
use std::future::Future;
use std::pin::Pin;
use std::task::{Context, Poll};

/// A [`PublisherConfirm`] that ends the message's PRODUCER span when it resolves.
///
/// It resolves to exactly what the wrapped confirm resolves to. Dropped unresolved (in
/// confirm mode), it keeps waiting for the confirm in a background task so the span still ends
/// at the broker's answer; lapin also keeps the confirm for `wait_for_confirms`.
///
/// ```no_run
/// # async fn demo(channel: mqtrace_lapin::TracedChannel) -> lapin::Result<()> {
/// # use lapin::{BasicProperties, options::BasicPublishOptions};
/// let confirm = channel.basic_publish("".into(), "q".into(), BasicPublishOptions::default(), b"x", BasicProperties::default()).await?;
/// match confirm.await? {
///     lapin::Confirmation::Nack(_) => eprintln!("the broker refused the message"),
///     _ => {}
/// }
/// # Ok(()) }
/// ```
#[derive(Debug)]
#[must_use = "await the confirm to learn the broker's answer"]
pub struct TracedPublisherConfirm {
    inner: Option<PublisherConfirm>,
    span: Option<SendSpan>,
}

impl TracedPublisherConfirm {
    pub(crate) fn new(inner: PublisherConfirm, span: Option<SendSpan>) -> Self {
        Self {
            inner: Some(inner),
            span,
        }
    }

    /// The PRODUCER span's context, if the span is still waiting for the confirm.
    ///
    /// ```no_run
    /// # async fn demo(c: mqtrace_lapin::TracedPublisherConfirm) {
    /// let _ = c.span_context().map(|sc| sc.trace_id());
    /// # }
    /// ```
    pub fn span_context(&self) -> Option<&opentelemetry::trace::SpanContext> {
        self.span.as_ref().map(SendSpan::span_context)
    }
}

fn finish(mut span: SendSpan, result: &lapin::Result<Confirmation>) {
    match result {
        Ok(Confirmation::Ack(None) | Confirmation::NotRequested) => span.end_ok(),
        Ok(Confirmation::Ack(Some(returned)) | Confirmation::Nack(Some(returned))) => {
            let code = i64::from(returned.reply_code);
            let text = returned.reply_text.as_str().to_owned();
            span.record(|| [KeyValue::new("mqtrace.rabbitmq.return.reply_code", code)]);
            span.end_error(
                text.clone(),
                format!("message returned by the broker: {code} {text}"),
            );
        }
        Ok(Confirmation::Nack(None)) => span.end_error("nack", "the broker nacked the message"),
        Err(e) => span.end_error(error_type(e), e),
    }
}

impl Future for TracedPublisherConfirm {
    type Output = lapin::Result<Confirmation>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = &mut *self;
        let Some(inner) = this.inner.as_mut() else {
            return Poll::Ready(Err(lapin::ErrorKind::FutureCompleted.into()));
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

impl Drop for TracedPublisherConfirm {
    fn drop(&mut self) {
        let (Some(inner), Some(span)) = (self.inner.take(), self.span.take()) else {
            return;
        };
        match tokio::runtime::Handle::try_current() {
            Ok(handle) => {
                handle.spawn(async move {
                    let result = inner.await;
                    finish(span, &result);
                });
            }
            // No runtime to wait on: lapin keeps the confirm; the span ends now, marked abandoned.
            Err(_) => drop((inner, span)),
        }
    }
}
