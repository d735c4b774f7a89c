//! What the demo expects of each order's trace, and the checks `demo waterfall --check` runs.

use crate::ORDER_ID;
use crate::trace_view::{SpanRecord, Trace, format_duration, group};
use serde_json::{Value, json};
use std::collections::HashMap;

/// `service.name` of the order API.
pub const ORDER_API: &str = "order-api";
/// `service.name` of the validator.
pub const VALIDATOR: &str = "validator";
/// `service.name` of the enricher.
pub const ENRICHER: &str = "enricher";
/// `service.name` of the notifier.
pub const NOTIFIER: &str = "notifier";
/// `service.name` of the dead-letter consumer.
pub const DEAD_LETTERS: &str = "dead-letters";

/// What an order is meant to do in the pipeline.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Goes through every stage at the first attempt.
    Valid,
    /// Fails twice in the validator (transiently), succeeds at attempt 3, then goes on.
    Transient,
    /// Invalid: a permanent failure in the validator, dead-lettered.
    Poison,
}

impl Kind {
    /// The name used in the expectations file and the output.
    ///
    /// ```
    /// assert_eq!(mqtrace_examples::check::Kind::Poison.as_str(), "poison");
    /// ```
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Valid => "valid",
            Self::Transient => "transient",
            Self::Poison => "poison",
        }
    }

    /// The kind named `s`.
    ///
    /// ```
    /// use mqtrace_examples::check::Kind;
    /// assert_eq!(Kind::parse("transient"), Some(Kind::Transient));
    /// ```
    pub fn parse(s: &str) -> Option<Self> {
        match s {
            "valid" => Some(Self::Valid),
            "transient" => Some(Self::Transient),
            "poison" => Some(Self::Poison),
            _ => None,
        }
    }
}

/// One order the demo sent.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Expected {
    /// The order id (`app.order.id` on the spans).
    pub id: String,
    /// What it should do.
    pub kind: Kind,
    /// The `traceparent` the request arrived with, if any: the trace must continue it.
    pub traceparent: Option<String>,
}

impl Expected {
    /// As written to the expectations file.
    ///
    /// ```
    /// use mqtrace_examples::check::{Expected, Kind};
    /// let e = Expected { id: "o-1".into(), kind: Kind::Valid, traceparent: None };
    /// assert_eq!(Expected::from_json(&e.to_json()), Some(e));
    /// ```
    pub fn to_json(&self) -> Value {
        json!({"id": self.id, "kind": self.kind.as_str(), "traceparent": self.traceparent})
    }

    /// Reads one entry of the expectations file.
    ///
    /// ```
    /// assert!(mqtrace_examples::check::Expected::from_json(&serde_json::json!({})).is_none());
    /// ```
    pub fn from_json(v: &Value) -> Option<Self> {
        Some(Self {
            id: v.get("id")?.as_str()?.to_owned(),
            kind: Kind::parse(v.get("kind")?.as_str()?)?,
            traceparent: v
                .get("traceparent")
                .and_then(Value::as_str)
                .map(str::to_owned),
        })
    }

    /// Whether the span is where this order's journey ends: the notifier's ack, or the
    /// dead-letter consumer's ack for a poison order.
    ///
    /// ```
    /// use mqtrace_examples::check::{Expected, Kind};
    /// let e = Expected { id: "o-1".into(), kind: Kind::Valid, traceparent: None };
    /// assert!(!e.ends_with(&Default::default()));
    /// ```
    pub fn ends_with(&self, span: &SpanRecord) -> bool {
        let service = match self.kind {
            Kind::Poison => DEAD_LETTERS,
            Kind::Valid | Kind::Transient => NOTIFIER,
        };
        span.service == service
            && span.kind == "consumer"
            && span.attr_str(ORDER_ID) == Some(self.id.as_str())
            && span.outcome() == Some("ack")
    }
}

