//! Which propagator writes and reads the trace context, and the extraction result.
//!
//! By default mqtrace uses the globally configured [`TextMapPropagator`], so W3C, B3, Jaeger or
//! any composite the application installed are honoured. Two shortcuts keep the hot path
//! cheap without changing a byte on the wire:
//!
//! - when no propagator is installed (OpenTelemetry's default is a no-op), W3C trace context
//!   and baggage are used, so a fresh application propagates out of the box;
//! - when the installed propagator declares exactly the W3C fields (`traceparent`,
//!   `tracestate`, and optionally `baggage`), mqtrace writes and reads those headers with its
//!   own codec ([`crate::w3c`]): same values, no empty `tracestate`, and a reason whenever a
//!   header is rejected. Use [`Propagation::Custom`] to have a propagator always called.
//!
//! The W3C codec follows Trace Context Level 2 and Baggage (see the README's "Conformance"):
//! header names are matched ignoring case where the carrier allows it; of several
//! `traceparent` values the last valid one is used and [`Extracted::duplicate_traceparent`]
//! says so; several `tracestate` (and `baggage`) values are joined with commas; the random
//! flag and trace-state members OpenTelemetry's `TraceState` cannot hold are remembered in the
//! extracted context and written again on the messages sent while handling it (same trace).

use crate::carrier::{HeaderExtractor, InvalidHeader, header_values_ignore_case};
use crate::w3c;
use opentelemetry::baggage::BaggageExt;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator};
use opentelemetry::trace::noop::NoopTextMapPropagator;
use opentelemetry::trace::{SpanContext, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry::{Context, global};
use std::cell::{Cell, RefCell};
use std::fmt;
use std::sync::Arc;

/// Where the trace context is written to and read from.
///
/// ```
/// use std::sync::Arc;
/// use mqtrace::Propagation;
/// // The default: whatever `opentelemetry::global::set_text_map_propagator` installed.
/// let _ = Propagation::Global;
/// // Always W3C trace context + baggage, whatever is installed globally.
/// let _ = Propagation::W3c;
/// // A specific propagator, always called through.
/// let _ = Propagation::Custom(Arc::new(opentelemetry::propagation::TextMapCompositePropagator::new(vec![])));
/// ```
#[derive(Clone, Default)]
#[non_exhaustive]
pub enum Propagation {
    /// The global propagator (W3C trace context + baggage when none is installed).
    #[default]
    Global,
    /// W3C trace context and baggage, with mqtrace's codec.
    W3c,
    /// This propagator, called for every message.
    Custom(Arc<dyn TextMapPropagator + Send + Sync>),
}

impl fmt::Debug for Propagation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Global => f.write_str("Global"),
            Self::W3c => f.write_str("W3c"),
            Self::Custom(_) => f.write_str("Custom(..)"),
        }
    }
}

/// A problem found while reading the trace context of a message.
///
/// The message is still delivered; its process span becomes a new root (or keeps the part of
/// the context that was valid, e.g. when only the baggage was rejected) and records this.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ContextIssue {
    header: String,
    reason: String,
}

impl ContextIssue {
    /// Creates an issue about `header`.
    ///
    /// ```
    /// let i = mqtrace::ContextIssue::new("traceparent", "length 12, expected 55");
    /// assert_eq!(i.to_string(), "traceparent: length 12, expected 55");
    /// ```
    pub fn new(header: impl Into<String>, reason: impl fmt::Display) -> Self {
        Self {
            header: header.into(),
            reason: reason.to_string(),
        }
    }

    /// The header the problem is about.
    ///
    /// ```
    /// assert_eq!(mqtrace::ContextIssue::new("baggage", "x").header(), "baggage");
    /// ```
    pub fn header(&self) -> &str {
        &self.header
    }

    /// What was wrong.
    ///
    /// ```
    /// assert_eq!(mqtrace::ContextIssue::new("baggage", "x").reason(), "x");
    /// ```
    pub fn reason(&self) -> &str {
        &self.reason
    }
}

impl fmt::Display for ContextIssue {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.header, self.reason)
    }
}

/// The creation context read from a message's headers, with any problems found.
///
/// ```
/// use std::collections::HashMap;
/// let mut h = HashMap::new();
/// h.insert("traceparent".to_string(), "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_string());
/// let x = mqtrace::Propagation::W3c.extract(&h);
/// assert!(x.span_context().is_valid());
/// assert!(x.issues().is_empty());
/// ```
#[derive(Clone, Debug)]
pub struct Extracted {
    context: Context,
    span_context: SpanContext,
    issues: Vec<ContextIssue>,
    duplicate: bool,
}

