//! AMQP header tables as mqtrace carriers.

use lapin::types::{AMQPValue, FieldTable, LongString};
use mqtrace::carrier::{HeaderExtractor, Injector, InvalidHeader};

/// Writes trace context into an AMQP header table as `LongString` values.
///
/// `LongString` is what Python's pika/aio-pika consumers (and their OpenTelemetry
/// instrumentation) can read; they fail on a `ByteArray` value.
///
/// ```
/// use lapin::types::{AMQPValue, FieldTable};
/// use mqtrace::carrier::Injector;
/// let mut table = FieldTable::default();
/// mqtrace_lapin::AmqpHeadersMut(&mut table).set("traceparent", "00-...".to_owned());
/// assert!(matches!(table.inner().get("traceparent"), Some(AMQPValue::LongString(_))));
/// ```
#[derive(Debug)]
pub struct AmqpHeadersMut<'a>(pub &'a mut FieldTable);

impl Injector for AmqpHeadersMut<'_> {
    fn set(&mut self, key: &str, value: String) {
        self.0
            .insert(key.into(), AMQPValue::LongString(LongString::from(value)));
    }
}

impl AmqpHeadersMut<'_> {
    /// Takes out of `table` every header `propagation` writes (`traceparent`, `tracestate`,
    /// `baggage` for W3C; any spelling of the name), so a context forwarded with the user's
    /// headers (a handler republishing a received message's table) is replaced whole by the new
    /// one, never mixed with it. Returns whether anything was taken out; the table is untouched
    /// (no copy) when there was nothing to take.
    ///
    /// ```
    /// use lapin::types::{AMQPValue, FieldTable, LongString};
    /// let mut table = FieldTable::default();
    /// table.insert("tracestate".into(), AMQPValue::LongString(LongString::from("a=1")));
    /// table.insert("order".into(), AMQPValue::LongString(LongString::from("o-1")));
    /// assert!(mqtrace_lapin::AmqpHeadersMut::remove_context(&mut table, &mqtrace::Propagation::W3c));
    /// assert!(!table.contains_key("tracestate") && table.contains_key("order"));
    /// ```
    pub fn remove_context(table: &mut FieldTable, propagation: &mqtrace::Propagation) -> bool {
        let is_field = |k: &str| {
            if k.bytes().any(|b| b.is_ascii_uppercase()) {
                propagation.is_field(&k.to_ascii_lowercase())
            } else {
                propagation.is_field(k)
            }
        };
        if !table.inner().keys().any(|k| is_field(k.as_str())) {
            return false;
        }
        let mut inner = table.inner().clone();
        inner.retain(|k, _| !is_field(k.as_str()));
        *table = FieldTable::from(inner);
        true
    }
}

/// Reads trace context from an AMQP header table.
///
/// `LongString`, `ShortString` and `ByteArray` values are read as UTF-8 text; a one-element
/// `FieldArray` of those is read as its element. Any other type, a longer array, or non-UTF-8
/// bytes are reported as an [`InvalidHeader`] so the consumer span records the reason.
///
/// ```
/// use lapin::types::{AMQPValue, ByteArray, FieldTable};
/// use mqtrace::carrier::{HeaderExtractor, InvalidHeader};
/// let mut table = FieldTable::default();
/// table.insert("a".into(), AMQPValue::ByteArray(ByteArray::from(b"text".to_vec())));
/// table.insert("b".into(), AMQPValue::LongLongInt(5));
/// let h = mqtrace_lapin::AmqpHeaders(Some(&table));
/// assert_eq!(h.header("a"), Some(Ok("text")));
/// assert_eq!(h.header("b"), Some(Err(InvalidHeader::WrongType("long-long-int"))));
/// ```
#[derive(Debug, Clone, Copy)]
pub struct AmqpHeaders<'a>(pub Option<&'a FieldTable>);

