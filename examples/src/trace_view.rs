//! Reading the JSON-lines span files back, putting each trace's spans into a tree, and printing
//! it as a waterfall: one line per span, indented under its parent, with its service, start
//! offset, a duration bar, `mqtrace.outcome` and `mqtrace.delivery.attempt`.

use serde_json::{Map, Value};
use std::collections::{HashMap, HashSet};
use std::fmt::Write as _;
use std::path::Path;

/// A link as written in the span file.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct LinkRecord {
    /// The linked span's trace.
    pub trace_id: String,
    /// The linked span.
    pub span_id: String,
    /// The link's attributes (`mqtrace.link.type`: `origin`, `previous_attempt`, ...).
    pub attributes: Map<String, Value>,
}

impl LinkRecord {
    /// `mqtrace.link.type`, when set.
    ///
    /// ```
    /// let l = mqtrace_examples::trace_view::LinkRecord::default();
    /// assert_eq!(l.link_type(), None);
    /// ```
    pub fn link_type(&self) -> Option<&str> {
        self.attributes
            .get("mqtrace.link.type")
            .and_then(Value::as_str)
    }
}

/// One span as written by [`crate::telemetry::JsonLinesExporter`].
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SpanRecord {
    /// Trace id (32 hex digits).
    pub trace_id: String,
    /// Span id (16 hex digits).
    pub span_id: String,
    /// The parent's span id; `None` for a root.
    pub parent_span_id: Option<String>,
    /// Whether the parent is in another process (extracted from a request or a message).
    pub parent_is_remote: bool,
    /// Span name.
    pub name: String,
    /// `server`, `client`, `producer`, `consumer` or `internal`.
    pub kind: String,
    /// The `service.name` of the process that recorded it.
    pub service: String,
    /// Start, in Unix nanoseconds.
    pub start_unix_nano: u64,
    /// End, in Unix nanoseconds.
    pub end_unix_nano: u64,
    /// `unset`, `ok` or `error`.
    pub status: String,
    /// Attributes.
    pub attributes: Map<String, Value>,
    /// Links.
    pub links: Vec<LinkRecord>,
}

fn str_field(v: &Value, k: &str) -> Option<String> {
    v.get(k).and_then(Value::as_str).map(str::to_owned)
}

fn map_field(v: &Value, k: &str) -> Map<String, Value> {
    v.get(k)
        .and_then(Value::as_object)
        .cloned()
        .unwrap_or_default()
}

impl SpanRecord {
    /// Reads one line's JSON object; `None` if it lacks the ids or the name.
    ///
    /// ```
    /// let v = serde_json::json!({"trace_id": "t", "span_id": "s", "name": "n"});
    /// assert_eq!(mqtrace_examples::trace_view::SpanRecord::from_json(&v).unwrap().name, "n");
    /// ```
    pub fn from_json(v: &Value) -> Option<Self> {
        let links = v
            .get("links")
            .and_then(Value::as_array)
            .map(|ls| {
                ls.iter()
                    .map(|l| LinkRecord {
                        trace_id: str_field(l, "trace_id").unwrap_or_default(),
                        span_id: str_field(l, "span_id").unwrap_or_default(),
                        attributes: map_field(l, "attributes"),
                    })
                    .collect()
            })
            .unwrap_or_default();
        Some(Self {
            trace_id: str_field(v, "trace_id")?,
            span_id: str_field(v, "span_id")?,
            parent_span_id: str_field(v, "parent_span_id"),
            parent_is_remote: v
                .get("parent_is_remote")
                .and_then(Value::as_bool)
                .unwrap_or(false),
            name: str_field(v, "name")?,
            kind: str_field(v, "kind").unwrap_or_default(),
            service: str_field(v, "service").unwrap_or_default(),
            start_unix_nano: v
                .get("start_unix_nano")
                .and_then(Value::as_u64)
                .unwrap_or(0),
            end_unix_nano: v.get("end_unix_nano").and_then(Value::as_u64).unwrap_or(0),
            status: str_field(v, "status").unwrap_or_default(),
            attributes: map_field(v, "attributes"),
            links,
        })
    }

