//! Kafka message headers as mqtrace carriers.

use mqtrace::Propagation;
use mqtrace::carrier::{HeaderExtractor, Injector, InvalidHeader};
use mqtrace::w3c;
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use std::borrow::Cow;
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::SystemTime;

/// Header carrying when a retried copy is due (see [`mqtrace::retry::NOT_BEFORE_HEADER`]).
pub use mqtrace::retry::NOT_BEFORE_HEADER;

/// Reads trace context from Kafka headers (a consumed message's [`BorrowedHeaders`], or the
/// [`OwnedHeaders`] of a record), without copying.
///
/// A value is read as UTF-8 text. A key that appears more than once, a null value or bytes
/// that are not UTF-8 are reported as an [`InvalidHeader`], so the consumer span records why
/// the context was not used.
///
/// rdkafka panics when it meets a header key that is not UTF-8 (possible only from a producer
/// that breaks the protocol); the panic is caught here and reported as
/// [`InvalidHeader::NotUtf8`] rather than taking the consumer down.
///
/// ```
/// use rdkafka::message::{Header, OwnedHeaders};
/// use mqtrace::carrier::{HeaderExtractor, InvalidHeader};
/// let h = OwnedHeaders::new()
///     .insert(Header { key: "traceparent", value: Some("00-...") })
///     .insert(Header { key: "tenant", value: None::<&[u8]> });
/// let headers = mqtrace_rdkafka::KafkaHeaders(Some(&h));
/// assert_eq!(headers.header("traceparent"), Some(Ok("00-...")));
/// assert_eq!(headers.header("tenant"), Some(Err(InvalidHeader::WrongType("null"))));
/// assert_eq!(headers.header("absent"), None);
/// ```
#[derive(Debug)]
pub struct KafkaHeaders<'a, H: Headers + ?Sized = BorrowedHeaders>(pub Option<&'a H>);

impl<H: Headers + ?Sized> Clone for KafkaHeaders<'_, H> {
    fn clone(&self) -> Self {
        *self
    }
}

impl<H: Headers + ?Sized> Copy for KafkaHeaders<'_, H> {}

fn find<'h, H: Headers + ?Sized>(
    headers: &'h H,
    key: &str,
) -> Option<Result<&'h str, InvalidHeader>> {
    let mut first: Option<Option<&'h [u8]>> = None;
    let mut count = 0_usize;
    for i in 0..headers.count() {
        let Some(h) = headers.try_get(i) else {
            break;
        };
        if h.key == key {
            count += 1;
            if first.is_none() {
                first = Some(h.value);
            }
        }
    }
    match (count, first?) {
        (1, Some(v)) => Some(std::str::from_utf8(v).map_err(|_| InvalidHeader::NotUtf8)),
        (1, None) => Some(Err(InvalidHeader::WrongType("null"))),
        (n, _) => Some(Err(InvalidHeader::Multiple(n))),
    }
}

impl<H: Headers + ?Sized> HeaderExtractor for KafkaHeaders<'_, H> {
    fn header(&self, key: &str) -> Option<Result<&str, InvalidHeader>> {
        let headers = self.0?;
        catch_unwind(AssertUnwindSafe(|| find(headers, key)))
            .unwrap_or(Some(Err(InvalidHeader::NotUtf8)))
    }

    fn header_keys(&self) -> Vec<&str> {
        let Some(headers) = self.0 else {
            return Vec::new();
        };
        catch_unwind(AssertUnwindSafe(|| {
            (0..headers.count())
                .map_while(|i| headers.try_get(i).map(|h| h.key))
                .collect()
        }))
        .unwrap_or_default()
    }
}

