//! The four messaging metrics of the semantic conventions, and mqtrace's own: time in queue,
//! pipeline latency, outcomes, clock skew.

use crate::attributes as attr;
use crate::instrument::DestinationKind;
use crate::operation::{Operation, OperationType};
use opentelemetry::metrics::{Counter, Histogram, Meter};
use opentelemetry::{KeyValue, StringValue, Value};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

/// Bucket boundaries the conventions give messaging duration histograms (seconds).
const DURATION_BOUNDARIES: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];

/// The broker attributes consumer metrics keep (low cardinality); the others stay on spans.
const CONSUMER_METRIC_KEYS: [&str; 3] = [
    attr::MESSAGING_CONSUMER_GROUP_NAME,
    attr::MESSAGING_DESTINATION_SUBSCRIPTION_NAME,
    attr::MESSAGING_DESTINATION_PARTITION_ID,
];

/// Every instrument mqtrace records.
pub(crate) struct Metrics {
    operation_duration: Histogram<f64>,
    process_duration: Histogram<f64>,
    sent: Counter<u64>,
    consumed: Counter<u64>,
    queue_time: Histogram<f64>,
    pipeline_latency: Histogram<f64>,
    outcomes: Counter<u64>,
    clock_skew: Counter<u64>,
}

fn seconds(meter: &Meter, name: &'static str, description: &'static str) -> Histogram<f64> {
    meter
        .f64_histogram(name)
        .with_unit("s")
        .with_description(description)
        .with_boundaries(DURATION_BOUNDARIES.to_vec())
        .build()
}

fn messages(meter: &Meter, name: &'static str, description: &'static str) -> Counter<u64> {
    meter
        .u64_counter(name)
        .with_unit("{message}")
        .with_description(description)
        .build()
}

impl Metrics {
    pub(crate) fn new(meter: &Meter) -> Self {
        Self {
            operation_duration: seconds(
                meter,
                "messaging.client.operation.duration",
                "Duration of messaging operation initiated by a producer or consumer client.",
            ),
            process_duration: seconds(
                meter,
                "messaging.process.duration",
                "Duration of processing operation.",
            ),
            sent: messages(
                meter,
                "messaging.client.sent.messages",
                "Number of messages producer attempted to send to the broker.",
            ),
            consumed: messages(
                meter,
                "messaging.client.consumed.messages",
                "Number of messages that were delivered to the application.",
            ),
            queue_time: seconds(
                meter,
                "mqtrace.message.queue_time",
                "Time a message waited in the broker, from its broker timestamp to the start of its processing.",
            ),
            pipeline_latency: seconds(
                meter,
                "mqtrace.pipeline.latency",
                "Time since the first message of the pipeline was sent, at the start of each processing.",
            ),
            outcomes: messages(
                meter,
                "mqtrace.message.outcomes",
                "How the handling of each delivered message ended.",
            ),
            clock_skew: messages(
                meter,
                "mqtrace.clock_skew",
                "Messages whose broker or origin timestamp lay in the future (queue time or latency clamped to 0).",
            ),
        }
    }
}

/// The consumer attributes (group, subscription, partition) of `attributes` that metrics keep.
pub(crate) fn consumer_attributes(attributes: &[KeyValue]) -> Vec<KeyValue> {
    attributes
        .iter()
        .filter(|kv| CONSUMER_METRIC_KEYS.contains(&kv.key.as_str()))
        .cloned()
        .collect()
}

/// `now - then` in seconds, clamped at 0; `true` when `then` lay in the future (clock skew).
pub(crate) fn since(now: SystemTime, then: SystemTime) -> (f64, bool) {
    match now.duration_since(then) {
        Ok(d) => (d.as_secs_f64(), false),
        Err(_) => (0.0, true),
    }
}