    /// A string attribute.
    ///
    /// ```
    /// let mut s = mqtrace_examples::trace_view::SpanRecord::default();
    /// s.attributes.insert("mqtrace.outcome".into(), "ack".into());
    /// assert_eq!(s.attr_str("mqtrace.outcome"), Some("ack"));
    /// ```
    pub fn attr_str(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).and_then(Value::as_str)
    }

    /// An integer attribute.
    ///
    /// ```
    /// let mut s = mqtrace_examples::trace_view::SpanRecord::default();
    /// s.attributes.insert("mqtrace.delivery.attempt".into(), 2.into());
    /// assert_eq!(s.attr_i64("mqtrace.delivery.attempt"), Some(2));
    /// ```
    pub fn attr_i64(&self, key: &str) -> Option<i64> {
        self.attributes.get(key).and_then(Value::as_i64)
    }

    /// `mqtrace.outcome`.
    ///
    /// ```
    /// assert_eq!(mqtrace_examples::trace_view::SpanRecord::default().outcome(), None);
    /// ```
    pub fn outcome(&self) -> Option<&str> {
        self.attr_str("mqtrace.outcome")
    }

    /// `mqtrace.delivery.attempt`.
    ///
    /// ```
    /// assert_eq!(mqtrace_examples::trace_view::SpanRecord::default().attempt(), None);
    /// ```
    pub fn attempt(&self) -> Option<i64> {
        self.attr_i64("mqtrace.delivery.attempt")
    }

    /// The span id of the link of type `link_type` (`previous_attempt`, `origin`), if any.
    ///
    /// ```
    /// assert_eq!(mqtrace_examples::trace_view::SpanRecord::default().link_of_type("origin"), None);
    /// ```
    pub fn link_of_type(&self, link_type: &str) -> Option<&str> {
        self.links
            .iter()
            .find(|l| l.link_type() == Some(link_type))
            .map(|l| l.span_id.as_str())
    }

    /// Duration in nanoseconds.
    ///
    /// ```
    /// let s = mqtrace_examples::trace_view::SpanRecord { start_unix_nano: 5, end_unix_nano: 7, ..Default::default() };
    /// assert_eq!(s.duration_nanos(), 2);
    /// ```
    pub fn duration_nanos(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano)
    }
}

/// Reads every `*.jsonl` file in `dir` (lines that are not span objects are skipped).
///
/// ```no_run
/// let spans = mqtrace_examples::trace_view::read_dir(std::path::Path::new("/tmp/spans"))?;
/// println!("{} spans", spans.len());
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<SpanRecord>> {
    let mut out = Vec::new();
    for file in crate::telemetry::jsonl_files(dir)? {
        let text = std::fs::read_to_string(&file)?;
        for line in text.lines() {
            // A line being written right now may be incomplete: skip it, it is read next time.
            if let Ok(v) = serde_json::from_str::<Value>(line) {
                out.extend(SpanRecord::from_json(&v));
            }
        }
    }
    Ok(out)
}

/// The spans of one trace.
#[derive(Clone, Debug, Default)]
pub struct Trace {
    /// The trace id.
    pub id: String,
    /// Its spans, by start time.
    pub spans: Vec<SpanRecord>,
}

impl Trace {
    /// The span with id `span_id`.
    ///
    /// ```
    /// assert!(mqtrace_examples::trace_view::Trace::default().span("x").is_none());
    /// ```
    pub fn span(&self, span_id: &str) -> Option<&SpanRecord> {
        self.spans.iter().find(|s| s.span_id == span_id)
    }