/// The delivery attempt of a consumed message: the `mqtrace-attempt` header
/// ([`mqtrace::ATTEMPT_HEADER`], a decimal number, written by whoever re-sends the message to
/// a retry topic) when present and valid, else 1. Kafka itself does not count deliveries.
///
/// ```
/// use rdkafka::message::{Header, OwnedHeaders};
/// let h = OwnedHeaders::new().insert(Header { key: "mqtrace-attempt", value: Some("3") });
/// assert_eq!(mqtrace_rdkafka::delivery_attempt(Some(&h)), 3);
/// assert_eq!(mqtrace_rdkafka::delivery_attempt::<OwnedHeaders>(None), 1);
/// ```
pub fn delivery_attempt<H: Headers + ?Sized>(headers: Option<&H>) -> u32 {
    match KafkaHeaders(headers).header(mqtrace::ATTEMPT_HEADER) {
        Some(Ok(v)) => v
            .trim()
            .parse::<u32>()
            .ok()
            .filter(|n| *n >= 1)
            .unwrap_or(1),
        _ => 1,
    }
}

/// When a message is due: the [`NOT_BEFORE_HEADER`] (written by [`crate::RetryTopics`] on the
/// copies it sends to a retry topic), or `None` when absent or not a valid time.
///
/// ```
/// use rdkafka::message::{Header, OwnedHeaders};
/// use std::time::{Duration, UNIX_EPOCH};
/// let h = OwnedHeaders::new().insert(Header { key: "mqtrace-not-before", value: Some("1700000000000") });
/// assert_eq!(mqtrace_rdkafka::not_before(Some(&h)), Some(UNIX_EPOCH + Duration::from_secs(1_700_000_000)));
/// assert_eq!(mqtrace_rdkafka::not_before::<OwnedHeaders>(None), None);
/// ```
pub fn not_before<H: Headers + ?Sized>(headers: Option<&H>) -> Option<SystemTime> {
    mqtrace::retry::not_before(&KafkaHeaders(headers))
}

/// A copy of `headers` (order, binary and null values, repeated keys kept) without the keys
/// in `skip`. A header whose key is not UTF-8 cannot be read through rdkafka (it panics) and
/// is left out.
pub(crate) fn copy_without<H: Headers + ?Sized>(
    headers: Option<&H>,
    skip: &[&str],
) -> OwnedHeaders {
    let Some(headers) = headers else {
        return OwnedHeaders::new();
    };
    let count = headers.count();
    let mut out = OwnedHeaders::new_with_capacity(count + 4);
    for i in 0..count {
        match catch_unwind(AssertUnwindSafe(|| headers.try_get(i))) {
            Ok(Some(h)) if !skip.contains(&h.key) => {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
            Ok(Some(_)) | Err(_) => {}
            Ok(None) => break,
        }
    }
    out
}

/// Writes headers straight into a record's [`OwnedHeaders`] (an OpenTelemetry-style
/// [`Injector`], for the history of a retried message).
pub(crate) struct OwnedHeadersWriter(pub(crate) OwnedHeaders);

impl Injector for OwnedHeadersWriter {
    fn set(&mut self, key: &str, value: String) {
        let headers = std::mem::replace(&mut self.0, OwnedHeaders::new_with_capacity(0));
        self.0 = headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        });
    }
}

/// Collects the trace context a propagator writes (it is an OpenTelemetry [`Injector`]), then
/// adds it to a record's Kafka headers as UTF-8 bytes with [`KafkaHeadersMut::apply`].
///
/// The user's headers are kept as they are (order, binary and null values, repeated keys),
/// except that a header the propagation writes (`traceparent`, `tracestate`, `baggage` for
/// W3C) that is already there, e.g. copied from a consumed message, is replaced rather than
/// sent twice: a receiver would otherwise see two contexts.
///
/// ```
/// use mqtrace::carrier::Injector;
/// use rdkafka::message::{Header, Headers, OwnedHeaders};
/// let user = OwnedHeaders::new()
///     .insert(Header { key: "traceparent", value: Some("00-forwarded") })
///     .insert(Header { key: "bin", value: Some(&[0_u8, 255][..]) });
/// let mut context = mqtrace_rdkafka::KafkaHeadersMut::new();
/// context.set("traceparent", "00-new".to_owned());
/// let h = context.apply(Some(user), &mqtrace::Propagation::W3c).expect("headers");
/// let all: Vec<_> = h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect();
/// assert_eq!(all, vec![
///     ("bin".to_owned(), Some(vec![0, 255])),
///     ("traceparent".to_owned(), Some(b"00-new".to_vec())),
/// ]);
/// ```
#[derive(Debug, Default)]
pub struct KafkaHeadersMut {
    fields: Vec<(Cow<'static, str>, String)>,
}

/// The W3C header names as static strings (no allocation for the usual keys).
fn static_key(key: &str) -> Cow<'static, str> {
    match key {
        w3c::TRACEPARENT => Cow::Borrowed(w3c::TRACEPARENT),
        w3c::TRACESTATE => Cow::Borrowed(w3c::TRACESTATE),
        w3c::BAGGAGE => Cow::Borrowed(w3c::BAGGAGE),
        other => Cow::Owned(other.to_owned()),
    }
}

