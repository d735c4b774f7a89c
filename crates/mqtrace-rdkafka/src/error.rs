//! `error.type` values for rdkafka errors: low-cardinality names.

use rdkafka::error::KafkaError;
use std::borrow::Cow;

/// The `error.type` recorded for an rdkafka error: the name of its Kafka error code (the
/// [`rdkafka::types::RDKafkaErrorCode`] variant, e.g. `MessageSizeTooLarge`,
/// `UnknownTopicOrPartition`, `RebalanceInProgress`), or, for errors without a code, the
/// error's kind (e.g. `Canceled`, `PartitionEOF`).
///
/// ```
/// use rdkafka::error::KafkaError;
/// use rdkafka::types::RDKafkaErrorCode;
/// let e = KafkaError::MessageProduction(RDKafkaErrorCode::MessageSizeTooLarge);
/// assert_eq!(mqtrace_rdkafka::error_type(&e), "MessageSizeTooLarge");
/// assert_eq!(mqtrace_rdkafka::error_type(&KafkaError::Canceled), "Canceled");
/// ```
pub fn error_type(error: &KafkaError) -> Cow<'static, str> {
    if let Some(code) = error.rdkafka_error_code() {
        return Cow::Owned(format!("{code:?}"));
    }
    Cow::Borrowed(match error {
        KafkaError::AdminOp(code) => return Cow::Owned(format!("{code:?}")),
        KafkaError::AdminOpCreation(_) => "AdminOpCreation",
        KafkaError::Canceled => "Canceled",
        KafkaError::ClientConfig(..) => "ClientConfig",
        KafkaError::ClientCreation(_) => "ClientCreation",
        KafkaError::NoMessageReceived => "NoMessageReceived",
        KafkaError::Nul(_) => "Nul",
        KafkaError::PartitionEOF(_) => "PartitionEOF",
        KafkaError::PauseResume(_) => "PauseResume",
        KafkaError::Seek(_) => "Seek",
        KafkaError::Subscription(_) => "Subscription",
        _ => "_OTHER",
    })
}

/// The settle error recorded for a failed commit or offset store.
pub(crate) fn settle_error(error: &KafkaError) -> mqtrace::instrument::SettleError {
    mqtrace::instrument::SettleError::new(error_type(error), error)
}