    /// The spans whose parent is not in this trace's spans (the root, and any span whose parent
    /// was not exported), by start time.
    ///
    /// ```
    /// assert!(mqtrace_examples::trace_view::Trace::default().roots().is_empty());
    /// ```
    pub fn roots(&self) -> Vec<&SpanRecord> {
        let ids: HashSet<&str> = self.spans.iter().map(|s| s.span_id.as_str()).collect();
        self.spans
            .iter()
            .filter(|s| s.parent_span_id.as_deref().is_none_or(|p| !ids.contains(p)))
            .collect()
    }

    /// The chain from `span` up to its root: `span`, its parent, ... (within this trace).
    ///
    /// ```
    /// let t = mqtrace_examples::trace_view::Trace::default();
    /// let s = mqtrace_examples::trace_view::SpanRecord::default();
    /// assert_eq!(t.ancestors(&s).len(), 1);
    /// ```
    pub fn ancestors<'a>(&'a self, span: &'a SpanRecord) -> Vec<&'a SpanRecord> {
        let mut chain = vec![span];
        let mut seen = HashSet::from([span.span_id.as_str()]);
        let mut cur = span;
        while let Some(p) = cur.parent_span_id.as_deref().and_then(|p| self.span(p)) {
            if !seen.insert(p.span_id.as_str()) {
                break;
            }
            chain.push(p);
            cur = p;
        }
        chain
    }

    /// Start of the earliest span and end of the latest, in Unix nanoseconds.
    ///
    /// ```
    /// assert_eq!(mqtrace_examples::trace_view::Trace::default().bounds(), (0, 0));
    /// ```
    pub fn bounds(&self) -> (u64, u64) {
        let start = self.spans.iter().map(|s| s.start_unix_nano).min();
        let end = self.spans.iter().map(|s| s.end_unix_nano).max();
        (start.unwrap_or(0), end.unwrap_or(0))
    }

    /// The services that recorded spans, in order of their first span.
    ///
    /// ```
    /// assert!(mqtrace_examples::trace_view::Trace::default().services().is_empty());
    /// ```
    pub fn services(&self) -> Vec<&str> {
        let mut out: Vec<&str> = Vec::new();
        for s in &self.spans {
            if !out.contains(&s.service.as_str()) {
                out.push(&s.service);
            }
        }
        out
    }
}

/// Groups spans by trace (each trace's spans by start time; traces by their first span).
///
/// ```
/// let traces = mqtrace_examples::trace_view::group(vec![]);
/// assert!(traces.is_empty());
/// ```
pub fn group(spans: Vec<SpanRecord>) -> Vec<Trace> {
    let mut by_trace: HashMap<String, Vec<SpanRecord>> = HashMap::new();
    for s in spans {
        by_trace.entry(s.trace_id.clone()).or_default().push(s);
    }
    let mut traces: Vec<Trace> = by_trace
        .into_iter()
        .map(|(id, mut spans)| {
            spans.sort_by_key(|s| (s.start_unix_nano, s.end_unix_nano));
            Trace { id, spans }
        })
        .collect();
    traces.sort_by_key(|t| t.bounds().0);
    traces
}

/// Formats a duration in nanoseconds: `850µs`, `12.3ms`, `1.24s`.
///
/// ```
/// use mqtrace_examples::trace_view::format_duration;
/// assert_eq!(format_duration(850_000), "850µs");
/// assert_eq!(format_duration(12_345_678), "12.3ms");
/// assert_eq!(format_duration(1_240_000_000), "1.24s");
/// ```
pub fn format_duration(nanos: u64) -> String {
    let n = nanos as f64;
    if nanos < 1_000_000 {
        format!("{:.0}µs", n / 1e3)
    } else if nanos < 1_000_000_000 {
        format!("{:.1}ms", n / 1e6)
    } else {
        format!("{:.2}s", n / 1e9)
    }
}

/// Width of the timeline column, in characters.
const BAR: usize = 30;
/// Width of the span column (indentation included).
const NAME: usize = 52;