impl Injector for KafkaHeadersMut {
    fn set(&mut self, key: &str, value: String) {
        self.fields.push((static_key(key), value));
    }
}

impl KafkaHeadersMut {
    /// An empty collector.
    ///
    /// ```
    /// assert!(mqtrace_rdkafka::KafkaHeadersMut::new().is_empty());
    /// ```
    pub fn new() -> Self {
        Self::default()
    }

    /// Whether nothing was written.
    ///
    /// ```
    /// use mqtrace::carrier::Injector;
    /// let mut c = mqtrace_rdkafka::KafkaHeadersMut::new();
    /// c.set("traceparent", "00-...".to_owned());
    /// assert!(!c.is_empty());
    /// ```
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty()
    }

    /// Adds the collected context to `headers` (created if there were none and there is
    /// something to add), replacing headers that `propagation` writes. With nothing collected,
    /// `headers` are returned untouched.
    ///
    /// See the example on [`KafkaHeadersMut`].
    pub fn apply(
        self,
        headers: Option<OwnedHeaders>,
        propagation: &Propagation,
    ) -> Option<OwnedHeaders> {
        if self.fields.is_empty() {
            return headers;
        }
        let mut out = match headers {
            Some(h) if h.count() > 0 => without_fields(h, propagation),
            Some(h) => h,
            None => OwnedHeaders::new_with_capacity(self.fields.len()),
        };
        for (key, value) in &self.fields {
            out = out.insert(Header {
                key,
                value: Some(value.as_bytes()),
            });
        }
        Some(out)
    }
}

/// `headers` without the keys `propagation` writes; the same object when there are none.
fn without_fields(headers: OwnedHeaders, propagation: &Propagation) -> OwnedHeaders {
    let count = headers.count();
    let conflict = catch_unwind(AssertUnwindSafe(|| {
        (0..count).any(|i| {
            headers
                .try_get(i)
                .is_some_and(|h| propagation.is_field(h.key))
        })
    }))
    .unwrap_or(false);
    if !conflict {
        return headers;
    }
    let mut out = OwnedHeaders::new_with_capacity(count + 2);
    for i in 0..count {
        let Some(h) = headers.try_get(i) else {
            break;
        };
        if !propagation.is_field(h.key) {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
        }
    }
    out
}

