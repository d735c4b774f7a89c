//! `error.type` values for the client's errors: low-cardinality names.

use google_cloud_pubsub::Error;
use google_cloud_pubsub::error::{AckError, PublishError};
use std::borrow::Cow;

/// The `error.type` of a client error: the gRPC status name (`NOT_FOUND`, `UNAVAILABLE`, ...)
/// when the service answered, otherwise what kind of failure it was. The same signature as
/// `mqtrace_lapin::error_type` and `mqtrace_rdkafka::error_type`.
///
/// ```
/// let e = google_cloud_pubsub::Error::io("connection reset");
/// assert_eq!(mqtrace_pubsub::error_type(&e), "io");
/// ```
pub fn error_type(error: &Error) -> Cow<'static, str> {
    Cow::Borrowed(kind(error))
}

fn kind(error: &Error) -> &'static str {
    if let Some(status) = error.status() {
        return status.code.name();
    }
    if error.is_timeout() {
        "timeout"
    } else if error.is_exhausted() {
        "retry_exhausted"
    } else if error.is_connect() {
        "connect"
    } else if error.is_io() {
        "io"
    } else if error.is_authentication() {
        "authentication"
    } else if error.is_transport() {
        "transport"
    } else {
        "_OTHER"
    }
}

/// The `error.type` of a failed publish.
///
/// ```
/// use google_cloud_pubsub::error::PublishError;
/// assert_eq!(mqtrace_pubsub::publish_error_type(&PublishError::OrderingKeyPaused), "ordering_key_paused");
/// ```
pub fn publish_error_type(error: &PublishError) -> Cow<'static, str> {
    Cow::Borrowed(match error {
        PublishError::Rpc(e) => kind(e),
        PublishError::OrderingKeyPaused => "ordering_key_paused",
        PublishError::Shutdown => "shutdown",
        _ => "_OTHER",
    })
}

/// The `error.type` of a failed confirmed ack or nack (exactly-once subscriptions).
///
/// ```
/// use google_cloud_pubsub::error::AckError;
/// assert_eq!(mqtrace_pubsub::ack_error_type(&AckError::LeaseExpired), "lease_expired");
/// ```
pub fn ack_error_type(error: &AckError) -> Cow<'static, str> {
    Cow::Borrowed(match error {
        AckError::LeaseExpired => "lease_expired",
        AckError::Rpc { source, .. } => kind(source),
        AckError::ShutdownBeforeAck => "shutdown_before_ack",
        AckError::Shutdown(_) => "shutdown",
        _ => "_OTHER",
    })
}
