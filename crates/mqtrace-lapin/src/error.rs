//! `error.type` values for lapin errors: low-cardinality names.

use lapin::{Error, ErrorKind};

/// The `error.type` recorded for a lapin error: the error kind's name, or for a protocol
/// error the AMQP reply name (e.g. `NOT_FOUND`, `PRECONDITION_FAILED`).
///
/// ```
/// let e = lapin::Error::from(lapin::ErrorKind::MissingHeartbeatError);
/// assert_eq!(mqtrace_lapin::error_type(&e), "MissingHeartbeatError");
/// ```
pub fn error_type(error: &Error) -> String {
    match error.kind() {
        ErrorKind::ProtocolError(e) => {
            let kind = format!("{:?}", e.kind());
            // e.g. "Soft(NOTFOUND)": keep the inner name.
            kind.rsplit(['(', ')'])
                .find(|s| !s.is_empty())
                .unwrap_or(&kind)
                .to_owned()
        }
        other => {
            let name = format!("{other:?}");
            name.split(['(', ' ', '{'])
                .next()
                .unwrap_or(&name)
                .to_owned()
        }
    }
}