impl Default for Extracted {
    fn default() -> Self {
        Self::from_parts(Context::new(), Vec::new())
    }
}

impl Extracted {
    /// The extracted context (remote span context and baggage); empty when none was found.
    ///
    /// ```
    /// assert!(!mqtrace::instrument::Extracted::default().context().has_active_span());
    /// # use opentelemetry::trace::TraceContextExt;
    /// ```
    pub fn context(&self) -> &Context {
        &self.context
    }

    /// The creation span context (invalid when none was found).
    ///
    /// ```
    /// assert!(!mqtrace::instrument::Extracted::default().span_context().is_valid());
    /// ```
    pub fn span_context(&self) -> &SpanContext {
        &self.span_context
    }

    /// Problems found while reading; empty when the headers were valid or absent.
    ///
    /// ```
    /// assert!(mqtrace::instrument::Extracted::default().issues().is_empty());
    /// ```
    pub fn issues(&self) -> &[ContextIssue] {
        &self.issues
    }

    /// Builds an extraction result from parts, e.g. for a payload-borne context.
    ///
    /// ```
    /// let x = mqtrace::instrument::Extracted::from_parts(opentelemetry::Context::new(), vec![]);
    /// assert!(!x.span_context().is_valid());
    /// ```
    pub fn from_parts(context: Context, issues: Vec<ContextIssue>) -> Self {
        let span_context = context.span().span_context().clone();
        Self {
            context,
            span_context,
            issues,
            duplicate: false,
        }
    }

    /// True when the headers carried several `traceparent` values (e.g. a header added twice
    /// by a Spring producer): the last valid one was used. The process span records it as
    /// `mqtrace.context.duplicate`.
    ///
    /// ```
    /// let h: Vec<(String, Vec<u8>)> = vec![
    ///     ("traceparent".into(), b"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01".to_vec()),
    ///     ("traceparent".into(), b"00-12345678901234567890123456789012-1234567890123456-01".to_vec()),
    /// ];
    /// let x = mqtrace::Propagation::W3c.extract(&h);
    /// assert!(x.duplicate_traceparent());
    /// assert_eq!(x.span_context().span_id().to_string(), "1234567890123456");
    /// ```
    pub fn duplicate_traceparent(&self) -> bool {
        self.duplicate
    }

    pub(crate) fn into_parts(self) -> (Context, Vec<ContextIssue>) {
        (self.context, self.issues)
    }
}

/// How a propagator is handled.
enum Codec {
    /// W3C through mqtrace's codec; `baggage` says whether baggage is propagated too.
    W3c { baggage: bool },
    /// Call the propagator.
    Other,
}

fn classify(p: &dyn TextMapPropagator) -> Codec {
    let (mut tp, mut ts, mut bg, mut other, mut n) = (false, false, false, false, 0);
    for f in p.fields() {
        n += 1;
        match f {
            w3c::TRACEPARENT => tp = true,
            w3c::TRACESTATE => ts = true,
            w3c::BAGGAGE => bg = true,
            _ => other = true,
        }
    }
    match (n, tp && ts && !other) {
        (0, _) => Codec::W3c { baggage: true },
        (_, true) => Codec::W3c { baggage: bg },
        _ => Codec::Other,
    }
}

impl Propagation {
    fn with_codec<R>(&self, mut f: impl FnMut(Codec, &dyn TextMapPropagator) -> R) -> R {
        match self {
            Self::Global => global::get_text_map_propagator(|p| f(classify(p), p)),
            Self::W3c => f(Codec::W3c { baggage: true }, &NoopTextMapPropagator::new()),
            Self::Custom(p) => f(Codec::Other, p.as_ref()),
        }
    }

