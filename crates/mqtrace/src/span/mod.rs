//! The spans mqtrace records, one file each: a message sent ([`send`]), a poll that returned
//! a batch ([`receive`]), the handling of one message ([`process`], with its parent-or-link
//! choice in [`parent`] and the wrapper a broker's message type holds in [`processing`]),
//! and its settlement ([`settle`]; several messages at once in [`bulk`]).
//!
//! Broker crates reach these types through [`crate::instrument`]; applications meet them only
//! as the return values of the broker crates' methods.

pub(crate) mod answer;
pub(crate) mod bulk;
pub(crate) mod parent;
pub(crate) mod process;
pub(crate) mod processing;
pub(crate) mod receive;
pub(crate) mod send;
pub(crate) mod settle;

pub use answer::{ABANDON_REASON, Answer, NO_RUNTIME, OnAnswer, PolledAfterCompletion};
pub use bulk::{Covered, OpenSpans, Registration};
pub use process::ProcessSpan;
pub use processing::Processing;
pub use receive::Receive;
pub use send::{ExistingOnMessage, SendSpan};
pub use settle::{PendingSettle, Settle, SettleError};
