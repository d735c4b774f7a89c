//! A handler's failure ([`HandlerError`], classified by [`ErrorClass`]) and why a decision
//! could not be carried out ([`RetryError`]).

use std::borrow::Cow;
use std::fmt;

/// Whether a failure may go away on another attempt.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ErrorClass {
    /// Worth retrying (a timeout, an unavailable dependency).
    Transient,
    /// Will fail again (invalid input): dead-letter at once.
    Permanent,
}

/// A handler's failure, classified.
///
/// Any `std::error::Error` converts into a transient `HandlerError` with `?`; mark permanent
/// failures explicitly.
///
/// ```
/// use mqtrace::retry::{ErrorClass, HandlerError};
/// fn parse(body: &[u8]) -> Result<u32, HandlerError> {
///     let text = std::str::from_utf8(body).map_err(HandlerError::permanent)?;
///     text.parse::<u32>().map_err(|e| HandlerError::permanent(e).with_error_type("invalid_order"))
/// }
/// assert_eq!(parse(b"x").unwrap_err().class(), ErrorClass::Permanent);
/// let io: HandlerError = std::io::Error::other("db down").into();
/// assert_eq!(io.class(), ErrorClass::Transient);
/// ```
pub struct HandlerError {
    class: ErrorClass,
    error_type: Cow<'static, str>,
    source: Box<dyn std::error::Error + Send + Sync>,
}

impl fmt::Debug for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("HandlerError")
            .field("class", &self.class)
            .field("error_type", &self.error_type)
            .field("source", &self.source.to_string())
            .finish()
    }
}

impl fmt::Display for HandlerError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(&self.source, f)
    }
}

impl<E> From<E> for HandlerError
where
    E: std::error::Error + Send + Sync + 'static,
{
    fn from(e: E) -> Self {
        Self::transient(e)
    }
}

impl HandlerError {
    fn new(class: ErrorClass, source: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Self {
            class,
            error_type: Cow::Borrowed(match class {
                ErrorClass::Transient => "transient",
                ErrorClass::Permanent => "permanent",
            }),
            source,
        }
    }

    /// A failure worth retrying.
    ///
    /// ```
    /// let e = mqtrace::retry::HandlerError::transient("inventory service unavailable");
    /// assert_eq!(e.to_string(), "inventory service unavailable");
    /// ```
    pub fn transient(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorClass::Transient, e.into())
    }

    /// A failure that will not go away: the message is dead-lettered without retrying.
    ///
    /// ```
    /// let e = mqtrace::retry::HandlerError::permanent("order has no items");
    /// assert_eq!(e.class(), mqtrace::retry::ErrorClass::Permanent);
    /// ```
    pub fn permanent(e: impl Into<Box<dyn std::error::Error + Send + Sync>>) -> Self {
        Self::new(ErrorClass::Permanent, e.into())
    }

    /// Sets the low-cardinality `error.type` recorded for this failure (default: the class).
    ///
    /// ```
    /// let e = mqtrace::retry::HandlerError::permanent("bad").with_error_type("validation");
    /// assert_eq!(e.error_type(), "validation");
    /// ```
    pub fn with_error_type(mut self, error_type: impl Into<Cow<'static, str>>) -> Self {
        self.error_type = error_type.into();
        self
    }

    /// The class.
    ///
    /// ```
    /// assert_eq!(mqtrace::retry::HandlerError::transient("x").class(), mqtrace::retry::ErrorClass::Transient);
    /// ```
    pub fn class(&self) -> ErrorClass {
        self.class
    }

    /// The `error.type` value.
    ///
    /// ```
    /// assert_eq!(mqtrace::retry::HandlerError::transient("x").error_type(), "transient");
    /// ```
    pub fn error_type(&self) -> &str {
        &self.error_type
    }

    pub(crate) fn error_type_value(&self) -> Cow<'static, str> {
        self.error_type.clone()
    }

    /// The underlying error.
    ///
    /// ```
    /// let e = mqtrace::retry::HandlerError::transient("x");
    /// assert_eq!(e.source_error().to_string(), "x");
    /// ```
    pub fn source_error(&self) -> &(dyn std::error::Error + Send + Sync + 'static) {
        self.source.as_ref()
    }
}

/// Why a retry type (`RetryQueues`, `RetryTopics`) could not be declared, or could not carry
/// out its decision: the same shape in every broker crate, which names it `RetryError` with
/// its client's error types (`P` for declaring and publishing, `S` for settling).
///
/// ```
/// use mqtrace::retry::RetryError;
/// let e: RetryError<std::io::Error> = RetryError::Copy {
///     destination: "orders.dlq".into(),
///     source: std::io::Error::other("connection reset"),
/// };
/// assert!(e.to_string().contains("requeued"));
/// ```
#[derive(Debug)]
#[non_exhaustive]
pub enum RetryError<P, S = P> {
    /// A name the retry type would use is not valid for the broker (e.g. longer than its
    /// limit); nothing was declared.
    InvalidName {
        /// The name that would have been used.
        name: String,
        /// Why it is not valid.
        reason: String,
    },
    /// Declaring a retry or dead-letter destination failed.
    Declare {
        /// The destination.
        name: String,
        /// What the broker said.
        source: P,
    },
    /// The copy could not be published: the original was requeued (or sought back to), so
    /// the broker delivers it again.
    Copy {
        /// Where the copy was going.
        destination: String,
        /// What the broker said.
        source: P,
    },
    /// The copy (if any) was published but settling the original failed: the message may come
    /// again, and be handled twice.
    Settle(S),
}

impl<P: fmt::Display, S: fmt::Display> fmt::Display for RetryError<P, S> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::InvalidName { name, reason } => write!(f, "invalid name {name:?}: {reason}"),
            Self::Declare { name, source } => write!(f, "could not declare {name}: {source}"),
            Self::Copy {
                destination,
                source,
            } => write!(
                f,
                "could not publish the copy to {destination} ({source}); the original was \
                 requeued and comes again"
            ),
            Self::Settle(e) => write!(
                f,
                "could not settle the original ({e}); the message may come again"
            ),
        }
    }
}

impl<P, S> std::error::Error for RetryError<P, S>
where
    P: std::error::Error + 'static,
    S: std::error::Error + 'static,
{
    fn source(&self) -> Option<&(dyn std::error::Error + 'static)> {
        match self {
            Self::InvalidName { .. } => None,
            Self::Declare { source, .. } | Self::Copy { source, .. } => Some(source),
            Self::Settle(e) => Some(e),
        }
    }
}
