//! The outcome vocabulary shared by every broker.

use std::fmt;

/// How the handling of a message ended, in one vocabulary for every broker.
///
/// Each broker crate maps its settle operations onto these (RabbitMQ `basic.ack` is
/// [`Outcome::Ack`], `basic.nack` with requeue is [`Outcome::Requeue`], and so on). The value is
/// recorded on the process span as `mqtrace.outcome`.
///
/// ```
/// assert_eq!(mqtrace::Outcome::DeadLetter.as_str(), "dead_letter");
/// assert!(mqtrace::Outcome::Requeue.is_failure());
/// assert!(!mqtrace::Outcome::Ack.is_failure());
/// ```
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[non_exhaustive]
pub enum Outcome {
    /// Processed and acknowledged (RabbitMQ ack, Kafka commit, Pub/Sub ack).
    Ack,
    /// Acknowledged by the broker on delivery (RabbitMQ `no_ack`, Kafka auto-commit).
    AutoAck,
    /// Handed back to the broker for another delivery now (RabbitMQ nack/reject with requeue,
    /// Pub/Sub nack).
    Requeue,
    /// Scheduled for another attempt after a delay (delay queue, retry topic).
    Retry,
    /// Refused without requeue: discarded, or dead-lettered if the broker is set up for it.
    Reject,
    /// Sent to a dead-letter destination on purpose.
    DeadLetter,
    /// The handler ended without settling the message (it stays unacknowledged until the
    /// broker redelivers it).
    Unsettled,
}

impl Outcome {
    /// The value recorded as `mqtrace.outcome`.
    ///
    /// ```
    /// assert_eq!(mqtrace::Outcome::AutoAck.as_str(), "auto_ack");
    /// ```
    pub const fn as_str(self) -> &'static str {
        match self {
            Self::Ack => "ack",
            Self::AutoAck => "auto_ack",
            Self::Requeue => "requeue",
            Self::Retry => "retry",
            Self::Reject => "reject",
            Self::DeadLetter => "dead_letter",
            Self::Unsettled => "unsettled",
        }
    }

    /// Whether this outcome means the processing did not succeed (the process span's status
    /// is set to error for these).
    ///
    /// ```
    /// assert!(mqtrace::Outcome::Unsettled.is_failure());
    /// ```
    pub const fn is_failure(self) -> bool {
        !matches!(self, Self::Ack | Self::AutoAck)
    }
}

impl fmt::Display for Outcome {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}