    /// Writes `span_context` (and the baggage of `cx`) into `injector`.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
    /// let sc = SpanContext::new(TraceId::from(1_u128), SpanId::from(2_u64), TraceFlags::SAMPLED, false, TraceState::NONE);
    /// let mut h: HashMap<String, String> = HashMap::new();
    /// mqtrace::Propagation::W3c.inject(&sc, &opentelemetry::Context::new(), &mut h);
    /// assert_eq!(h["traceparent"], "00-00000000000000000000000000000001-0000000000000002-01");
    /// assert!(!h.contains_key("tracestate")); // empty trace state is not written
    /// ```
    pub fn inject(&self, span_context: &SpanContext, cx: &Context, injector: &mut dyn Injector) {
        if !span_context.is_valid() {
            return;
        }
        self.with_codec(|codec, p| match codec {
            Codec::W3c { baggage } => {
                let received = cx
                    .get::<Received>()
                    .filter(|r| r.trace_id == span_context.trace_id());
                let mut flags = span_context.trace_flags().to_u8();
                if received.is_some_and(|r| r.random) {
                    // The SDK clears the flag on a span it does not sample; the trace keeps it.
                    flags |= w3c::FLAG_RANDOM;
                }
                injector.set(
                    w3c::TRACEPARENT,
                    w3c::encode_traceparent_parts(
                        span_context.trace_id(),
                        span_context.span_id(),
                        flags,
                    ),
                );
                let state = span_context.trace_state();
                match received
                    .and_then(|r| r.tracestate.as_ref())
                    .filter(|(view, _)| view == state)
                {
                    Some((_, whole)) => injector.set(w3c::TRACESTATE, whole.clone()),
                    None if *state != TraceState::NONE => {
                        let ts = state.header();
                        if !ts.is_empty() {
                            injector.set(w3c::TRACESTATE, ts);
                        }
                    }
                    None => {}
                }
                if baggage {
                    let b = cx.baggage();
                    if !b.is_empty() {
                        let v = w3c::encode_baggage(b);
                        if !v.is_empty() {
                            injector.set(w3c::BAGGAGE, v);
                        }
                    }
                }
            }
            Codec::Other => {
                let with_span = cx.with_remote_span_context(span_context.clone());
                p.inject_context(&with_span, injector);
            }
        });
    }

    /// Reads the creation context from `headers`, recording why anything was rejected.
    ///
    /// ```
    /// use std::collections::HashMap;
    /// let mut h = HashMap::new();
    /// h.insert("traceparent".to_string(), "00-not-hex".to_string());
    /// let x = mqtrace::Propagation::W3c.extract(&h);
    /// assert!(!x.span_context().is_valid());
    /// assert_eq!(x.issues()[0].to_string(), "traceparent: length 10, expected 55");
    /// ```
    pub fn extract(&self, headers: &dyn HeaderExtractor) -> Extracted {
        self.with_codec(|codec, p| match codec {
            Codec::W3c { baggage } => extract_w3c(headers, baggage),
            Codec::Other => extract_with(p, headers),
        })
    }

    /// The header names this propagation writes (e.g. to strip them from a copied message).
    ///
    /// ```
    /// assert_eq!(mqtrace::Propagation::W3c.fields(), ["traceparent", "tracestate", "baggage"]);
    /// ```
    pub fn fields(&self) -> Vec<String> {
        self.with_codec(|codec, p| match codec {
            Codec::W3c { baggage } => {
                let mut v = vec![w3c::TRACEPARENT.to_owned(), w3c::TRACESTATE.to_owned()];
                if baggage {
                    v.push(w3c::BAGGAGE.to_owned());
                }
                v
            }
            Codec::Other => p.fields().map(str::to_owned).collect(),
        })
    }

    /// Whether this propagation writes header `key` (without allocating, unlike
    /// [`Propagation::fields`]): broker crates use it to replace a context the user's headers
    /// already carry (e.g. forwarded from another message) instead of adding a second one.
    ///
    /// ```
    /// assert!(mqtrace::Propagation::W3c.is_field("traceparent"));
    /// assert!(!mqtrace::Propagation::W3c.is_field("content-type"));
    /// ```
    pub fn is_field(&self, key: &str) -> bool {
        self.with_codec(|codec, p| match codec {
            Codec::W3c { baggage } => {
                key == w3c::TRACEPARENT
                    || key == w3c::TRACESTATE
                    || (baggage && key == w3c::BAGGAGE)
            }
            Codec::Other => p.fields().any(|f| f == key),
        })
    }
}

/// Kept in an extracted context for the messages sent while handling it: what the span
/// contexts the SDK derives from it lose.
#[derive(Debug)]
struct Received {
    trace_id: TraceId,
    /// The `random-trace-id` flag was set (the SDK clears it on spans it does not sample).
    random: bool,
    /// A trace state with members OpenTelemetry's `TraceState` cannot hold: the part it holds
    /// (to see whether the application changed it) and the whole list as received.
    tracestate: Option<(TraceState, String)>,
}

