//! Traced producers: the PRODUCER span of each record, ended by its delivery report.

mod base;
mod future;

pub use base::{TracedBaseProducer, TracedOpaque, TracedProducerContext, TracedThreadedProducer};
pub use future::{DeliveryAnswer, TracedDeliveryFuture, TracedFutureProducer};

use crate::SEND;
use crate::client::{self, ClientInfo};
use crate::error::error_type;
use crate::headers::{KafkaHeaders, KafkaHeadersMut};
use crate::partition::partition_id;
use mqtrace::attributes as attr;
use mqtrace::{
    Config,
    instrument::{Instrumentation, Outgoing, SendSpan},
};
use opentelemetry::KeyValue;
use rdkafka::ClientConfig;
use rdkafka::error::KafkaError;
use rdkafka::message::{OwnedHeaders, ToBytes};

/// What every producer shares: the instrumentation and what its configuration says.
#[derive(Debug)]
pub(crate) struct Producing {
    pub(crate) inst: Instrumentation,
    pub(crate) info: ClientInfo,
    /// The configuration the producer was created with (for an admin client of the same
    /// cluster).
    pub(crate) client: ClientConfig,
}

/// The parts of a record the send span needs.
pub(crate) struct Record<'r, K: ?Sized, P: ?Sized> {
    pub(crate) topic: &'r str,
    pub(crate) partition: Option<i32>,
    pub(crate) key: Option<&'r K>,
    pub(crate) payload: Option<&'r P>,
}

impl Producing {
    pub(crate) fn new(config: Config, client: &ClientConfig) -> Self {
        let info = ClientInfo::read(client);
        Self {
            inst: client::build(config, &info),
            info,
            client: client.clone(),
        }
    }

    /// Starts the PRODUCER span of a record and returns its headers with the context added.
    pub(crate) fn start<K, P>(
        &self,
        record: Record<'_, K, P>,
        headers: Option<OwnedHeaders>,
    ) -> (SendSpan, Option<OwnedHeaders>)
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let mut headers = headers;
        let propagation = self.inst.config().propagation();
        // The user's headers as given, for the attributes hook only (a copy, when one is set).
        let hooked = if self.inst.config().has_attributes_hook() {
            headers.clone()
        } else {
            None
        };
        // A context already on the record is kept or replaced whole, never mixed: when it is
        // not kept, every context header is taken out first, so the receiver sees one context.
        let existing = self.inst.existing_context(&KafkaHeaders(headers.as_ref()));
        let injectable =
            existing.keeps() || KafkaHeadersMut(&mut headers).remove_fields(propagation);
        let span = {
            let before = KafkaHeaders(hooked.as_ref());
            let partition;
            let extra: &[KeyValue] = match record.partition {
                Some(p) => {
                    partition = [KeyValue::new(
                        attr::MESSAGING_DESTINATION_PARTITION_ID,
                        partition_id(p),
                    )];
                    &partition
                }
                None => &[],
            };
            let record_attributes = |kv: &mut Vec<KeyValue>| {
                if !injectable {
                    kv.push(KeyValue::new(
                        attr::CONTEXT_ERROR,
                        "the headers hold a trace context and a key that is not UTF-8: sent \
                         unchanged, without this span's context",
                    ));
                }
                if self.inst.config().message_key()
                    && let Some(key) = record
                        .key
                        .and_then(|k| std::str::from_utf8(k.to_bytes()).ok())
                {
                    kv.push(KeyValue::new(
                        attr::MESSAGING_KAFKA_MESSAGE_KEY,
                        key.to_owned(),
                    ));
                }
                if record.payload.is_none() {
                    kv.push(KeyValue::new(attr::MESSAGING_KAFKA_MESSAGE_TOMBSTONE, true));
                }
            };
            let mut msg = Outgoing::new(SEND, record.topic)
                .with_existing_context(&existing)
                .with_body_size(record.payload.map_or(0, |p| p.to_bytes().len()))
                .with_attributes(extra)
                .with_recorded(&record_attributes);
            if hooked.is_some() {
                msg = msg.with_headers(&before);
            }
            if injectable {
                self.inst
                    .start_send(msg, &mut KafkaHeadersMut(&mut headers))
            } else {
                self.inst.start_send(msg, &mut Discard)
            }
        };
        (span, headers)
    }
}

/// Takes what a propagator writes and keeps none of it (for headers that cannot take a
/// context without losing one of the user's).
struct Discard;

impl mqtrace::carrier::Injector for Discard {
    fn set(&mut self, _key: &str, _value: String) {}
}

/// Ends a send span with the broker's acknowledgement.
pub(crate) fn delivered(mut span: SendSpan, partition: i32, offset: i64) {
    span.record(|| {
        [
            KeyValue::new(
                attr::MESSAGING_DESTINATION_PARTITION_ID,
                partition_id(partition),
            ),
            KeyValue::new(attr::MESSAGING_KAFKA_OFFSET, offset),
        ]
    });
    span.end_ok();
}

/// Ends a send span with a delivery failure.
pub(crate) fn failed(mut span: SendSpan, error: &KafkaError, partition: i32) {
    if partition >= 0 {
        span.record(|| {
            [KeyValue::new(
                attr::MESSAGING_DESTINATION_PARTITION_ID,
                partition_id(partition),
            )]
        });
    }
    span.end_error(error_type(error), error);
}
