//! Kafka message headers as mqtrace carriers.

use mqtrace::Propagation;
use mqtrace::carrier::{HeaderExtractor, Injector, InvalidHeader};
use rdkafka::message::{BorrowedHeaders, Header, Headers, OwnedHeaders};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::time::SystemTime;

/// Reads trace context from Kafka headers (a consumed message's [`BorrowedHeaders`], or the
/// [`OwnedHeaders`] of a record), without copying.
///
/// A value is read as UTF-8 text. A key that appears more than once, a null value or bytes
/// that are not UTF-8 are reported as an [`InvalidHeader`], so the consumer span records why
/// the context was not used.
///
/// A header whose *key* is not UTF-8 (possible only from a producer that breaks the protocol,
/// which defines keys as strings) cannot be read through rdkafka 0.39, whose `Headers::try_get`
/// unwraps the key's UTF-8 check, and reading bytes through librdkafka directly needs `unsafe`,
/// which this crate forbids. Such a header is skipped on its own: every other header, a valid
/// context among them, is read as usual. rdkafka's panic for it is caught where it happens
/// (one index at a time) and kept from the process's panic hook: the first read installs a
/// hook that forwards every other panic to the hook installed before it, so a hostile
/// producer cannot flood stderr with backtraces.
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

/// One header of a set, read by index.
pub(crate) enum Entry<'h> {
    /// A header with a UTF-8 key.
    Header(Header<'h, &'h [u8]>),
    /// A header whose key is not UTF-8: rdkafka cannot hand it out.
    UnreadableKey,
}

thread_local! {
    /// Set while this thread reads a header through rdkafka, whose panic for a key that is
    /// not UTF-8 is caught on the spot: the quiet hook keeps it from the process's hook.
    static READING_HEADER: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// Installs, once, a panic hook that hands every panic to the hook that was there before,
/// except rdkafka's panic on a header key that is not UTF-8 while this crate reads it (the
/// panic is caught and the header skipped: nothing to report).
fn install_quiet_hook() {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let previous = std::panic::take_hook();
        std::panic::set_hook(Box::new(move |info| {
            if !READING_HEADER.with(std::cell::Cell::get) {
                previous(info);
            }
        }));
    });
}

/// The header at `index`, `None` past the end.
pub(crate) fn entry<H: Headers + ?Sized>(headers: &H, index: usize) -> Option<Entry<'_>> {
    install_quiet_hook();
    let was = READING_HEADER.with(|r| r.replace(true));
    let read = catch_unwind(AssertUnwindSafe(|| headers.try_get(index)));
    READING_HEADER.with(|r| r.set(was));
    match read {
        Ok(Some(h)) => Some(Entry::Header(h)),
        Ok(None) => None,
        Err(_) => Some(Entry::UnreadableKey),
    }
}

/// Every header in order (those with unreadable keys as [`Entry::UnreadableKey`]).
pub(crate) fn entries<H: Headers + ?Sized>(headers: &H) -> impl Iterator<Item = Entry<'_>> {
    let count = headers.count();
    (0..count).map_while(move |i| entry(headers, i))
}

