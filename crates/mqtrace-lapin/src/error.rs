//! `error.type` values for lapin errors: low-cardinality names.

use lapin::{Error, ErrorKind};
use std::borrow::Cow;

/// The `error.type` recorded for a lapin error: the error kind's name, or for a protocol
/// error the AMQP reply name (e.g. `NOT_FOUND`, `PRECONDITION_FAILED`). The same signature
/// as `mqtrace_rdkafka::error_type` and `mqtrace_pubsub::error_type`.
///
/// ```
/// let e = lapin::Error::from(lapin::ErrorKind::MissingHeartbeatError);
/// assert_eq!(mqtrace_lapin::error_type(&e), "MissingHeartbeatError");
/// ```
pub fn error_type(error: &Error) -> Cow<'static, str> {
    match error.kind() {
        ErrorKind::ProtocolError(e) => {
            let kind = format!("{:?}", e.kind());
            // e.g. "Soft(NOTFOUND)": keep the inner name.
            kind.rsplit(['(', ')'])
                .find(|s| !s.is_empty())
                .unwrap_or(&kind)
                .to_owned()
                .into()
        }
        other => {
            let name = format!("{other:?}");
            name.split(['(', ' ', '{'])
                .next()
                .unwrap_or(&name)
                .to_owned()
                .into()
        }
    }
}