fn as_text(value: &AMQPValue) -> Result<&str, InvalidHeader> {
    match value {
        AMQPValue::LongString(s) => {
            std::str::from_utf8(s.as_bytes()).map_err(|_| InvalidHeader::NotUtf8)
        }
        AMQPValue::ShortString(s) => Ok(s.as_str()),
        AMQPValue::ByteArray(b) => {
            std::str::from_utf8(b.as_slice()).map_err(|_| InvalidHeader::NotUtf8)
        }
        AMQPValue::FieldArray(a) => match a.as_slice() {
            [one] if !matches!(one, AMQPValue::FieldArray(_)) => as_text(one),
            many => Err(InvalidHeader::Multiple(many.len())),
        },
        other => Err(InvalidHeader::WrongType(type_name(other))),
    }
}

/// The AMQP type name of a value, for error messages.
pub(crate) fn type_name(value: &AMQPValue) -> &'static str {
    match value {
        AMQPValue::Boolean(_) => "boolean",
        AMQPValue::ShortShortInt(_) => "short-short-int",
        AMQPValue::ShortShortUInt(_) => "short-short-uint",
        AMQPValue::ShortInt(_) => "short-int",
        AMQPValue::ShortUInt(_) => "short-uint",
        AMQPValue::LongInt(_) => "long-int",
        AMQPValue::LongUInt(_) => "long-uint",
        AMQPValue::LongLongInt(_) => "long-long-int",
        AMQPValue::Float(_) => "float",
        AMQPValue::Double(_) => "double",
        AMQPValue::DecimalValue(_) => "decimal",
        AMQPValue::ShortString(_) => "short-string",
        AMQPValue::LongString(_) => "long-string",
        AMQPValue::FieldArray(_) => "field-array",
        AMQPValue::Timestamp(_) => "timestamp",
        AMQPValue::FieldTable(_) => "field-table",
        AMQPValue::ByteArray(_) => "byte-array",
        AMQPValue::Void => "void",
    }
}

impl HeaderExtractor for AmqpHeaders<'_> {
    fn header(&self, key: &str) -> Option<Result<&str, InvalidHeader>> {
        self.0?.inner().get(key).map(as_text)
    }

    /// Each element of an array value (several values of one header), else the value.
    fn header_values<'s>(
        &'s self,
        key: &str,
        each: &mut dyn FnMut(Result<&'s str, InvalidHeader>),
    ) {
        match self.0.and_then(|t| t.inner().get(key)) {
            Some(AMQPValue::FieldArray(a)) if !a.as_slice().is_empty() => {
                a.as_slice().iter().for_each(|v| each(as_text(v)))
            }
            Some(v) => each(as_text(v)),
            None => {}
        }
    }

    fn header_keys(&self) -> Vec<&str> {
        self.0
            .map(|t| t.inner().keys().map(|k| k.as_str()).collect())
            .unwrap_or_default()
    }

    fn for_each_key<'s>(&'s self, f: &mut dyn FnMut(&'s str)) {
        self.0
            .iter()
            .flat_map(|t| t.inner().keys())
            .for_each(|k| f(k.as_str()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use lapin::types::{ByteArray, FieldArray, ShortString};

    #[test]
    fn every_text_type_is_read_and_others_are_named() {
        let mut t = FieldTable::default();
        t.insert("long".into(), AMQPValue::LongString("a".into()));
        t.insert(
            "short".into(),
            AMQPValue::ShortString(ShortString::from("b")),
        );
        t.insert(
            "bytes".into(),
            AMQPValue::ByteArray(ByteArray::from(b"c".to_vec())),
        );
        t.insert(
            "one".into(),
            AMQPValue::FieldArray(FieldArray::from(vec![AMQPValue::LongString("d".into())])),
        );
        t.insert(
            "bad".into(),
            AMQPValue::LongString(LongString::from(vec![0xff_u8])),
        );
        t.insert("table".into(), AMQPValue::FieldTable(FieldTable::default()));
        let h = AmqpHeaders(Some(&t));
        assert_eq!(h.header("long"), Some(Ok("a")));
        assert_eq!(h.header("short"), Some(Ok("b")));
        assert_eq!(h.header("bytes"), Some(Ok("c")));
        assert_eq!(h.header("one"), Some(Ok("d")));
        assert_eq!(h.header("bad"), Some(Err(InvalidHeader::NotUtf8)));
        assert_eq!(
            h.header("table"),
            Some(Err(InvalidHeader::WrongType("field-table")))
        );
        assert_eq!(h.header("absent"), None);
        assert_eq!(AmqpHeaders(None).header("long"), None);
    }
}
