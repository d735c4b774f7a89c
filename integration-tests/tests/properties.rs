//! Properties through the real brokers, over seeded random inputs (a fixed seed per test, so a
//! failure names the message that broke it and reruns the same way; no shrinking against a
//! broker):
//!
//! * any user header map survives publish → consume through the traced clients unchanged,
//!   except the keys mqtrace owns (the propagation keys `traceparent`, `tracestate`,
//!   `baggage` in any letter case, the Google client's `googclient_*` on Pub/Sub, and
//!   `mqtrace::retry::OWNED_HEADERS`): 64 messages per broker;
//! * the context mqtrace re-encodes never grows across 10 hops through a broker.

use google_cloud_pubsub::model::Message;
use lapin::options::{BasicAckOptions, BasicConsumeOptions, BasicGetOptions, BasicPublishOptions};
use lapin::types::{
    AMQPValue, ByteArray, DecimalValue, FieldArray, FieldTable, LongString, ShortString,
};
use lapin::{BasicProperties, Channel};
use mqtrace::testing::TestTelemetry;
use mqtrace_integration_tests::kafka::{self, create_topic};
use mqtrace_integration_tests::support::{wait, within};
use mqtrace_integration_tests::{next_delivery, rabbitmq, unique};
use mqtrace_lapin::prelude::*;
use opentelemetry::Context;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::context::FutureExt;
use rdkafka::message::{Header, Headers, Message as _, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use std::collections::{BTreeMap, HashMap};
use std::time::Duration;

const MESSAGES: usize = 64;

/// A small seeded generator (xorshift64*): the inputs are the same on every run.
struct Gen(u64);

impl Gen {
    fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn bytes(&mut self, max: u64) -> Vec<u8> {
        let n = self.below(max + 1);
        (0..n).map(|_| self.next() as u8).collect()
    }
    /// Text of any characters (ASCII, Latin-1, CJK, emoji, controls), at most `max` bytes.
    fn text(&mut self, max: usize) -> String {
        let mut s = String::new();
        let n = self.below(24);
        for _ in 0..n {
            let c = match self.below(5) {
                0 => char::from(self.below(128) as u8),
                1 => char::from_u32(0xa0 + self.below(0x60) as u32).unwrap_or('?'),
                2 => char::from_u32(0x4e00 + self.below(0x100) as u32).unwrap_or('?'),
                3 => char::from_u32(0x1f600 + self.below(0x40) as u32).unwrap_or('?'),
                _ => char::from(b'a' + self.below(26) as u8),
            };
            if s.len() + c.len_utf8() > max {
                break;
            }
            s.push(c);
        }
        s
    }
    /// A header name: mostly user names, sometimes one mqtrace owns or a near miss of one.
    fn key(&mut self) -> String {
        const NAMES: [&str; 14] = [
            "traceparent",
            "TraceParent",
            "tracestate",
            "baggage",
            "BAGGAGE",
            "traceparent-x",
            "x-traceparent",
            "mqtrace-attempt",
            "mqtrace-origin",
            "mqtrace-dead-letter-reason",
            "mqtrace-not-before",
            "mqtrace-custom",
            "content-type",
            "tenant",
        ];
        if self.below(3) == 0 {
            NAMES[self.below(NAMES.len() as u64) as usize].to_owned()
        } else {
            format!("k{}-{}", self.below(1000), self.text(40))
        }
    }
}

/// Whether mqtrace owns `key` (and may replace or drop it).
fn owned(key: &str) -> bool {
    let lower = key.to_ascii_lowercase();
    mqtrace::Propagation::W3c.is_field(&lower)
        || lower.starts_with("googclient_")
        || mqtrace::retry::is_owned(key)
}

/// A random AMQP value of any type, tables and arrays nested up to `depth`.
fn amqp_value(g: &mut Gen, depth: u32) -> AMQPValue {
    let kinds = if depth == 0 { 16 } else { 18 };
    match g.below(kinds) {
        0 => AMQPValue::Boolean(g.below(2) == 1),
        1 => AMQPValue::ShortShortInt(g.next() as i8),
        2 => AMQPValue::ShortShortUInt(g.next() as u8),
        3 => AMQPValue::ShortInt(g.next() as i16),
        4 => AMQPValue::ShortUInt(g.next() as u16),
        5 => AMQPValue::LongInt(g.next() as i32),
        6 => AMQPValue::LongUInt(g.next() as u32),
        7 => AMQPValue::LongLongInt(g.next() as i64),
        // Finite floats: NaN is not equal to itself.
        8 => AMQPValue::Float((g.next() as i32) as f32 / 7.0),
        9 => AMQPValue::Double((g.next() as i64) as f64 / 3.0),
        10 => AMQPValue::DecimalValue(DecimalValue {
            scale: g.below(10) as u8,
            value: g.next() as u32,
        }),
        // RabbitMQ has no short-string field type (its `s` is a short int, per its errata of
        // AMQP 0-9-1): a table holding one closes the connection with INTERNAL_ERROR whoever
        // publishes it, so a long string stands in.
        11 => AMQPValue::LongString(LongString::from(g.text(255))),
        12 => AMQPValue::LongString(LongString::from(g.bytes(300))),
        13 => AMQPValue::Timestamp(g.next() >> 20),
        14 => AMQPValue::ByteArray(ByteArray::from(g.bytes(64))),
        15 => AMQPValue::Void,
        16 => {
            let n = g.below(5);
            AMQPValue::FieldArray(FieldArray::from(
                (0..n).map(|_| amqp_value(g, depth - 1)).collect::<Vec<_>>(),
            ))
        }
        _ => AMQPValue::FieldTable(amqp_table(g, depth - 1)),
    }
}

fn amqp_table(g: &mut Gen, depth: u32) -> FieldTable {
    let mut t = FieldTable::default();
    for _ in 0..g.below(10) {
        t.insert(ShortString::from(g.key()), amqp_value(g, depth));
    }
    t
}

/// The user's part of a table, by its debug form (values compared as the broker gave them).
fn user_part(t: Option<&FieldTable>) -> BTreeMap<String, String> {
    t.map(|t| {
        t.inner()
            .iter()
            .filter(|(k, _)| !owned(k.as_str()))
            .map(|(k, v)| (k.as_str().to_owned(), format!("{v:?}")))
            .collect()
    })
    .unwrap_or_default()
}

async fn publish_raw(ch: &Channel, queue: &str, props: BasicProperties) {
    Channel::basic_publish(
        ch,
        "".into(),
        queue.into(),
        BasicPublishOptions::default(),
        b"x",
        props,
    )
    .await
    .expect("basic_publish")
    .await
    .expect("confirm");
}

/// RabbitMQ: each random table (every AMQP value type, nested tables and arrays, byte
/// arrays, decimals, timestamps) is published once by the raw client and once through the
/// traced channel; the traced consumer sees the user's part exactly as the raw client's
/// message arrives (RabbitMQ's own type mapping included), with a context of its own.
#[tokio::test]
async fn rabbitmq_user_header_tables_survive_unchanged_except_owned_keys() {
    within(async {
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("create_channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirm_select");
        let raw_q = unique("prop-raw");
        let traced_q = unique("prop-traced");
        for q in [&raw_q, &traced_q] {
            ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
                .await
                .expect("queue_declare");
        }
        let mut g = Gen(0x5eed_0001);
        let tables: Vec<FieldTable> = (0..MESSAGES).map(|_| amqp_table(&mut g, 3)).collect();
        for table in &tables {
            let props = BasicProperties::default().with_headers(table.clone());
            publish_raw(&ch, &raw_q, props.clone()).await;
            ch.basic_publish(
                "".into(),
                traced_q.as_str().into(),
                BasicPublishOptions::default(),
                b"x",
                props,
            )
            .await
            .expect("basic_publish")
            .await
            .expect("confirm");
        }
        let mut consumer = ch
            .basic_consume(
                traced_q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic_consume");
        for (i, table) in tables.iter().enumerate() {
            let raw =
                Channel::basic_get(&ch, raw_q.as_str().into(), BasicGetOptions { no_ack: true })
                    .await
                    .expect("basic_get")
                    .expect("the raw copy is there");
            let d = next_delivery(&mut consumer).await;
            // Compared over the keys the user sent; the broker may add its own (RabbitMQ's
            // `timestamp_in_ms` interceptor), which mqtrace leaves alone too.
            let sent = user_part(Some(table));
            let of_sent = |m: BTreeMap<String, String>| -> BTreeMap<String, String> {
                m.into_iter()
                    .filter(|(k, _)| sent.contains_key(k))
                    .collect()
            };
            let expected = of_sent(user_part(raw.delivery.properties.headers().as_ref()));
            let got = user_part(d.properties.headers().as_ref());
            assert!(
                got.keys()
                    .all(|k| sent.contains_key(k) || k == "timestamp_in_ms"),
                "message {i}: {got:?}"
            );
            assert_eq!(of_sent(got), expected, "message {i}: sent {table:?}");
            assert_eq!(expected.len(), sent.len(), "message {i}");
            assert!(d.span_context().is_valid(), "message {i} carries a context");
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        let spans = wait(&t, &format!("ack {traced_q}"), MESSAGES).await;
        assert_eq!(spans.named(&format!("process {traced_q}")).len(), MESSAGES);
    })
    .await;
}

/// Kafka: random header lists (keys of any characters, repeated keys, values of any bytes,
/// empty and null values) sent through the traced producer arrive at the traced consumer in
/// the same order, byte for byte, apart from the keys mqtrace owns.
#[tokio::test]
async fn kafka_user_header_lists_survive_unchanged_and_in_order_except_owned_keys() {
    within(async {
        let t = TestTelemetry::new();
        let topic = unique("prop-headers");
        create_topic(&topic, 1).await;
        let producer = kafka::producer(t.config());
        let mut g = Gen(0x5eed_0002);
        type List = Vec<(String, Option<Vec<u8>>)>;
        let mut sent: Vec<List> = Vec::new();
        for i in 0..MESSAGES {
            let mut list: List = Vec::new();
            for _ in 0..g.below(12) {
                // No NUL in keys: librdkafka reads a header name as a C string, so the raw
                // client already sees it cut at the NUL (README, limits).
                let key = if !list.is_empty() && g.below(5) == 0 {
                    list[g.below(list.len() as u64) as usize].0.clone() // a repeated key
                } else {
                    g.key().replace('\0', "")
                };
                let value = (g.below(6) != 0).then(|| g.bytes(200));
                list.push((key, value));
            }
            let headers = list.iter().fold(OwnedHeaders::new(), |h, (k, v)| {
                h.insert(Header {
                    key: k,
                    value: v.as_deref(),
                })
            });
            let key = i.to_string();
            let record = FutureRecord::<str, [u8]>::to(&topic)
                .key(&key)
                .payload(&b"x"[..])
                .headers(headers);
            producer
                .send(record, Duration::from_secs(10))
                .await
                .unwrap_or_else(|(e, _)| panic!("delivery {i}: {e}"));
            sent.push(list);
        }
        let c = kafka::consumer(t.config(), &unique("g"), &[&topic]);
        let user = |l: &List| -> List { l.iter().filter(|(k, _)| !owned(k)).cloned().collect() };
        for (i, list) in sent.iter().enumerate() {
            let m = kafka::next_message(&c).await;
            let key = m.key().map(|k| String::from_utf8_lossy(k).into_owned());
            assert_eq!(key, Some(i.to_string()), "in order");
            let got: List = m
                .headers()
                .map(|h| {
                    h.iter()
                        .map(|h| (h.key.to_owned(), h.value.map(<[u8]>::to_vec)))
                        .collect()
                })
                .unwrap_or_default();
            assert_eq!(user(&got), user(list), "message {i}");
            assert!(m.span_context().is_valid(), "message {i} carries a context");
            c.store_offset_from_message(&m).expect("store");
        }
        let spans = wait(&t, &format!("store_offset {topic}"), MESSAGES).await;
        assert_eq!(spans.named(&format!("process {topic}")).len(), MESSAGES);
    })
    .await;
}

/// Pub/Sub: random attribute maps (names and values of any characters, within Pub/Sub's
/// limits) published through the traced publisher arrive unchanged apart from mqtrace's keys.
#[tokio::test]
async fn pubsub_user_attribute_maps_survive_unchanged_except_owned_keys() {
    within(async {
        let t = TestTelemetry::new();
        let ps = mqtrace_integration_tests::pubsub::pubsub().await;
        let topic = ps.create_topic(&unique("prop-attrs")).await;
        let sub = ps
            .create_subscription(&unique("prop-attrs-sub"), &topic, |s| s)
            .await;
        let inst = ps.emulator.instrumentation(t.config());
        let raw = ps
            .emulator
            .publisher(&topic)
            .build()
            .await
            .expect("publisher");
        let publisher = mqtrace_pubsub::TracedPublisher::new(raw, &topic, inst.clone());
        let mut g = Gen(0x5eed_0003);
        let mut sent: HashMap<String, HashMap<String, String>> = HashMap::new();
        for i in 0..MESSAGES {
            let mut attrs: HashMap<String, String> = HashMap::new();
            for _ in 0..g.below(12) {
                // Pub/Sub: names not empty, not starting with `goog` (reserved).
                let key = format!("a{}", g.key());
                attrs.insert(key, g.text(200));
            }
            let data = format!("m{i}");
            tokio::time::timeout(
                Duration::from_secs(20),
                publisher.publish(
                    Message::new()
                        .set_data(data.clone())
                        .set_attributes(attrs.clone()),
                ),
            )
            .await
            .expect("publish answered")
            .expect("publish");
            sent.insert(data, attrs);
        }
        let client = ps.emulator.subscriber().build().await.expect("subscriber");
        let mut stream = mqtrace_pubsub::TracedSubscriber::new(client, inst)
            .subscribe(&sub)
            .build();
        let user = |m: &HashMap<String, String>| -> BTreeMap<String, String> {
            m.iter()
                .filter(|(k, _)| !owned(k))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect()
        };
        for _ in 0..MESSAGES {
            let (message, handler) =
                mqtrace_integration_tests::pubsub::next_message(&mut stream).await;
            let data = String::from_utf8_lossy(&message.data).into_owned();
            let attrs = sent.remove(&data).expect("a message sent once");
            let got: HashMap<String, String> = message
                .attributes
                .iter()
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect();
            assert_eq!(user(&got), user(&attrs), "{data}");
            assert!(
                handler.span_context().is_valid(),
                "{data} carries a context"
            );
            handler.ack();
        }
        assert!(sent.is_empty());
    })
    .await;
}

/// Ten hops through RabbitMQ, each handler republishing the message it received (its headers
/// included) inside its process span: the `tracestate` and `baggage` mqtrace writes are the
/// same at every hop (nothing grows, nothing more is dropped), from a first hop with escapes
/// and a member of raw characters another producer wrote (dropped once, at the first hop, as
/// malformed: before issue 14 it was kept and its re-encoding grew at every hop).
#[tokio::test]
async fn the_context_does_not_grow_across_ten_hops_through_rabbitmq() {
    within(async {
        let t = TestTelemetry::new();
        let conn = rabbitmq(t.config()).await;
        let ch = conn.create_channel().await.expect("create_channel");
        ch.confirm_select(Default::default())
            .await
            .expect("confirm_select");
        let q = unique("hops");
        ch.queue_declare(q.as_str().into(), Default::default(), FieldTable::default())
            .await
            .expect("queue_declare");
        let mut first = FieldTable::default();
        let text = |s: &str| AMQPValue::LongString(LongString::from(s.as_bytes().to_vec()));
        first.insert(
            "traceparent".into(),
            text("00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"),
        );
        first.insert("tracestate".into(), text("vendor=a:b, other=1"));
        first.insert(
            "baggage".into(),
            text("tenant=acme%20corp;p=a%2Cb, pct=10%25, uni=%C3%A9t%C3%A9, eq=a%3Db;flag, raw=caf\u{e9} 100%"),
        );
        first.insert("user".into(), text("kept"));
        publish_raw(&ch, &q, BasicProperties::default().with_headers(first)).await;
        let mut consumer = ch
            .basic_consume(
                q.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .expect("basic_consume");
        let header = |d: &mqtrace_lapin::TracedDelivery, k: &str| -> Option<String> {
            match d.properties.headers().as_ref()?.inner().get(k)? {
                AMQPValue::LongString(s) => {
                    Some(String::from_utf8_lossy(s.as_bytes()).into_owned())
                }
                other => panic!("{k}: {other:?}"),
            }
        };
        let mut seen: Vec<(Option<String>, Option<String>)> = Vec::new();
        let mut trace = None;
        for hop in 0..=10 {
            let d = next_delivery(&mut consumer).await;
            assert_eq!(header(&d, "user").as_deref(), Some("kept"), "hop {hop}");
            trace.get_or_insert(d.span_context().trace_id());
            assert_eq!(
                Some(d.span_context().trace_id()),
                trace,
                "hop {hop}: one trace"
            );
            if hop > 0 {
                seen.push((header(&d, "tracestate"), header(&d, "baggage")));
            }
            let tenant = d
                .in_span(async {
                    Context::current()
                        .baggage()
                        .get("tenant")
                        .map(|v| v.as_str().to_owned())
                })
                .await;
            assert_eq!(tenant.as_deref(), Some("acme corp"), "hop {hop}");
            if hop < 10 {
                let props = d.properties.clone();
                let cx = d.context().clone();
                ch.basic_publish(
                    "".into(),
                    q.as_str().into(),
                    BasicPublishOptions::default(),
                    b"x",
                    props,
                )
                .with_context(cx)
                .await
                .expect("basic_publish")
                .await
                .expect("confirm");
            }
            d.ack(BasicAckOptions::default()).await.expect("ack");
        }
        // What mqtrace wrote at its first hop is written again at every later one: the same
        // tracestate, the same baggage members (W3C gives their order no meaning, and
        // OpenTelemetry's baggage does not keep it), so the same length.
        let members = |b: &Option<String>| -> Vec<String> {
            let mut m: Vec<String> = b
                .as_deref()
                .unwrap_or_default()
                .split(',')
                .map(str::to_owned)
                .collect();
            m.sort();
            m
        };
        let (ts, bag) = seen[0].clone();
        assert!(ts.is_some() && members(&bag).len() == 4, "{seen:?}");
        for (hop, (t, b)) in seen.iter().enumerate() {
            assert_eq!(t, &ts, "hop {}", hop + 1);
            assert_eq!(members(b), members(&bag), "hop {}", hop + 1);
            assert_eq!(b.as_ref().map(String::len), bag.as_ref().map(String::len));
        }
    })
    .await;
}