fn bar(start: u64, end: u64, t0: u64, total: u64) -> String {
    let total = total.max(1) as f64;
    let from = (((start.saturating_sub(t0)) as f64 / total) * BAR as f64).floor() as usize;
    let to = (((end.saturating_sub(t0)) as f64 / total) * BAR as f64).ceil() as usize;
    let from = from.min(BAR - 1);
    let to = to.clamp(from + 1, BAR);
    let mut s = String::with_capacity(BAR * 3);
    s.extend(std::iter::repeat_n(' ', from));
    s.extend(std::iter::repeat_n('█', to - from));
    s.extend(std::iter::repeat_n(' ', BAR - to));
    s
}

fn truncate(s: &str, width: usize) -> String {
    if s.chars().count() <= width {
        s.to_owned()
    } else {
        let mut t: String = s.chars().take(width.saturating_sub(1)).collect();
        t.push('…');
        t
    }
}

/// What the last column says about a span: links to earlier attempts, errors, reasons.
fn note(trace: &Trace, span: &SpanRecord) -> String {
    let mut parts = Vec::new();
    // How long the message waited in the broker before this process span started.
    if let Some(q) = span
        .attributes
        .get("mqtrace.message.queue_time")
        .and_then(Value::as_f64)
        .filter(|q| q.is_finite() && *q >= 0.0)
    {
        parts.push(format!("queued {}", format_duration((q * 1e9) as u64)));
    }
    if let Some(prev) = span.link_of_type("previous_attempt") {
        match trace.span(prev).and_then(SpanRecord::attempt) {
            Some(n) => parts.push(format!("↩ follows attempt {n}")),
            None => parts.push(format!("↩ follows {prev}")),
        }
    }
    if span.parent_is_remote && span.kind == "server" {
        parts.push("continues the caller's traceparent".to_owned());
    }
    if let Some(e) = span.attr_str("error.type") {
        parts.push(format!("error.type={e}"));
    }
    // Why a message was retried or dead-lettered, or why it arrived in a dead-letter queue
    // ("expired" is only the delay queue handing a retry back: not worth a note).
    let reason = match span.outcome() {
        Some("dead_letter" | "retry") => span.attr_str("mqtrace.outcome.reason"),
        _ => span
            .attr_str("mqtrace.dead_letter.reason")
            .filter(|r| *r != "expired"),
    };
    if let Some(r) = reason {
        parts.push(truncate(r, 48));
    }
    parts.join("; ")
}