/// What a metric point is about: shared by a span and its measurements.
#[derive(Clone)]
pub(crate) struct Measure {
    pub(crate) op: Operation,
    /// The destination as metrics name it: none for a temporary or anonymous one, whose name
    /// would make one series per queue.
    pub(crate) destination: Option<Arc<str>>,
    pub(crate) kind: DestinationKind,
    /// Consumer group, subscription, partition ([`consumer_attributes`]).
    pub(crate) extra: Vec<KeyValue>,
    pub(crate) start: Instant,
    /// Whether the end of the operation counts one message sent.
    pub(crate) sent: bool,
}

/// The attributes common to every point.
pub(crate) struct Common<'a> {
    pub(crate) system: &'static str,
    pub(crate) server_address: Option<&'a StringValue>,
    pub(crate) server_port: Option<i64>,
}

impl Measure {
    /// A measure of `op` on `destination` (of `kind`) starting at `start`.
    pub(crate) fn new(
        op: Operation,
        destination: &str,
        kind: DestinationKind,
        start: Instant,
    ) -> Self {
        Self {
            op,
            destination: kind.is_named().then(|| Arc::from(destination)),
            kind,
            extra: Vec::new(),
            start,
            sent: sends(op),
        }
    }

    /// The same destination and attributes, for another operation starting now.
    pub(crate) fn for_operation(&self, op: Operation) -> Self {
        Self {
            op,
            start: Instant::now(),
            sent: sends(op),
            ..self.clone()
        }
    }

    fn destination_attributes(&self, common: &Common<'_>, kv: &mut Vec<KeyValue>) {
        kv.push(KeyValue::new(attr::MESSAGING_SYSTEM, common.system));
        if let Some(d) = &self.destination {
            kv.push(KeyValue::new(
                attr::MESSAGING_DESTINATION_NAME,
                Value::String(StringValue::from(d.clone())),
            ));
        }
        kv.extend(self.kind.attributes());
        kv.extend_from_slice(&self.extra);
    }

    fn attributes(&self, common: &Common<'_>, error_type: Option<&str>) -> Vec<KeyValue> {
        let mut kv = Vec::with_capacity(8 + self.extra.len());
        self.destination_attributes(common, &mut kv);
        kv.push(KeyValue::new(
            attr::MESSAGING_OPERATION_NAME,
            self.op.name(),
        ));
        kv.push(KeyValue::new(
            attr::MESSAGING_OPERATION_TYPE,
            self.op.kind().as_str(),
        ));
        if let Some(a) = common.server_address {
            kv.push(KeyValue::new(
                attr::SERVER_ADDRESS,
                Value::String(a.clone()),
            ));
        }
        if let Some(p) = common.server_port {
            kv.push(KeyValue::new(attr::SERVER_PORT, p));
        }
        if let Some(e) = error_type {
            kv.push(KeyValue::new(attr::ERROR_TYPE, e.to_owned()));
        }
        kv
    }

    /// An operation ended: its duration, and for a message's send (or a create span, which
    /// ends at the broker's answer to the publish), one message sent.
    pub(crate) fn operation_done(
        &self,
        metrics: &Metrics,
        common: &Common<'_>,
        error_type: Option<&str>,
    ) {
        let kv = self.attributes(common, error_type);
        metrics
            .operation_duration
            .record(self.start.elapsed().as_secs_f64(), &kv);
        if self.sent {
            metrics.sent.add(1, &kv);
        }
    }

    /// `n` messages were delivered to the application.
    pub(crate) fn consumed(&self, metrics: &Metrics, common: &Common<'_>, n: u64) {
        metrics.consumed.add(n, &self.attributes(common, None));
    }

