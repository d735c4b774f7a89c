//! Header carriers: how the core reads and writes a broker's message headers.
//!
//! Writing uses OpenTelemetry's own [`Injector`] trait, implemented by each broker crate
//! directly on its header type (no intermediate map). Reading uses [`HeaderExtractor`], which
//! unlike OpenTelemetry's `Extractor` can say why a header present on the message could not
//! be read (not UTF-8, wrong type, several values), so the reason reaches the consumer span.
//!
//! Header names: mqtrace writes the W3C names in lowercase and reads them ignoring ASCII case
//! where the carrier allows it (a `TraceParent` header from a peer): the exact name is looked up
//! first, and only when it is absent are the other keys compared without case
//! ([`header_values_ignore_case`]).

use std::collections::HashMap;
use std::fmt;

pub use opentelemetry::propagation::Injector;

/// Why a header that is present could not be read as text.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub enum InvalidHeader {
    /// The value's bytes are not UTF-8.
    NotUtf8,
    /// The value has a type that cannot carry text (e.g. an AMQP integer); names the type.
    WrongType(&'static str),
    /// The header appears more than once (or is an array) with this many values.
    Multiple(usize),
}

impl fmt::Display for InvalidHeader {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::NotUtf8 => f.write_str("value is not valid UTF-8"),
            Self::WrongType(t) => write!(f, "value has type {t}, expected a string"),
            Self::Multiple(n) => write!(f, "{n} values, expected one"),
        }
    }
}

/// Read access to a message's headers, as text.
///
/// Broker crates implement it on a borrowed view of their header type. Values must be
/// returned without copying where the broker's representation allows it.
///
/// ```
/// use mqtrace::carrier::{HeaderExtractor, InvalidHeader};
/// struct Pairs<'a>(&'a [(&'a str, &'a [u8])]);
/// impl HeaderExtractor for Pairs<'_> {
///     fn header(&self, key: &str) -> Option<Result<&str, InvalidHeader>> {
///         let mut found = self.0.iter().filter(|(k, _)| *k == key);
///         let (_, v) = found.next()?;
///         if found.next().is_some() {
///             return Some(Err(InvalidHeader::Multiple(2)));
///         }
///         Some(std::str::from_utf8(v).map_err(|_| InvalidHeader::NotUtf8))
///     }
///     fn header_keys(&self) -> Vec<&str> {
///         self.0.iter().map(|(k, _)| *k).collect()
///     }
/// }
/// let h = [("traceparent", &b"00-..."[..])];
/// assert_eq!(Pairs(&h).header("traceparent"), Some(Ok("00-...")));
/// ```
pub trait HeaderExtractor {
    /// The value of `key`: `None` when absent, `Some(Err(_))` when present but unreadable.
    fn header(&self, key: &str) -> Option<Result<&str, InvalidHeader>>;

    /// All header keys (used by propagators that look for key prefixes).
    fn header_keys(&self) -> Vec<&str>;

    /// Calls `each` with every value of `key`, in the carrier's order, for carriers where a
    /// key can appear several times (Kafka headers, an AMQP array). The default reports what
    /// [`HeaderExtractor::header`] returns, so a carrier that cannot hold a key twice needs
    /// nothing more.
    ///
    /// ```
    /// use mqtrace::carrier::HeaderExtractor;
    /// let h: Vec<(String, Vec<u8>)> = vec![("k".into(), b"1".to_vec()), ("k".into(), b"2".to_vec())];
    /// let mut seen = Vec::new();
    /// h.header_values("k", &mut |v| seen.push(v.unwrap_or("?").to_owned()));
    /// assert_eq!(seen, ["1", "2"]);
    /// ```
    fn header_values<'a>(
        &'a self,
        key: &str,
        each: &mut dyn FnMut(Result<&'a str, InvalidHeader>),
    ) {
        if let Some(v) = self.header(key) {
            each(v);
        }
    }