/// All values of one header (ignoring case where needed), joined with `,` when there are
/// several (RFC 9110 field combination); an unreadable value makes the whole header unusable.
fn joined<'a>(
    headers: &'a dyn HeaderExtractor,
    key: &str,
) -> Option<Result<std::borrow::Cow<'a, str>, InvalidHeader>> {
    let mut first: Option<&'a str> = None;
    let mut all: Option<String> = None;
    let mut err = None;
    let n = header_values_ignore_case(headers, key, &mut |v| match v {
        Err(e) => err = Some(e),
        Ok(v) => match (first, all.as_mut()) {
            (None, _) => first = Some(v),
            (Some(f), None) => all = Some(format!("{f},{v}")),
            (Some(_), Some(all)) => {
                all.push(',');
                all.push_str(v);
            }
        },
    });
    if n == 0 {
        return None;
    }
    if let Some(e) = err {
        return Some(Err(e));
    }
    Some(Ok(match all {
        Some(all) => std::borrow::Cow::Owned(all),
        None => std::borrow::Cow::Borrowed(first.unwrap_or_default()),
    }))
}

fn extract_w3c(headers: &dyn HeaderExtractor, with_baggage: bool) -> Extracted {
    let mut issues = Vec::new();
    let mut cx = Context::new();
    let mut last_valid = None;
    let mut last_error = None;
    let n = header_values_ignore_case(headers, w3c::TRACEPARENT, &mut |v| match v
        .map(w3c::parse_traceparent)
    {
        Ok(Ok(sc)) => last_valid = Some(sc),
        Ok(Err(e)) => last_error = Some(ContextIssue::new(w3c::TRACEPARENT, e)),
        Err(e) => last_error = Some(ContextIssue::new(w3c::TRACEPARENT, e)),
    });
    match last_valid {
        None => issues.extend(last_error),
        Some(sc) => {
            let mut received = Received {
                trace_id: sc.trace_id(),
                random: sc.trace_flags().to_u8() & w3c::FLAG_RANDOM != 0,
                tracestate: None,
            };
            let mut state = TraceState::NONE;
            match joined(headers, w3c::TRACESTATE) {
                None => {}
                Some(Err(e)) => issues.push(ContextIssue::new(w3c::TRACESTATE, e)),
                Some(Ok(ts)) if ts.trim_matches([' ', '\t', ',']).is_empty() => {}
                Some(Ok(ts)) => match w3c::tracestate_members(&ts) {
                    Err(e) => issues.push(ContextIssue::new(w3c::TRACESTATE, e)),
                    Ok(members) => {
                        let (view, complete) = w3c::otel_tracestate(&members);
                        if !complete {
                            let whole = members
                                .iter()
                                .map(|(k, v)| format!("{k}={v}"))
                                .collect::<Vec<_>>()
                                .join(",");
                            received.tracestate = Some((view.clone(), whole));
                        }
                        state = view;
                    }
                },
            }
            let sc = SpanContext::new(
                sc.trace_id(),
                sc.span_id(),
                TraceFlags::new(sc.trace_flags().to_u8()),
                true,
                state,
            );
            cx = cx.with_remote_span_context(sc);
            if received.random || received.tracestate.is_some() {
                cx = cx.with_value(received);
            }
        }
    }
    if with_baggage {
        match joined(headers, w3c::BAGGAGE) {
            None => {}
            Some(Err(e)) => issues.push(ContextIssue::new(w3c::BAGGAGE, e)),
            Some(Ok(v)) => {
                let (b, err) = w3c::parse_baggage(&v);
                if let Some(err) = err {
                    issues.push(ContextIssue::new(w3c::BAGGAGE, err));
                }
                if !b.is_empty() {
                    cx = cx.with_baggage(b);
                }
            }
        }
    }
    let mut x = Extracted::from_parts(cx, issues);
    x.duplicate = n > 1;
    x
}

/// Adapts a [`HeaderExtractor`] to OpenTelemetry's `Extractor`, noting unreadable headers.
/// Names are matched ignoring case where needed; of several values the last readable one is
/// given to the propagator.
struct Reader<'a> {
    headers: &'a dyn HeaderExtractor,
    issues: RefCell<Vec<ContextIssue>>,
    duplicate: Cell<bool>,
}

impl Extractor for Reader<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        let mut last = None;
        let mut error = None;
        let n = header_values_ignore_case(self.headers, key, &mut |v| match v {
            Ok(v) => last = Some(v),
            Err(e) => error = Some(e),
        });
        if n > 1 && key == w3c::TRACEPARENT {
            self.duplicate.set(true);
        }
        if last.is_none()
            && let Some(e) = error
        {
            let mut issues = self.issues.borrow_mut();
            if !issues.iter().any(|i| i.header == key) {
                issues.push(ContextIssue::new(key, e));
            }
        }
        last
    }

    fn keys(&self) -> Vec<&str> {
        self.headers.header_keys()
    }
}