/// Renders one trace as a waterfall under a `title` line.
///
/// ```
/// use mqtrace_examples::trace_view::{SpanRecord, Trace, render};
/// let root = SpanRecord { trace_id: "t".into(), span_id: "a".into(), name: "POST /orders".into(),
///     service: "order-api".into(), start_unix_nano: 0, end_unix_nano: 10_000_000, ..Default::default() };
/// let child = SpanRecord { span_id: "b".into(), parent_span_id: Some("a".into()), name: "publish orders.created".into(),
///     start_unix_nano: 2_000_000, end_unix_nano: 4_000_000, ..root.clone() };
/// let out = render(&Trace { id: "t".into(), spans: vec![root, child] }, "order o-1");
/// assert!(out.contains("  publish orders.created"));
/// ```
pub fn render(trace: &Trace, title: &str) -> String {
    let (t0, t1) = trace.bounds();
    let total = t1.saturating_sub(t0);
    let mut out = String::new();
    let _ = writeln!(
        out,
        "── {title} ── trace {} ── {} ── {} spans, services: {}",
        trace.id,
        format_duration(total),
        trace.spans.len(),
        trace.services().join(" → ")
    );
    let _ = writeln!(
        out,
        "{:<NAME$} {:<12} {:>8} {:>8}  {:<BAR$}  {:<11} {:>3}  note",
        "span", "service", "start", "duration", "timeline", "outcome", "try"
    );
    let mut children: HashMap<&str, Vec<&SpanRecord>> = HashMap::new();
    for s in &trace.spans {
        if let Some(p) = s.parent_span_id.as_deref() {
            children.entry(p).or_default().push(s);
        }
    }
    let mut stack: Vec<(&SpanRecord, usize)> =
        trace.roots().into_iter().rev().map(|r| (r, 0)).collect();
    let mut printed = HashSet::new();
    while let Some((span, depth)) = stack.pop() {
        if !printed.insert(span.span_id.as_str()) {
            continue;
        }
        let label = format!("{}{}", "  ".repeat(depth), span.name);
        let _ = writeln!(
            out,
            "{:<NAME$} {:<12} {:>8} {:>8} |{}| {:<11} {:>3}  {}",
            truncate(&label, NAME),
            truncate(&span.service, 12),
            format_duration(span.start_unix_nano.saturating_sub(t0)),
            format_duration(span.duration_nanos()),
            bar(span.start_unix_nano, span.end_unix_nano, t0, total),
            span.outcome().unwrap_or(""),
            span.attempt().map(|a| a.to_string()).unwrap_or_default(),
            note(trace, span),
        );
        if let Some(kids) = children.get(span.span_id.as_str()) {
            for k in kids.iter().rev() {
                stack.push((k, depth + 1));
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn span(id: &str, parent: Option<&str>, start_ms: u64, end_ms: u64) -> SpanRecord {
        SpanRecord {
            trace_id: "t1".into(),
            span_id: id.into(),
            parent_span_id: parent.map(Into::into),
            name: format!("span {id}"),
            service: "svc".into(),
            start_unix_nano: start_ms * 1_000_000,
            end_unix_nano: end_ms * 1_000_000,
            ..Default::default()
        }
    }

    #[test]
    fn children_are_indented_under_their_parent_in_start_order() {
        let mut retry = span("c", Some("a"), 5, 9);
        retry
            .attributes
            .insert("mqtrace.outcome".into(), "retry".into());
        retry
            .attributes
            .insert("mqtrace.delivery.attempt".into(), 1.into());
        let mut second = span("d", Some("c"), 7, 8);
        second
            .attributes
            .insert("mqtrace.delivery.attempt".into(), 2.into());
        second.links.push(LinkRecord {
            trace_id: "t1".into(),
            span_id: "c".into(),
            attributes: [(
                "mqtrace.link.type".to_owned(),
                Value::from("previous_attempt"),
            )]
            .into_iter()
            .collect(),
        });
        let trace = group(vec![
            second,
            retry,
            span("b", Some("a"), 1, 2),
            span("a", None, 0, 10),
        ])
        .pop()
        .expect("one trace");
        let out = render(&trace, "x");
        let lines: Vec<&str> = out.lines().skip(2).collect();
        assert!(lines[0].starts_with("span a "), "{out}");
        assert!(lines[1].starts_with("  span b "), "{out}");
        assert!(lines[2].starts_with("  span c "), "{out}");
        assert!(lines[3].starts_with("    span d "), "{out}");
        assert!(lines[2].contains(" retry "), "{out}");
        assert!(lines[3].contains("follows attempt 1"), "{out}");
        // The root spans the whole timeline; a child starts further right.
        assert!(
            lines[0].contains(&format!("|{}|", "█".repeat(BAR))),
            "{out}"
        );
        assert!(lines[2].contains("|               ██"), "{out}");
    }

    #[test]
    fn a_span_whose_parent_is_missing_is_shown_as_another_root() {
        let trace = group(vec![span("a", None, 0, 10), span("x", Some("gone"), 3, 4)])
            .pop()
            .expect("one trace");
        assert_eq!(trace.roots().len(), 2);
        assert!(render(&trace, "x").contains("\nspan x "));
    }

    #[test]
    fn a_process_span_notes_its_queue_time() {
        let mut process = span("b", Some("a"), 5, 9);
        process
            .attributes
            .insert("mqtrace.message.queue_time".into(), 0.0123.into());
        let trace = group(vec![span("a", None, 0, 10), process])
            .pop()
            .expect("one trace");
        let out = render(&trace, "t");
        assert!(out.contains("queued 12.3ms"), "{out}");
    }
}