    /// A delivery's time in queue and pipeline latency (seconds, clamped), and whether either
    /// lay in the future.
    pub(crate) fn delivered(
        &self,
        metrics: &Metrics,
        common: &Common<'_>,
        queue_time: Option<(f64, bool)>,
        latency: Option<(f64, bool)>,
    ) {
        if queue_time.is_none() && latency.is_none() {
            return;
        }
        let kv = self.attributes(common, None);
        let mut skewed = false;
        if let Some((q, s)) = queue_time {
            metrics.queue_time.record(q, &kv);
            skewed |= s;
        }
        if let Some((l, s)) = latency {
            metrics.pipeline_latency.record(l, &kv);
            skewed |= s;
        }
        if skewed {
            metrics.clock_skew.add(1, &kv);
        }
    }

    /// The processing of a message ended with `outcome`: its duration and its outcome.
    pub(crate) fn processed(
        &self,
        metrics: &Metrics,
        common: &Common<'_>,
        outcome: &'static str,
        error_type: Option<&str>,
    ) {
        let kv = self.attributes(common, error_type);
        metrics
            .process_duration
            .record(self.start.elapsed().as_secs_f64(), &kv);
        let mut kv = Vec::with_capacity(5 + self.extra.len());
        self.destination_attributes(common, &mut kv);
        kv.push(KeyValue::new(attr::OUTCOME, outcome));
        if let Some(e) = error_type {
            kv.push(KeyValue::new(attr::ERROR_TYPE, e.to_owned()));
        }
        metrics.outcomes.add(1, &kv);
    }
}

/// Whether finishing `op` means messages went to the broker (a send, or a create whose span
/// ends at the broker's answer).
pub(crate) fn sends(op: Operation) -> bool {
    matches!(op.kind(), OperationType::Send | OperationType::Create)
}