fn find<'h, H: Headers + ?Sized>(
    headers: &'h H,
    key: &str,
) -> Option<Result<&'h str, InvalidHeader>> {
    let mut first: Option<Option<&'h [u8]>> = None;
    let mut count = 0_usize;
    for e in entries(headers) {
        if let Entry::Header(h) = e
            && h.key == key
        {
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
        find(self.0?, key)
    }

    fn for_each_key<'s>(&'s self, f: &mut dyn FnMut(&'s str)) {
        let Some(h) = self.0 else { return };
        for e in entries(h) {
            if let Entry::Header(x) = e {
                f(x.key);
            }
        }
    }

    /// Every header with this key, in order (a key may repeat in Kafka).
    fn header_values<'s>(
        &'s self,
        key: &str,
        each: &mut dyn FnMut(Result<&'s str, InvalidHeader>),
    ) {
        let Some(h) = self.0 else { return };
        for e in entries(h) {
            if let Entry::Header(x) = e
                && x.key == key
            {
                each(x.value.map_or(Err(InvalidHeader::WrongType("null")), |v| {
                    std::str::from_utf8(v).map_err(|_| InvalidHeader::NotUtf8)
                }));
            }
        }
    }

    fn header_keys(&self) -> Vec<&str> {
        let Some(headers) = self.0 else {
            return Vec::new();
        };
        entries(headers)
            .filter_map(|e| match e {
                Entry::Header(h) => Some(h.key),
                Entry::UnreadableKey => None,
            })
            .collect()
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
    mqtrace::retry::attempt(&KafkaHeaders(headers)).unwrap_or(1)
}

/// When a message is due: the [`mqtrace::retry::NOT_BEFORE_HEADER`] (written by [`crate::RetryTopics`] on the
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
/// in `skip`. A header whose key is not UTF-8 cannot be read through rdkafka and is left out.
pub(crate) fn copy_without<H: Headers + ?Sized>(
    headers: Option<&H>,
    skip: impl Fn(&str) -> bool,
) -> OwnedHeaders {
    let Some(headers) = headers else {
        return OwnedHeaders::new();
    };
    let mut out = OwnedHeaders::new_with_capacity(headers.count() + 4);
    for e in entries(headers) {
        if let Entry::Header(h) = e
            && !skip(h.key)
        {
            out = out.insert(Header {
                key: h.key,
                value: h.value,
            });
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

/// Writes trace context straight into a record's headers (the `headers` field of a
/// `FutureRecord` or `BaseRecord`), as UTF-8 bytes: the OpenTelemetry [`Injector`] of Kafka,
/// as `mqtrace_lapin::AmqpHeadersMut(&mut FieldTable)` is AMQP's. The headers
/// are created when there were none; nothing is copied or collected in between.
///
/// Like the AMQP writer it adds what it is given and reads nothing: a header the propagation
/// writes that is already there (e.g. forwarded from a consumed message) must be taken out
/// first with [`KafkaHeadersMut::remove_fields`], or the receiver sees two contexts. The traced
/// producers do both.
///
/// ```
/// use mqtrace::carrier::Injector;
/// use rdkafka::message::{Header, Headers, OwnedHeaders};
/// let mut headers = Some(OwnedHeaders::new()
///     .insert(Header { key: "traceparent", value: Some("00-forwarded") })
///     .insert(Header { key: "bin", value: Some(&[0_u8, 255][..]) }));
/// let mut writer = mqtrace_rdkafka::KafkaHeadersMut(&mut headers);
/// assert!(writer.remove_fields(&mqtrace::Propagation::W3c));
/// writer.set("traceparent", "00-new".to_owned());
/// let h = headers.expect("headers");
/// let all: Vec<_> = h.iter().map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec))).collect();
/// assert_eq!(all, vec![
///     ("bin".to_owned(), Some(vec![0, 255])),
///     ("traceparent".to_owned(), Some(b"00-new".to_vec())),
/// ]);
/// ```
#[derive(Debug)]
pub struct KafkaHeadersMut<'a>(pub &'a mut Option<OwnedHeaders>);

impl Injector for KafkaHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        let headers = self
            .0
            .take()
            .unwrap_or_else(|| OwnedHeaders::new_with_capacity(3));
        *self.0 = Some(headers.insert(Header {
            key,
            value: Some(value.as_bytes()),
        }));
    }
}

impl KafkaHeadersMut<'_> {
    /// Takes out every header `propagation` writes (`traceparent`, `tracestate`, `baggage`
    /// for W3C), keeping the others as they are (order, binary and null values, repeated
    /// keys); the headers are rebuilt only when there is one to take out. Returns whether the
    /// headers are now free of them.
    ///
    /// It returns `false`, and changes nothing, in the one case it cannot do this without
    /// losing a header: there is one to take out, and another header's key is not UTF-8 (it
    /// cannot be copied through rdkafka). Writing a new context then would send two; the
    /// traced producers send such headers unchanged, without their context, and record
    /// `mqtrace.context.error` on the send span.
    ///
    /// See the example on [`KafkaHeadersMut`].
    pub fn remove_fields(&mut self, propagation: &Propagation) -> bool {
        let Some(headers) = self.0.as_ref() else {
            return true;
        };
        let mut conflict = false;
        let mut unreadable = false;
        for e in entries(headers) {
            match e {
                Entry::Header(h) if propagation.is_field(h.key) => conflict = true,
                Entry::Header(_) => {}
                Entry::UnreadableKey => unreadable = true,
            }
        }
        if !conflict {
            return true;
        }
        if unreadable {
            return false;
        }
        let mut out = OwnedHeaders::new_with_capacity(headers.count() + 2);
        for e in entries(headers) {
            if let Entry::Header(h) = e
                && !propagation.is_field(h.key)
            {
                out = out.insert(Header {
                    key: h.key,
                    value: h.value,
                });
            }
        }
        *self.0 = Some(out);
        true
    }
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
    fn the_writer_replaces_every_propagation_field_and_keeps_user_headers() {
        let mut headers = Some(
            OwnedHeaders::new()
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
                    key: "empty",
                    value: Some(""),
                })
                .insert(Header {
                    key: "dup",
                    value: Some("2"),
                }),
        );
        let mut w = KafkaHeadersMut(&mut headers);
        assert!(w.remove_fields(&Propagation::W3c));
        w.set("traceparent", "00-x".to_owned());
        assert_eq!(
            pairs(headers.as_ref().expect("headers")),
            vec![
                ("null".to_owned(), None),
                ("dup".to_owned(), Some(b"1".to_vec())),
                ("empty".to_owned(), Some(Vec::new())),
                ("dup".to_owned(), Some(b"2".to_vec())),
                ("traceparent".to_owned(), Some(b"00-x".to_vec())),
            ]
        );
    }

    #[test]
    fn nothing_written_leaves_headers_alone() {
        let mut none = None;
        assert!(KafkaHeadersMut(&mut none).remove_fields(&Propagation::W3c));
        assert!(none.is_none());
        let mut w = KafkaHeadersMut(&mut none);
        w.set("traceparent", "00-y".to_owned());
        assert_eq!(
            pairs(none.as_ref().expect("created")),
            vec![("traceparent".to_owned(), Some(b"00-y".to_vec()))]
        );
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
        let mut w = OwnedHeadersWriter(copy_without(Some(&h), |k| k == "mqtrace-attempt"));
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
        assert_eq!(copy_without::<OwnedHeaders>(None, |_| false).count(), 0);
    }

    #[test]
    fn not_before_rejects_what_is_not_a_time() {
        let h = |v: &str| {
            OwnedHeaders::new().insert(Header {
                key: mqtrace::retry::NOT_BEFORE_HEADER,
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