/// The orders (of `expected`) whose journey has not ended in `spans` yet.
///
/// ```
/// use mqtrace_examples::check::{Expected, Kind, unfinished};
/// let e = vec![Expected { id: "o-1".into(), kind: Kind::Valid, traceparent: None }];
/// assert_eq!(unfinished(&e, &[]), vec!["o-1"]);
/// ```
pub fn unfinished<'a>(expected: &'a [Expected], spans: &[SpanRecord]) -> Vec<&'a str> {
    expected
        .iter()
        .filter(|e| !spans.iter().any(|s| e.ends_with(s)))
        .map(|e| e.id.as_str())
        .collect()
}

/// The result of checking one order's trace.
#[derive(Clone, Debug, Default)]
pub struct Report {
    /// The order id.
    pub order: String,
    /// Its trace, when one was found.
    pub trace_id: Option<String>,
    /// What is wrong; empty when the trace is as expected.
    pub problems: Vec<String>,
    /// What was seen, in one line.
    pub summary: String,
}

impl Report {
    /// Whether the trace is as expected.
    ///
    /// ```
    /// assert!(mqtrace_examples::check::Report::default().ok());
    /// ```
    pub fn ok(&self) -> bool {
        self.problems.is_empty()
    }
}

fn is_consumer_of(s: &SpanRecord, service: &str) -> bool {
    s.service == service && s.kind == "consumer"
}

/// Parses `00-{trace id}-{span id}-{flags}`.
fn parse_traceparent(tp: &str) -> Option<(&str, &str)> {
    let mut parts = tp.split('-');
    let (_, trace, span) = (parts.next()?, parts.next()?, parts.next()?);
    Some((trace, span))
}

/// Checks every expected order against the spans: one trace per order, from the HTTP request
/// (continuing the caller's `traceparent` when there was one) through every stage, with the
/// retries and the dead-letter branch where expected. One report per order, in order.
///
/// ```
/// use mqtrace_examples::check::{Expected, Kind, check};
/// let e = vec![Expected { id: "o-1".into(), kind: Kind::Valid, traceparent: None }];
/// let reports = check(&e, &[]);
/// assert!(!reports[0].ok());
/// ```
pub fn check(expected: &[Expected], spans: &[SpanRecord]) -> Vec<Report> {
    let traces: HashMap<String, Trace> = group(spans.to_vec())
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    let mut reports: Vec<Report> = expected
        .iter()
        .map(|e| check_one(e, spans, &traces))
        .collect();
    // One trace per order: no two orders share a trace.
    let mut owners: HashMap<String, Vec<String>> = HashMap::new();
    for r in &reports {
        if let Some(t) = &r.trace_id {
            owners.entry(t.clone()).or_default().push(r.order.clone());
        }
    }
    for r in &mut reports {
        if let Some(others) = r.trace_id.as_ref().and_then(|t| owners.get(t))
            && others.len() > 1
        {
            r.problems.push(format!(
                "its trace is shared by orders {}",
                others.join(", ")
            ));
        }
    }
    reports
}