/// When a record was sent, from its timestamp: `CreateTime` (the producer's clock, the
/// default) or `LogAppendTime` (the broker's, when the topic is configured so), whichever the
/// record carries; `None` without one or for a negative value.
pub(crate) fn record_time(ts: rdkafka::Timestamp) -> Option<SystemTime> {
    let ms = u64::try_from(ts.to_millis()?).ok()?;
    SystemTime::UNIX_EPOCH.checked_add(std::time::Duration::from_millis(ms))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pairs(h: &OwnedHeaders) -> Vec<(String, Option<Vec<u8>>)> {
        h.iter()
            .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
            .collect()
    }

    #[test]
    fn extractor_reports_duplicates_nulls_and_bad_utf8() {
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "a",
                value: Some("x"),
            })
            .insert(Header {
                key: "a",
                value: Some("y"),
            })
            .insert(Header {
                key: "b",
                value: Some(&[0xff_u8, 0xfe][..]),
            })
            .insert(Header {
                key: "c",
                value: Some(""),
            });
        let x = KafkaHeaders(Some(&h));
        assert_eq!(x.header("a"), Some(Err(InvalidHeader::Multiple(2))));
        assert_eq!(x.header("b"), Some(Err(InvalidHeader::NotUtf8)));
        assert_eq!(x.header("c"), Some(Ok("")));
        assert_eq!(x.header_keys(), vec!["a", "a", "b", "c"]);
        assert_eq!(KafkaHeaders::<OwnedHeaders>(None).header("a"), None);
    }

    #[test]
    fn apply_keeps_user_headers_and_replaces_every_propagation_field() {
        let user = OwnedHeaders::new()
            .insert(Header {
                key: "null",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: "tracestate",
                value: Some("stale=1"),
            })
            .insert(Header {
                key: "dup",
                value: Some("1"),
            })
            .insert(Header {
                key: "dup",
                value: Some("2"),
            });
        let mut c = KafkaHeadersMut::new();
        c.set("traceparent", "00-x".to_owned());
        let out = c.apply(Some(user), &Propagation::W3c).expect("headers");
        assert_eq!(
            pairs(&out),
            vec![
                ("null".to_owned(), None),
                ("dup".to_owned(), Some(b"1".to_vec())),
                ("dup".to_owned(), Some(b"2".to_vec())),
                ("traceparent".to_owned(), Some(b"00-x".to_vec())),
            ]
        );
    }

    #[test]
    fn nothing_collected_leaves_headers_alone() {
        let out = KafkaHeadersMut::new().apply(None, &Propagation::W3c);
        assert!(out.is_none());
    }

    #[test]
    fn copies_skip_the_given_keys_and_keep_everything_else() {
        let h = OwnedHeaders::new()
            .insert(Header {
                key: "mqtrace-attempt",
                value: Some("2"),
            })
            .insert(Header {
                key: "null",
                value: None::<&[u8]>,
            })
            .insert(Header {
                key: "dup",
                value: Some(&[0_u8, 255][..]),
            })
            .insert(Header {
                key: "dup",
                value: Some("2"),
            });
        let mut w = OwnedHeadersWriter(copy_without(Some(&h), &["mqtrace-attempt"]));
        w.set("mqtrace-attempt", "3".to_owned());
        assert_eq!(
            pairs(&w.0),
            vec![
                ("null".to_owned(), None),
                ("dup".to_owned(), Some(vec![0, 255])),
                ("dup".to_owned(), Some(b"2".to_vec())),
                ("mqtrace-attempt".to_owned(), Some(b"3".to_vec())),
            ]
        );
        assert_eq!(copy_without::<OwnedHeaders>(None, &[]).count(), 0);
    }

    #[test]
    fn not_before_rejects_what_is_not_a_time() {
        let h = |v: &str| {
            OwnedHeaders::new().insert(Header {
                key: NOT_BEFORE_HEADER,
                value: Some(v),
            })
        };
        assert_eq!(not_before(Some(&h("x"))), None);
        assert_eq!(not_before(Some(&h("-5"))), None);
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_millis(1_234);
        assert_eq!(
            not_before(Some(&h(&mqtrace::retry::epoch_millis(t).to_string()))),
            Some(t)
        );
        assert!(not_before(Some(&h(&u64::MAX.to_string()))).is_none_or(|t| t > SystemTime::now()));
    }

    #[test]
    fn attempt_header() {
        let h = |v: &str| {
            OwnedHeaders::new().insert(Header {
                key: mqtrace::ATTEMPT_HEADER,
                value: Some(v),
            })
        };
        assert_eq!(delivery_attempt(Some(&h(" 4 "))), 4);
        assert_eq!(delivery_attempt(Some(&h("0"))), 1);
        assert_eq!(delivery_attempt(Some(&h("x"))), 1);
    }
}
