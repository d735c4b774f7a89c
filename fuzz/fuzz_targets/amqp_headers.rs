//! AMQP header tables from a hostile publisher: a `FieldTable` of every value type, nested
//! tables and arrays (depth bounded: lapin's own parser, not mqtrace, is what a deep table
//! overflows), built from the input. mqtrace-lapin's extraction, the delivery history
//! (`x-death`, `x-delivery-count`, `mqtrace-attempt`) and the core's history reader never
//! panic and stay bounded; injecting a new context changes only the propagation keys.
#![no_main]

use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use libfuzzer_sys::fuzz_target;
use mqtrace::Propagation;
use mqtrace_lapin::{AmqpHeaders, AmqpHeadersMut, DeliveryHistory, MAX_X_DEATH_VALUE};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};

const KEYS: [&str; 16] = [
    "traceparent",
    "tracestate",
    "baggage",
    "TraceParent",
    "x-death",
    "x-delivery-count",
    "mqtrace-attempt",
    "mqtrace-previous-attempt",
    "mqtrace-origin",
    "mqtrace-dead-letter-reason",
    "mqtrace-not-before",
    "reason",
    "queue",
    "count",
    "x-first-death-reason",
    "user",
];

struct Input<'a>(&'a [u8]);

impl Input<'_> {
    fn byte(&mut self) -> u8 {
        let (b, rest) = self.0.split_first().map_or((0, &[][..]), |(b, r)| (*b, r));
        self.0 = rest;
        b
    }
    fn bytes(&mut self) -> Vec<u8> {
        let n = usize::from(self.byte()).min(self.0.len());
        let (b, rest) = self.0.split_at(n);
        self.0 = rest;
        b.to_vec()
    }
    fn int<const N: usize>(&mut self) -> [u8; N] {
        std::array::from_fn(|_| self.byte())
    }
    fn key(&mut self) -> ShortString {
        let k = self.byte();
        if usize::from(k) < KEYS.len() * 12 {
            KEYS[usize::from(k) % KEYS.len()].into()
        } else {
            // At most 255 bytes after lossy decoding's growth: cut on a char boundary.
            let mut s = String::from_utf8_lossy(&self.bytes()).into_owned();
            while s.len() > 255 {
                s.pop();
            }
            s.into()
        }
    }
    fn value(&mut self, depth: u32) -> AMQPValue {
        let tag = self.byte() % if depth >= 8 { 16 } else { 18 };
        match tag {
            0 => AMQPValue::Boolean(self.byte() & 1 == 1),
            1 => AMQPValue::ShortShortInt(i8::from_le_bytes(self.int())),
            2 => AMQPValue::ShortShortUInt(self.byte()),
            3 => AMQPValue::ShortInt(i16::from_le_bytes(self.int())),
            4 => AMQPValue::ShortUInt(u16::from_le_bytes(self.int())),
            5 => AMQPValue::LongInt(i32::from_le_bytes(self.int())),
            6 => AMQPValue::LongUInt(u32::from_le_bytes(self.int())),
            7 => AMQPValue::LongLongInt(i64::from_le_bytes(self.int())),
            8 => AMQPValue::Float(f32::from_le_bytes(self.int())),
            9 => AMQPValue::Double(f64::from_le_bytes(self.int())),
            10 => AMQPValue::DecimalValue(DecimalValue {
                scale: self.byte(),
                value: u32::from_le_bytes(self.int()),
            }),
            11 => {
                let mut s = String::from_utf8_lossy(&self.bytes()).into_owned();
                while s.len() > 255 {
                    s.pop();
                }
                AMQPValue::ShortString(s.into())
            }
            12 => {
                // Long strings may be longer than one length byte says: repeat the chunk.
                let chunk = self.bytes();
                let times = usize::from(self.byte() % 8) + 1;
                AMQPValue::LongString(LongString::from(chunk.repeat(times)))
            }
            13 => AMQPValue::Timestamp(u64::from_le_bytes(self.int())),
            14 => AMQPValue::ByteArray(ByteArray::from(self.bytes())),
            15 => AMQPValue::Void,
            16 => {
                let n = self.byte() % 6;
                AMQPValue::FieldArray(FieldArray::from(
                    (0..n).map(|_| self.value(depth + 1)).collect::<Vec<_>>(),
                ))
            }
            _ => AMQPValue::FieldTable(self.table(depth + 1)),
        }
    }
    fn table(&mut self, depth: u32) -> FieldTable {
        let mut t = FieldTable::default();
        let n = self.byte() % 12;
        for _ in 0..n {
            let k = self.key();
            let v = self.value(depth);
            t.insert(k, v);
        }
        t
    }
}

fuzz_target!(|data: &[u8]| {
    let mut input = Input(data);
    let flags = input.byte();
    let table = input.table(0);
    let queue = if flags & 1 == 1 { "queue" } else { "orders" };
    let believed = flags & 2 == 2;

    let h = AmqpHeaders(Some(&table));
    let extracted = Propagation::W3c.extract(&h);
    let _ = extracted.issues();
    let history = mqtrace::retry::read_history(&h, queue, believed);
    if let Some(r) = &history.dead_letter_reason {
        assert!(r.len() <= mqtrace::retry::MAX_REASON_LEN);
    }
    if !believed {
        assert!(history.origin.is_none() && history.previous_attempt.is_none());
        assert!(history.dead_letter_reason.is_none());
    }
    let delivery = DeliveryHistory::read_believing(Some(&table), flags & 4 == 4, queue, believed);
    assert!(delivery.attempt >= 1);
    assert!(
        delivery
            .dead_letter_reason
            .as_ref()
            .is_none_or(|r| r.len() <= MAX_X_DEATH_VALUE * 3)
    );
    assert!(
        delivery
            .dead_letter_queue
            .as_ref()
            .is_none_or(|q| q.len() <= MAX_X_DEATH_VALUE * 3)
    );
    if !believed && flags & 4 == 0 {
        // Without a believed mqtrace-attempt, only the broker's counts raise the attempt.
        let mut without = table.clone();
        without.inner_mut_remove(mqtrace::ATTEMPT_HEADER);
        assert_eq!(
            DeliveryHistory::read_believing(Some(&without), false, queue, true).attempt,
            delivery.attempt
        );
    }

    // Injecting a new context replaces the propagation keys and nothing else.
    let sc = SpanContext::new(
        TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
        SpanId::from(7_u64),
        TraceFlags::SAMPLED,
        false,
        TraceState::NONE,
    );
    let mut out = table.clone();
    AmqpHeadersMut::remove_context(&mut out, &Propagation::W3c);
    Propagation::W3c.inject(&sc, extracted.context(), &mut AmqpHeadersMut(&mut out));
    for (k, v) in table.inner() {
        let lower = k.as_str().to_ascii_lowercase();
        if !Propagation::W3c.is_field(&lower) {
            // Compared by their debug form: a NaN float is kept but is not equal to itself.
            let kept = out.inner().get(k).map(|x| format!("{x:?}"));
            assert_eq!(kept, Some(format!("{v:?}")), "{k:?} changed");
        }
    }
    let again = Propagation::W3c.extract(&AmqpHeaders(Some(&out)));
    assert_eq!(again.span_context().span_id(), SpanId::from(7_u64));
});

trait RemoveKey {
    fn inner_mut_remove(&mut self, key: &str);
}

impl RemoveKey for FieldTable {
    fn inner_mut_remove(&mut self, key: &str) {
        let mut inner = self.inner().clone();
        inner.retain(|k, _| k.as_str() != key);
        *self = FieldTable::from(inner);
    }
}