fn extract_with(p: &dyn TextMapPropagator, headers: &dyn HeaderExtractor) -> Extracted {
    let reader = Reader {
        headers,
        issues: RefCell::new(Vec::new()),
        duplicate: Cell::new(false),
    };
    let cx = p.extract_with_context(&Context::new(), &reader);
    let duplicate = reader.duplicate.get();
    let mut issues = reader.issues.into_inner();
    if !cx.span().span_context().is_valid() && issues.is_empty() {
        // The propagator says nothing about why; find the reason where we can.
        let present: Vec<String> = p
            .fields()
            .filter(|f| headers.header(f).is_some())
            .map(str::to_owned)
            .collect();
        if present.iter().any(|f| f == w3c::TRACEPARENT)
            && let Some(Ok(tp)) = headers.header(w3c::TRACEPARENT)
            && let Err(e) = w3c::parse_traceparent(tp)
        {
            issues.push(ContextIssue::new(w3c::TRACEPARENT, e));
        }
        if issues.is_empty() && !present.is_empty() {
            issues.push(ContextIssue::new(
                present.join(","),
                "the propagator found no valid span context",
            ));
        }
    }
    if cx.baggage().is_empty()
        && let Some(Ok(v)) = headers.header(w3c::BAGGAGE)
        && v.len() > w3c::MAX_BAGGAGE_BYTES
        && p.fields().any(|f| f == w3c::BAGGAGE)
    {
        issues.push(ContextIssue::new(
            w3c::BAGGAGE,
            w3c::BaggageError::TooLarge(v.len()),
        ));
    }
    let mut x = Extracted::from_parts(cx, issues);
    x.duplicate = duplicate;
    x
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    const TP: &str = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";

    fn headers(pairs: &[(&str, &str)]) -> HashMap<String, String> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect()
    }

    #[test]
    fn w3c_extract_reads_state_and_baggage() {
        let h = headers(&[
            ("traceparent", TP),
            ("tracestate", "rojo=00f067aa0ba902b7"),
            ("baggage", "tenant=acme"),
        ]);
        let x = Propagation::W3c.extract(&h);
        assert!(x.issues().is_empty(), "{:?}", x.issues());
        assert_eq!(
            x.span_context().trace_state().get("rojo"),
            Some("00f067aa0ba902b7")
        );
        assert_eq!(
            x.context().baggage().get("tenant").map(|v| v.as_str()),
            Some("acme")
        );
    }

    #[test]
    fn bad_tracestate_keeps_the_parent_and_says_so() {
        let h = headers(&[("traceparent", TP), ("tracestate", "rojo,congo")]);
        let x = Propagation::W3c.extract(&h);
        assert!(x.span_context().is_valid());
        assert_eq!(x.issues()[0].header(), "tracestate");
    }

    #[test]
    fn custom_propagator_issues_are_diagnosed() {
        let p = Propagation::Custom(Arc::new(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        ));
        let h = headers(&[(
            "traceparent",
            "ff-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        )]);
        let x = p.extract(&h);
        assert!(!x.span_context().is_valid());
        assert_eq!(
            x.issues()[0].to_string(),
            "traceparent: version ff is forbidden"
        );
        let ok = p.extract(&headers(&[("traceparent", TP)]));
        assert!(ok.span_context().is_valid() && ok.issues().is_empty());
    }

    #[test]
    fn w3c_inject_matches_the_sdk_propagator_byte_for_byte() {
        use opentelemetry::trace::{SpanId, TraceFlags, TraceId, TraceState};
        let state = TraceState::from_key_value([("rojo", "00f067aa0ba902b7")]).expect("valid");
        let sc = SpanContext::new(
            TraceId::from(0x0af7651916cd43dd8448eb211c80319c_u128),
            SpanId::from(0xb7ad6b7169203331_u64),
            TraceFlags::SAMPLED,
            false,
            state,
        );
        let mut ours: HashMap<String, String> = HashMap::new();
        Propagation::W3c.inject(&sc, &Context::new(), &mut ours);
        let mut theirs: HashMap<String, String> = HashMap::new();
        opentelemetry_sdk::propagation::TraceContextPropagator::new()
            .inject_context(&Context::new().with_remote_span_context(sc), &mut theirs);
        assert_eq!(ours, theirs);
    }
}