    /// Calls `f` with every header key, in order (a repeated key once per occurrence). The
    /// default lists [`HeaderExtractor::header_keys`]; carriers override it to skip that
    /// allocation on the look-up of an absent header.
    ///
    /// ```
    /// use mqtrace::carrier::HeaderExtractor;
    /// let h: Vec<(String, Vec<u8>)> = vec![("a".into(), vec![]), ("B".into(), vec![])];
    /// let mut keys = Vec::new();
    /// h.for_each_key(&mut |k| keys.push(k.to_owned()));
    /// assert_eq!(keys, ["a", "B"]);
    /// ```
    fn for_each_key<'a>(&'a self, f: &mut dyn FnMut(&'a str)) {
        for k in self.header_keys() {
            f(k);
        }
    }
}

/// Calls `each` with every value of header `key`, looked up by its exact name first and, when
/// that is absent, by any key equal to it ignoring ASCII case (W3C: header names are
/// case-insensitive). Returns the number of values seen.
///
/// ```
/// use std::collections::HashMap;
/// use mqtrace::carrier::header_values_ignore_case;
/// let h: HashMap<String, String> = [("TraceParent".to_owned(), "00-x".to_owned())].into();
/// let mut got = None;
/// let n = header_values_ignore_case(&h, "traceparent", &mut |v| got = v.ok());
/// assert_eq!((n, got), (1, Some("00-x")));
/// ```
pub fn header_values_ignore_case<'a>(
    headers: &'a dyn HeaderExtractor,
    key: &str,
    each: &mut dyn FnMut(Result<&'a str, InvalidHeader>),
) -> usize {
    let mut n = 0;
    headers.header_values(key, &mut |v| {
        n += 1;
        each(v);
    });
    if n > 0 {
        return n;
    }
    // Other spellings, each visited once (a repeated key gives all its values at once).
    let mut seen: Vec<&'a str> = Vec::new();
    headers.for_each_key(&mut |k| {
        if k == key || !k.eq_ignore_ascii_case(key) || seen.contains(&k) {
            return;
        }
        seen.push(k);
        headers.header_values(k, &mut |v| {
            n += 1;
            each(v);
        });
    });
    n
}

impl<S: std::hash::BuildHasher> HeaderExtractor for HashMap<String, String, S> {
    fn header(&self, key: &str) -> Option<Result<&str, InvalidHeader>> {
        self.get(key).map(|v| Ok(v.as_str()))
    }

    fn header_keys(&self) -> Vec<&str> {
        self.keys().map(String::as_str).collect()
    }

    fn for_each_key<'a>(&'a self, f: &mut dyn FnMut(&'a str)) {
        self.keys().for_each(|k| f(k));
    }
}

impl HeaderExtractor for Vec<(String, Vec<u8>)> {
    fn header(&self, key: &str) -> Option<Result<&str, InvalidHeader>> {
        let mut values = self.iter().filter(|(k, _)| k == key);
        let (_, first) = values.next()?;
        let extra = values.count();
        if extra > 0 {
            return Some(Err(InvalidHeader::Multiple(extra + 1)));
        }
        Some(std::str::from_utf8(first).map_err(|_| InvalidHeader::NotUtf8))
    }

    fn header_keys(&self) -> Vec<&str> {
        self.iter().map(|(k, _)| k.as_str()).collect()
    }

    fn for_each_key<'a>(&'a self, f: &mut dyn FnMut(&'a str)) {
        self.iter().for_each(|(k, _)| f(k));
    }

    fn header_values<'a>(
        &'a self,
        key: &str,
        each: &mut dyn FnMut(Result<&'a str, InvalidHeader>),
    ) {
        for (_, v) in self.iter().filter(|(k, _)| k == key) {
            each(std::str::from_utf8(v).map_err(|_| InvalidHeader::NotUtf8));
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn byte_pairs_report_duplicates_and_bad_utf8() {
        let h: Vec<(String, Vec<u8>)> = vec![
            ("a".into(), b"x".to_vec()),
            ("a".into(), b"y".to_vec()),
            ("b".into(), vec![0xff, 0xfe]),
            ("c".into(), b"ok".to_vec()),
        ];
        assert_eq!(h.header("a"), Some(Err(InvalidHeader::Multiple(2))));
        assert_eq!(h.header("b"), Some(Err(InvalidHeader::NotUtf8)));
        assert_eq!(h.header("c"), Some(Ok("ok")));
        assert_eq!(h.header("d"), None);
    }
}