fn check_one(e: &Expected, spans: &[SpanRecord], traces: &HashMap<String, Trace>) -> Report {
    let mut r = Report {
        order: e.id.clone(),
        ..Default::default()
    };
    let mine = |s: &&SpanRecord| s.attr_str(ORDER_ID) == Some(e.id.as_str());
    let servers: Vec<&SpanRecord> = spans
        .iter()
        .filter(mine)
        .filter(|s| s.service == ORDER_API && s.kind == "server")
        .collect();
    let server = match servers.as_slice() {
        [s] => *s,
        [] => {
            r.problems
                .push("no SERVER span of order-api for this order".into());
            return r;
        }
        many => {
            r.problems.push(format!(
                "{} SERVER spans of order-api for this order",
                many.len()
            ));
            return r;
        }
    };
    r.trace_id = Some(server.trace_id.clone());
    let Some(trace) = traces.get(&server.trace_id) else {
        r.problems.push("the request's trace has no spans".into());
        return r;
    };
    let p = &mut r.problems;

    // The request continues the caller's context, or starts the trace.
    match e.traceparent.as_deref().map(parse_traceparent) {
        Some(Some((tid, sid))) => {
            if server.trace_id != tid {
                p.push(format!(
                    "the request span is in trace {}, not the caller's {tid}",
                    server.trace_id
                ));
            }
            if server.parent_span_id.as_deref() != Some(sid) || !server.parent_is_remote {
                p.push(format!(
                    "the request span's parent is {:?}, not the caller's span {sid} (remote)",
                    server.parent_span_id
                ));
            }
        }
        Some(None) => p.push("the expected traceparent is malformed".into()),
        None => {
            if server.parent_span_id.is_some() {
                p.push("the request span has a parent, but the request had no traceparent".into());
            }
        }
    }
    // Every span about this order is in this trace, and the trace is one tree under the request.
    for s in spans.iter().filter(mine) {
        if s.trace_id != server.trace_id {
            p.push(format!(
                "{} ({}) is in another trace {}",
                s.name, s.service, s.trace_id
            ));
        }
    }
    // The top of the tree is the request, or the caller's span when the caller exported it.
    let top = trace.ancestors(server).last().copied().unwrap_or(server);
    let caller = e
        .traceparent
        .as_deref()
        .and_then(parse_traceparent)
        .map(|(_, s)| s);
    if top.span_id != server.span_id && Some(top.span_id.as_str()) != caller {
        p.push(format!(
            "the request span descends from {} ({}), not from the caller",
            top.name, top.service
        ));
    }
    let roots = trace.roots();
    if roots.len() != 1 || roots[0].span_id != top.span_id {
        let names: Vec<String> = roots
            .iter()
            .map(|s| format!("{} ({})", s.name, s.service))
            .collect();
        p.push(format!(
            "the trace is not one tree under the request; roots: {}",
            names.join(", ")
        ));
    }

    let mut attempts: Vec<&SpanRecord> = trace
        .spans
        .iter()
        .filter(|s| is_consumer_of(s, VALIDATOR))
        .collect();
    attempts.sort_by_key(|s| s.attempt());
    let seen: Vec<(Option<i64>, Option<&str>)> = attempts
        .iter()
        .map(|s| (s.attempt(), s.outcome()))
        .collect();
    let want: Vec<(Option<i64>, Option<&str>)> = match e.kind {
        Kind::Valid => vec![(Some(1), Some("ack"))],
        Kind::Transient => vec![
            (Some(1), Some("retry")),
            (Some(2), Some("retry")),
            (Some(3), Some("ack")),
        ],
        Kind::Poison => vec![(Some(1), Some("dead_letter"))],
    };
    let mut attempts_ok = seen == want;
    if !attempts_ok {
        p.push(format!(
            "validator attempts (attempt, outcome): {seen:?}, expected {want:?}"
        ));
    }
    for pair in attempts.windows(2) {
        if pair[1].link_of_type("previous_attempt") != Some(pair[0].span_id.as_str()) {
            attempts_ok = false;
            p.push(format!(
                "attempt {:?} does not link to attempt {:?} (previous_attempt)",
                pair[1].attempt(),
                pair[0].attempt()
            ));
        }
    }

    let (t0, t1) = trace.bounds();
    let took = format_duration(t1.saturating_sub(t0));
    match e.kind {
        Kind::Valid | Kind::Transient => {
            let last = trace.spans.iter().find(|s| e.ends_with(s));
            match last {
                None => p.push("no ack by the notifier in the trace".into()),
                Some(last) => {
                    // notifier ← enricher ← validator ← order-api, walking up the parents.
                    let chain = trace.ancestors(last);
                    let pos = |f: &dyn Fn(&SpanRecord) -> bool| chain.iter().position(|s| f(s));
                    let enricher = pos(&|s| is_consumer_of(s, ENRICHER));
                    let validator = pos(&|s| is_consumer_of(s, VALIDATOR));
                    let request = pos(&|s| s.span_id == server.span_id);
                    match (enricher, validator, request) {
                        (Some(a), Some(b), Some(c)) if a < b && b < c => {}
                        _ => p.push(format!(
                            "the notifier's ack does not descend from order-api → validator → enricher: {}",
                            chain
                                .iter()
                                .rev()
                                .map(|s| format!("{} ({})", s.name, s.service))
                                .collect::<Vec<_>>()
                                .join(" → ")
                        )),
                    }
                    if let Some(a) = enricher
                        && chain[a].outcome() != Some("ack")
                    {
                        p.push(format!(
                            "the enricher's outcome is {:?}, not ack (commit)",
                            chain[a].outcome()
                        ));
                    }
                    let settled = trace.spans.iter().any(|s| {
                        s.service == NOTIFIER
                            && s.name.starts_with("ack ")
                            && s.parent_span_id.as_deref() == Some(last.span_id.as_str())
                    });
                    if !settled {
                        p.push("no ack settle span under the notifier's span".into());
                    }
                }
            }
            r.summary = format!(
                "{}: {} · {} spans in {took}{}",
                e.kind.as_str(),
                trace.services().join(" → "),
                trace.spans.len(),
                if e.kind == Kind::Transient && attempts_ok {
                    " · attempts 1, 2 (retry) and 3 (ack), linked"
                } else {
                    ""
                }
            );
        }
        Kind::Poison => {
            match trace.spans.iter().find(|s| e.ends_with(s)) {
                None => p.push("no ack by the dead-letter consumer in the trace".into()),
                Some(last) => {
                    let chain = trace.ancestors(last);
                    let from_validator = chain.iter().any(|s| {
                        is_consumer_of(s, VALIDATOR) && s.outcome() == Some("dead_letter")
                    });
                    if !from_validator || !chain.iter().any(|s| s.span_id == server.span_id) {
                        p.push(
                            "the dead-letter consumer does not descend from the request and the validator's dead_letter"
                                .into(),
                        );
                    }
                }
            }
            for s in &trace.spans {
                if s.service == ENRICHER || s.service == NOTIFIER {
                    p.push(format!("a poison order reached the {}", s.service));
                    break;
                }
            }
            r.summary = format!(
                "poison: {} · {} spans in {took} · dead-lettered to orders.created.dlq",
                trace.services().join(" → "),
                trace.spans.len()
            );
        }
    }
    if e.traceparent.is_some() {
        r.summary.push_str(" · continues the caller's traceparent");
    }
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    struct B {
        spans: Vec<SpanRecord>,
        t: u64,
    }

    impl B {
        fn add(
            &mut self,
            id: &str,
            parent: Option<&str>,
            service: &str,
            kind: &str,
            name: &str,
            attrs: &[(&str, Value)],
        ) -> &mut SpanRecord {
            self.t += 1;
            self.spans.push(SpanRecord {
                trace_id: "t1".into(),
                span_id: id.into(),
                parent_span_id: parent.map(Into::into),
                name: name.into(),
                kind: kind.into(),
                service: service.into(),
                start_unix_nano: self.t,
                end_unix_nano: self.t + 100,
                attributes: attrs
                    .iter()
                    .map(|(k, v)| ((*k).to_owned(), v.clone()))
                    .collect(),
                ..Default::default()
            });
            self.spans.last_mut().expect("pushed")
        }
    }

    fn valid_trace() -> Vec<SpanRecord> {
        let o = || (ORDER_ID, Value::from("o-1"));
        let ack = || ("mqtrace.outcome", Value::from("ack"));
        let a1 = || ("mqtrace.delivery.attempt", Value::from(1));
        let mut b = B {
            spans: vec![],
            t: 0,
        };
        b.add("s", None, ORDER_API, "server", "POST /orders", &[o()]);
        b.add(
            "p",
            Some("s"),
            ORDER_API,
            "producer",
            "publish orders.created",
            &[],
        );
        b.add(
            "v",
            Some("p"),
            VALIDATOR,
            "consumer",
            "process orders.created",
            &[o(), ack(), a1()],
        );
        b.add(
            "k",
            Some("v"),
            VALIDATOR,
            "producer",
            "send orders.validated",
            &[],
        );
        b.add(
            "e",
            Some("k"),
            ENRICHER,
            "consumer",
            "process orders.validated",
            &[o(), ack()],
        );
        b.add(
            "c",
            Some("e"),
            ENRICHER,
            "producer",
            "send orders.ready",
            &[],
        );
        b.add(
            "n",
            Some("c"),
            NOTIFIER,
            "consumer",
            "subscribe orders.ready.notifier",
            &[o(), ack()],
        );
        b.add(
            "a",
            Some("n"),
            NOTIFIER,
            "client",
            "ack orders.ready.notifier",
            &[],
        );
        b.spans
    }

    fn valid() -> Vec<Expected> {
        vec![Expected {
            id: "o-1".into(),
            kind: Kind::Valid,
            traceparent: None,
        }]
    }

    #[test]
    fn a_complete_valid_trace_passes_and_is_finished() {
        let spans = valid_trace();
        let r = check(&valid(), &spans);
        assert!(r[0].ok(), "{:?}", r[0].problems);
        assert!(unfinished(&valid(), &spans).is_empty());
        assert!(
            r[0].summary
                .contains("order-api → validator → enricher → notifier")
        );
    }

    #[test]
    fn a_broken_chain_or_a_missing_stage_fails() {
        let mut spans = valid_trace();
        spans.retain(|s| s.service != ENRICHER);
        let r = check(&valid(), &spans);
        assert!(!r[0].ok());
        assert!(
            r[0].problems.iter().any(|p| p.contains("not one tree")),
            "{:?}",
            r[0].problems
        );
        assert_eq!(unfinished(&valid(), &spans), Vec::<&str>::new());

        let mut spans = valid_trace();
        spans.retain(|s| s.service != NOTIFIER);
        assert_eq!(unfinished(&valid(), &spans), vec!["o-1"]);
        assert!(!check(&valid(), &spans)[0].ok());
    }

    #[test]
    fn a_continued_request_must_have_the_callers_parent() {
        let mut spans = valid_trace();
        let mut e = valid();
        e[0].traceparent = Some("00-t1-cafe-01".into());
        assert!(!check(&e, &spans)[0].ok());
        spans[0].parent_span_id = Some("cafe".into());
        spans[0].parent_is_remote = true;
        let r = check(&e, &spans);
        assert!(r[0].ok(), "{:?}", r[0].problems);
    }

    #[test]
    fn the_transient_order_needs_three_linked_attempts() {
        let o = || (ORDER_ID, Value::from("o-1"));
        let mut spans = valid_trace();
        // Turn the single attempt into attempt 1 (retry) → republish → attempt 2 (retry) → republish → attempt 3.
        let v = spans.iter_mut().find(|s| s.span_id == "v").expect("v");
        v.attributes
            .insert("mqtrace.outcome".into(), "retry".into());
        let mut b = B { spans, t: 10 };
        b.add(
            "r2",
            Some("v"),
            VALIDATOR,
            "producer",
            "publish orders.created.retry.2",
            &[],
        );
        b.add(
            "v2",
            Some("r2"),
            VALIDATOR,
            "consumer",
            "process orders.created",
            &[
                o(),
                ("mqtrace.outcome", "retry".into()),
                ("mqtrace.delivery.attempt", 2.into()),
            ],
        );
        b.add(
            "r3",
            Some("v2"),
            VALIDATOR,
            "producer",
            "publish orders.created.retry.3",
            &[],
        );
        b.add(
            "v3",
            Some("r3"),
            VALIDATOR,
            "consumer",
            "process orders.created",
            &[
                o(),
                ("mqtrace.outcome", "ack".into()),
                ("mqtrace.delivery.attempt", 3.into()),
            ],
        );
        let mut spans = b.spans;
        for s in &mut spans {
            if s.span_id == "k" {
                s.parent_span_id = Some("v3".into());
            }
        }
        let e = vec![Expected {
            id: "o-1".into(),
            kind: Kind::Transient,
            traceparent: None,
        }];
        let r = check(&e, &spans);
        assert!(
            r[0].problems.iter().any(|p| p.contains("does not link")),
            "{:?}",
            r[0].problems
        );
        let link = |to: &str| crate::trace_view::LinkRecord {
            trace_id: "t1".into(),
            span_id: to.into(),
            attributes: [(
                "mqtrace.link.type".to_owned(),
                Value::from("previous_attempt"),
            )]
            .into_iter()
            .collect(),
        };
        for s in &mut spans {
            match s.span_id.as_str() {
                "v2" => s.links.push(link("v")),
                "v3" => s.links.push(link("v2")),
                _ => {}
            }
        }
        let r = check(&e, &spans);
        assert!(r[0].ok(), "{:?}", r[0].problems);
    }
}