/// Unix milliseconds of `t` (0 before the epoch).
pub(crate) fn unix_ms(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

/// The time `ms` Unix milliseconds.
pub(crate) fn from_unix_ms(ms: u64) -> SystemTime {
    SystemTime::UNIX_EPOCH + Duration::from_millis(ms)
}

#[cfg(test)]
mod tests {
    use crate::testing::{SpanDataExt, TestTelemetry};
    use crate::{instrument::*, *};
    use opentelemetry::KeyValue;
    use std::collections::HashMap;
    use std::time::{Duration, SystemTime};

    const PROCESS: Operation = Operation::new("process", OperationType::Process);

    #[test]
    fn queue_time_outcomes_and_consumer_attributes() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let h: HashMap<String, String> = HashMap::new();
        let extra = [
            KeyValue::new(attributes::MESSAGING_CONSUMER_GROUP_NAME, "g"),
            KeyValue::new(attributes::MESSAGING_DESTINATION_PARTITION_ID, "3"),
            KeyValue::new(attributes::MESSAGING_KAFKA_OFFSET, 17_i64),
        ];
        let sent_at = SystemTime::now() - Duration::from_millis(300);
        let msg = |sent| {
            Incoming::new(PROCESS, "orders", "orders")
                .with_attributes(&extra)
                .with_sent_at(Some(sent))
        };
        inst.start_process(msg(sent_at), inst.extract(&h))
            .finish(Outcome::Ack);
        inst.start_process(msg(sent_at), inst.extract(&h))
            .finish(Outcome::DeadLetter);
        // From a host whose clock is ahead: clamped to 0 and counted.
        inst.start_process(
            msg(SystemTime::now() + Duration::from_secs(60)),
            inst.extract(&h),
        )
        .finish(Outcome::Ack);

        let q = t.histogram("mqtrace.message.queue_time");
        assert_eq!(q.len(), 1, "{q:?}");
        assert_eq!(q[0].count, 3);
        assert_eq!(q[0].min, Some(0.0));
        let max = q[0].max.unwrap_or_default();
        assert!((0.3..1.3).contains(&max), "{max}");
        assert_eq!(q[0].attr_str("messaging.consumer.group.name"), Some("g"));
        assert_eq!(
            q[0].attr_str("messaging.destination.partition.id"),
            Some("3")
        );
        assert!(!q[0].attributes.contains_key("messaging.kafka.offset"));
        let skew = t.metric("mqtrace.clock_skew");
        assert_eq!(skew.iter().map(|p| p.value).sum::<f64>(), 1.0);

        let outcomes = t.metric("mqtrace.message.outcomes");
        let count = |o: &str| {
            outcomes
                .iter()
                .filter(|p| p.attr_str("mqtrace.outcome") == Some(o))
                .map(|p| p.value)
                .sum::<f64>()
        };
        assert_eq!((count("ack"), count("dead_letter")), (2.0, 1.0));
        let dl = outcomes
            .iter()
            .find(|p| p.attr_str("mqtrace.outcome") == Some("dead_letter"));
        assert_eq!(
            dl.and_then(|p| p.attr_str("error.type")),
            Some("dead_letter")
        );
        assert_eq!(
            dl.and_then(|p| p.attr_str("messaging.destination.name")),
            Some("orders")
        );
        let consumed = t.metric("messaging.client.consumed.messages");
        assert_eq!(consumed.iter().map(|p| p.value).sum::<f64>(), 3.0);

        let spans = t.spans();
        let s = &spans.named("process orders")[0];
        let qt = match s.attr(attributes::MESSAGE_QUEUE_TIME) {
            Some(opentelemetry::Value::F64(v)) => *v,
            other => panic!("queue time {other:?}"),
        };
        assert!((0.3..1.3).contains(&qt), "{qt}");
        s.assert_attr_i64(attributes::PIPELINE_STAGE, 1);
    }

    #[test]
    fn pipeline_origin_and_stage_travel_through_sends_in_a_process_span() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "test").build(t.config());
        let send = Operation::new("publish", OperationType::Send);
        let mut first: HashMap<String, String> = HashMap::new();
        inst.start_send(Outgoing::new(send, "a"), &mut first)
            .end_ok();
        assert!(
            !first.contains_key(PIPELINE_HEADER),
            "a first message needs none"
        );
        let sent_at = SystemTime::now() - Duration::from_millis(200);
        let origin = crate::metrics::unix_ms(sent_at);

        let p1 = inst.start_process(
            Incoming::new(PROCESS, "a", "a")
                .with_headers(&first)
                .with_sent_at(Some(sent_at)),
            inst.extract(&first),
        );
        let mut second: HashMap<String, String> = HashMap::new();
        {
            let _g = p1.context().clone().attach();
            inst.start_send(Outgoing::new(send, "b"), &mut second)
                .end_ok();
        }
        p1.finish(Outcome::Ack);
        assert_eq!(second[PIPELINE_HEADER], format!("{origin};1"));
        inst.start_process(
            Incoming::new(PROCESS, "b", "b").with_headers(&second),
            inst.extract(&second),
        )
        .finish(Outcome::Ack);
        let spans = t.spans();
        spans
            .one("process a")
            .assert_attr_i64(attributes::PIPELINE_STAGE, 1);
        spans
            .one("process b")
            .assert_attr_i64(attributes::PIPELINE_STAGE, 2);
        let l = t.histogram("mqtrace.pipeline.latency");
        assert_eq!(l.iter().map(|p| p.count).sum::<u64>(), 2);
    }

    #[test]
    fn untrusted_sources_reset_the_pipeline() {
        let t = TestTelemetry::new();
        let config = t.config().with_trust(Trust::untrusted_sources(["public"]));
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "test").build(config);
        let mut h: HashMap<String, String> = HashMap::new();
        h.insert(PIPELINE_HEADER.into(), "1000;7".into());
        inst.start_process(
            Incoming::new(PROCESS, "public", "public").with_headers(&h),
            inst.extract(&h),
        )
        .finish(Outcome::Ack);
        let spans = t.spans();
        let s = spans.one("process public");
        s.assert_attr_i64(attributes::PIPELINE_STAGE, 1);
        match s.attr(attributes::PIPELINE_LATENCY) {
            Some(opentelemetry::Value::F64(v)) => assert!(*v < 1.0, "{v}"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn temporary_destinations_have_no_name_on_metrics_and_batches_record_duration_without_counting()
    {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::RabbitMq, "test").build(t.config());
        let send = Operation::new("publish", OperationType::Send);
        let server_named = DestinationKind::NAMED
            .with_temporary(true)
            .with_anonymous(true);
        for q in ["amq.gen-AAA", "amq.gen-BBB"] {
            let mut h: HashMap<String, String> = HashMap::new();
            inst.start_send(
                Outgoing::new(send, q).with_destination_kind(server_named),
                &mut h,
            )
            .end_ok();
        }
        let mut h: HashMap<String, String> = HashMap::new();
        inst.start_send(
            Outgoing::new(send, "orders:eu.1").with_metric_destination("orders"),
            &mut h,
        )
        .end_ok();
        inst.start_batch_send(Operation::new("send", OperationType::Send), "orders", [])
            .end_ok();
        let sent = t.metric("messaging.client.sent.messages");
        let names: Vec<_> = sent
            .iter()
            .map(|p| (p.attr_str("messaging.destination.name"), p.value))
            .collect();
        assert_eq!(sent.len(), 2, "{names:?}");
        // No name for the temporary queues: one series, flagged temporary and anonymous.
        assert!(names.contains(&(None, 2.0)), "{names:?}");
        let temp = sent
            .iter()
            .find(|p| p.attr_str("messaging.destination.name").is_none())
            .expect("the temporary series");
        assert_eq!(
            temp.attr("messaging.destination.temporary"),
            Some(&opentelemetry::Value::Bool(true))
        );
        assert_eq!(
            temp.attr("messaging.destination.anonymous"),
            Some(&opentelemetry::Value::Bool(true))
        );
        assert!(names.contains(&(Some("orders"), 1.0)), "{names:?}");
        let d = t.histogram("messaging.client.operation.duration");
        assert_eq!(d.iter().map(|p| p.count).sum::<u64>(), 4, "{d:?}");
    }
}

