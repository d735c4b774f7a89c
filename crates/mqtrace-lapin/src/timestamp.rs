//! The send time of an AMQP message, for its time in queue.
//!
//! The AMQP `timestamp` property has a resolution of one second, too coarse for time in
//! queue. mqtrace reads, in order: the `timestamp_in_ms` header (the name RabbitMQ's
//! `rabbitmq_message_timestamp` plugin writes, so a broker-stamped time is used when the plugin
//! runs), then the `timestamp` property in seconds. On publish, when the user set no
//! `timestamp`, mqtrace sets both: the property (seconds, for every other AMQP tool) and the
//! header (milliseconds).

use lapin::BasicProperties;
use lapin::types::{AMQPValue, FieldTable};
use std::time::{Duration, SystemTime};

/// The header with the send time in Unix milliseconds.
pub(crate) const TIMESTAMP_IN_MS: &str = "timestamp_in_ms";

/// When the message was sent: `timestamp_in_ms`, else the `timestamp` property.
pub(crate) fn sent_at(properties: &BasicProperties) -> Option<SystemTime> {
    let ms = properties
        .headers()
        .as_ref()
        .and_then(|h| h.inner().get(TIMESTAMP_IN_MS))
        .and_then(|v| match v {
            AMQPValue::LongLongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::LongUInt(n) => Some(u64::from(*n)),
            AMQPValue::LongInt(n) => u64::try_from(*n).ok(),
            AMQPValue::Timestamp(n) => Some(*n),
            AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok(),
            _ => None,
        });
    let since_epoch = match ms {
        Some(ms) => Duration::from_millis(ms),
        None => Duration::from_secs((*properties.timestamp())?),
    };
    SystemTime::UNIX_EPOCH.checked_add(since_epoch)
}

/// On publish: when the user set no `timestamp`, stamps `headers` with `timestamp_in_ms` and
/// returns the seconds for the property.
pub(crate) fn stamp(properties: &BasicProperties, headers: &mut FieldTable) -> Option<u64> {
    if properties.timestamp().is_some() {
        return None;
    }
    let since_epoch = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .ok()?;
    let ms = i64::try_from(since_epoch.as_millis()).ok()?;
    if !headers.inner().contains_key(TIMESTAMP_IN_MS) {
        headers.insert(TIMESTAMP_IN_MS.into(), AMQPValue::LongLongInt(ms));
    }
    Some(since_epoch.as_secs())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn milliseconds_header_first_then_the_seconds_property() {
        let mut h = FieldTable::default();
        h.insert(
            TIMESTAMP_IN_MS.into(),
            AMQPValue::LongLongInt(1_700_000_000_123),
        );
        let p = BasicProperties::default().with_timestamp(1).with_headers(h);
        assert_eq!(
            sent_at(&p),
            Some(SystemTime::UNIX_EPOCH + Duration::from_millis(1_700_000_000_123))
        );
        let p = BasicProperties::default().with_timestamp(1_700_000_000);
        assert_eq!(
            sent_at(&p),
            Some(SystemTime::UNIX_EPOCH + Duration::from_secs(1_700_000_000))
        );
        assert_eq!(sent_at(&BasicProperties::default()), None);
    }

    #[test]
    fn a_user_timestamp_is_left_alone() {
        let mut h = FieldTable::default();
        assert_eq!(
            stamp(&BasicProperties::default().with_timestamp(5), &mut h),
            None
        );
        assert!(h.inner().is_empty());
        assert!(stamp(&BasicProperties::default(), &mut h).is_some());
        assert!(h.inner().contains_key(TIMESTAMP_IN_MS));
    }
}
