//! The publisher confirm of a traced publish: ends the PRODUCER span at the broker's answer.

use crate::error::error_type;
use lapin::{Confirmation, PublisherConfirm};
use mqtrace::instrument::{Answer, OnAnswer, SendSpan};
use opentelemetry::KeyValue;

/// A [`PublisherConfirm`] that ends the message's PRODUCER span when it resolves: an
/// [`mqtrace::instrument::Answer`] (see there for the behaviour when awaited, polled again, or dropped).
///
/// It resolves to exactly what the wrapped confirm resolves to. Polled again after it resolved,
/// it resolves at once to lapin's own `ErrorKind::FutureCompleted`. Dropped unresolved (in
/// confirm mode), it keeps waiting for the confirm in a background task so the span still ends
/// at the broker's answer; lapin also keeps the confirm for `wait_for_confirms`.
///
/// ```no_run
/// # async fn demo(channel: mqtrace_lapin::TracedChannel) -> lapin::Result<()> {
/// # use lapin::{BasicProperties, options::BasicPublishOptions};
/// let confirm = channel.basic_publish("".into(), "q".into(), BasicPublishOptions::default(), b"x", BasicProperties::default()).await?;
/// println!("trace {:?}", confirm.span_context().map(|sc| sc.trace_id()));
/// match confirm.await? {
///     lapin::Confirmation::Nack(_) => eprintln!("the broker refused the message"),
///     _ => {}
/// }
/// # Ok(()) }
/// ```
pub type TracedPublisherConfirm = Answer<PublisherConfirm, ConfirmAnswer>;

/// How a publisher confirm ends the PRODUCER span: `ack` ends it as sent; a nack, a returned
/// message (`mandatory`) or an error ends it as failed, with `error.type`.
///
/// ```no_run
/// # fn demo(confirm: lapin::PublisherConfirm, span: mqtrace::instrument::SendSpan) {
/// let traced: mqtrace_lapin::TracedPublisherConfirm =
///     mqtrace::instrument::Answer::new(confirm, Some(span), mqtrace_lapin::ConfirmAnswer);
/// # let _ = traced; }
/// ```
#[derive(Debug, Clone, Copy, Default)]
pub struct ConfirmAnswer;

impl OnAnswer<lapin::Result<Confirmation>> for ConfirmAnswer {
    fn on_answer(self, mut span: SendSpan, result: &lapin::Result<Confirmation>) {
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

    fn after_completion() -> lapin::Result<Confirmation> {
        Err(lapin::ErrorKind::FutureCompleted.into())
    }
}