#[cfg(test)]
mod receive_tests {
    use crate::testing::TestTelemetry;
    use crate::{instrument::*, *};
    use opentelemetry::KeyValue;
    use std::collections::HashMap;
    use std::time::SystemTime;

    #[test]
    fn a_batch_is_counted_once_at_its_receive_span_with_its_group() {
        let t = TestTelemetry::new();
        let inst = Instrumentation::builder(MessagingSystem::Kafka, "test").build(t.config());
        let h: HashMap<String, String> = HashMap::new();
        let xs: Vec<Extracted> = (0..3).map(|_| inst.extract(&h)).collect();
        let group = [KeyValue::new(
            attributes::MESSAGING_CONSUMER_GROUP_NAME,
            "g",
        )];
        inst.record_receive(
            Receive::new(
                Operation::new("poll", OperationType::Receive),
                SystemTime::now(),
            )
            .with_destination(Some("t"))
            .with_attributes(&group),
            xs.iter().map(Extracted::span_context),
        );
        for x in xs {
            inst.start_process(
                Incoming::new(Operation::new("process", OperationType::Process), "t", "t")
                    .with_attributes(&group)
                    .with_counted_at_receive(true),
                x,
            )
            .finish(Outcome::Ack);
        }
        let consumed = t.metric("messaging.client.consumed.messages");
        assert_eq!(consumed.len(), 1, "{consumed:?}");
        assert_eq!(consumed[0].value, 3.0);
        assert_eq!(
            consumed[0].attr_str("messaging.operation.name"),
            Some("poll")
        );
        assert_eq!(
            consumed[0].attr_str("messaging.consumer.group.name"),
            Some("g")
        );
        let d = t.histogram("messaging.client.operation.duration");
        assert_eq!(d.iter().map(|p| p.count).sum::<u64>(), 1);
    }
}
