//! Helpers every broker's tests use the same way: a time limit on a test body, waiting for
//! exported spans, the fast retry policy, and running a Python interop peer and reading its
//! spans. Nothing here knows a broker's API.
//!
//! ```
//! # #[tokio::main(flavor = "current_thread")] async fn main() {
//! use mqtrace_integration_tests::support::{fast, within};
//! within(async { assert_eq!(fast(3).max_attempts(), 3) }).await;
//! # }
//! ```

use mqtrace::retry::RetryPolicy;
use mqtrace::testing::{Spans, TestTelemetry};
use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId};
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// How long a whole test body may take before [`within`] fails it.
pub const TEST_LIMIT: Duration = Duration::from_secs(120);

/// Runs a test body, failing the test if it takes longer than [`TEST_LIMIT`].
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// mqtrace_integration_tests::support::within(async { assert_eq!(1 + 1, 2) }).await;
/// # }
/// ```
pub async fn within<F: Future<Output = ()>>(body: F) {
    if tokio::time::timeout(TEST_LIMIT, body).await.is_err() {
        panic!("test did not finish within {TEST_LIMIT:?}");
    }
}

/// The exported spans once at least `count` spans named `name` have ended, failing the test
/// (with the spans exported so far) after [`WAIT`](crate::WAIT).
///
/// ```
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use opentelemetry::trace::{Tracer, TracerProvider};
/// let t = mqtrace::testing::TestTelemetry::new();
/// t.provider().tracer("doc").in_span("done", |_| {});
/// let spans = mqtrace_integration_tests::support::wait(&t, "done", 1).await;
/// assert_eq!(spans.named("done").len(), 1);
/// # }
/// ```
pub async fn wait(t: &TestTelemetry, name: &str, count: usize) -> Spans {
    t.wait_for(|s| s.named(name).len() >= count, crate::WAIT)
        .await
        .unwrap_or_else(|e| panic!("waiting for {count} span(s) {name:?}: {e}"))
}

/// A retry policy of `max_attempts` attempts whose delays are short (50 ms, doubling) and
/// without jitter, so retry tests run in well under a second per attempt.
///
/// ```
/// let p = mqtrace_integration_tests::support::fast(4);
/// assert_eq!(p.max_attempts(), 4);
/// ```
pub fn fast(max_attempts: u32) -> RetryPolicy {
    RetryPolicy::exponential(max_attempts)
        .with_initial_delay(Duration::from_millis(50))
        .with_jitter(0.0)
}

/// The repository's root (where `scripts/` and `integration-tests/interop/` are).
///
/// ```
/// let root = mqtrace_integration_tests::support::repo_root();
/// assert!(root.join("scripts/interop-venv.sh").exists());
/// ```
pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// The interop venv's python, from `scripts/interop-venv.sh` (it creates the venv with the
/// pinned `integration-tests/interop/requirements-*.txt` on first use). Run once per test
/// process, so parallel tests do not create the venv twice at the same time.
///
/// ```no_run
/// // Creates the venv on first use (needs python3 and PyPI).
/// let python = mqtrace_integration_tests::support::venv_python().expect("the interop venv");
/// # let _ = python;
/// ```
pub fn venv_python() -> Result<String, String> {
    static PYTHON: std::sync::OnceLock<Result<String, String>> = std::sync::OnceLock::new();
    PYTHON
        .get_or_init(|| {
            let venv = std::process::Command::new(repo_root().join("scripts/interop-venv.sh"))
                .output()
                .map_err(|e| format!("scripts/interop-venv.sh does not run: {e}"))?;
            if !venv.status.success() {
                return Err(format!(
                    "scripts/interop-venv.sh failed (it needs python3 and PyPI): {}",
                    String::from_utf8_lossy(&venv.stderr)
                ));
            }
            Ok(String::from_utf8_lossy(&venv.stdout).trim().to_owned())
        })
        .clone()
}

/// Runs the Python peer `integration-tests/interop/{script}` with `args` and the environment
/// `env` in the interop venv and returns the JSON it prints (its spans and what it saw).
/// Fails the test if the venv or the peer fails, if it prints no JSON, or after `limit`
/// (which must cover creating the venv on first use).
///
/// ```no_run
/// # #[tokio::main(flavor = "current_thread")] async fn main() {
/// use std::time::Duration;
/// let url = mqtrace_integration_tests::amqp_url();
/// let peer = mqtrace_integration_tests::support::python_peer(
///     "rabbitmq_peer.py", &["publish", "some-queue"], &[("AMQP_URL", url)], Duration::from_secs(100),
/// ).await;
/// # let _ = peer;
/// # }
/// ```
pub async fn python_peer(
    script: &str,
    args: &[&str],
    env: &[(&str, String)],
    limit: Duration,
) -> serde_json::Value {
    let script = repo_root().join("integration-tests/interop").join(script);
    let args: Vec<String> = args.iter().map(|a| (*a).to_owned()).collect();
    let env: Vec<(String, String)> = env
        .iter()
        .map(|(k, v)| ((*k).to_owned(), v.clone()))
        .collect();
    let run = tokio::task::spawn_blocking(move || {
        let python = venv_python()?;
        std::process::Command::new(python)
            .arg(script)
            .args(&args)
            .envs(env)
            .output()
            .map_err(|e| format!("the python peer does not run: {e}"))
    });
    let out = match tokio::time::timeout(limit, run).await {
        Ok(Ok(Ok(out))) => out,
        Ok(Ok(Err(e))) => panic!("{e}"),
        Ok(Err(e)) => panic!("python peer task: {e}"),
        Err(_) => panic!("the python peer did not finish within {limit:?}"),
    };
    assert!(
        out.status.success(),
        "python peer failed: {}\n{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
        panic!(
            "python peer printed no JSON ({e}): {}",
            String::from_utf8_lossy(&out.stdout)
        )
    })
}

/// The first span of kind `kind` (`"PRODUCER"`, `"CONSUMER"`, …) whose name ends with
/// `name_ends` (`""` for any name) among the spans a Python peer printed; fails the test,
/// showing the peer's output, if there is none.
///
/// ```
/// let peer = serde_json::json!({"spans": [{"kind": "PRODUCER", "name": "orders send"}]});
/// let span = mqtrace_integration_tests::support::python_span(&peer, "PRODUCER", " send");
/// assert_eq!(span["name"], "orders send");
/// ```
pub fn python_span<'a>(
    peer: &'a serde_json::Value,
    kind: &str,
    name_ends: &str,
) -> &'a serde_json::Value {
    peer["spans"]
        .as_array()
        .and_then(|spans| {
            spans.iter().find(|s| {
                s["kind"] == kind && s["name"].as_str().is_some_and(|n| n.ends_with(name_ends))
            })
        })
        .unwrap_or_else(|| panic!("no {kind} span '*{name_ends}' from the python peer: {peer}"))
}

/// The span context (sampled, remote) of a span a Python peer printed, from its hex
/// `trace_id` and `span_id`; fails the test if either is missing or not hex.
///
/// ```
/// let span = serde_json::json!({
///     "trace_id": "4bf92f3577b34da6a3ce929d0e0e4736", "span_id": "00f067aa0ba902b7",
/// });
/// let sc = mqtrace_integration_tests::support::python_context(&span);
/// assert_eq!(sc.span_id().to_string(), "00f067aa0ba902b7");
/// assert!(sc.is_remote() && sc.is_sampled());
/// ```
pub fn python_context(span: &serde_json::Value) -> SpanContext {
    let hex = |key: &str| {
        span[key]
            .as_str()
            .unwrap_or_else(|| panic!("no {key} in {span}"))
    };
    SpanContext::new(
        TraceId::from_hex(hex("trace_id")).unwrap_or_else(|e| panic!("trace id of {span}: {e}")),
        SpanId::from_hex(hex("span_id")).unwrap_or_else(|e| panic!("span id of {span}: {e}")),
        TraceFlags::SAMPLED,
        true,
        Default::default(),
    )
}

/// The baggage mqtrace sends in the interop tests: `%`, an escape-like `%41`, `,` `;` `=`,
/// non-ASCII, and a member with properties whose value holds a comma (`prop=v;p=a%2Cb`).
///
/// ```
/// let b = mqtrace_integration_tests::support::interop_baggage();
/// assert_eq!(b.len(), 5);
/// ```
pub fn interop_baggage() -> opentelemetry::baggage::Baggage {
    let mut b = opentelemetry::baggage::Baggage::new();
    for (k, v) in [
        ("pct", "10%"),
        ("esc", "%41"),
        ("sep", "a,b;c=d"),
        ("uni", "héllo€"),
    ] {
        b.insert(k, v);
    }
    b.insert_with_metadata(
        "prop",
        "v",
        opentelemetry::baggage::BaggageMetadata::from("p=a,b"),
    );
    b
}

/// What Python's SDK decodes from it: every value exactly; the SDK has no properties, so the
/// member with properties reads as its value followed by the decoded properties.
///
/// ```
/// let v = mqtrace_integration_tests::support::interop_baggage_as_python_reads_it();
/// assert_eq!(v["pct"], "10%");
/// ```
pub fn interop_baggage_as_python_reads_it() -> serde_json::Value {
    serde_json::json!({
        "pct": "10%", "esc": "%41", "sep": "a,b;c=d", "uni": "héllo€", "prop": "v;p=a,b",
    })
}

/// The `traceparent` a sampled span `sc` is propagated with, spelled out as the W3C format
/// gives it (independent of mqtrace's own encoder, which the tests check).
///
/// ```
/// use opentelemetry::trace::{SpanContext, SpanId, TraceFlags, TraceId, TraceState};
/// let sc = SpanContext::new(TraceId::from(1_u128), SpanId::from(2_u64), TraceFlags::SAMPLED, false, TraceState::NONE);
/// assert_eq!(
///     mqtrace_integration_tests::support::traceparent_of(&sc),
///     "00-00000000000000000000000000000001-0000000000000002-01"
/// );
/// ```
pub fn traceparent_of(sc: &SpanContext) -> String {
    format!("00-{}-{}-01", sc.trace_id(), sc.span_id())
}

/// What a relay's send span must be under `rule` (`mqtrace::ExistingContext`), on every
/// broker: a child of the relay's process span `relay`, linking the first producer's span
/// `first`; under `Keep` a CLIENT span (the kept context is the message's creation context),
/// under `Replace` a PRODUCER span whose link to `first` is tagged `replaced`.
///
/// ```
/// use mqtrace::testing::TestTelemetry;
/// use opentelemetry::trace::{Link, Span, SpanKind, Tracer, TracerProvider};
/// let t = TestTelemetry::new();
/// let tracer = t.provider().tracer("doc");
/// let first = tracer.start("first");
/// let first_cx = first.span_context().clone();
/// drop(first);
/// tracer.in_span("relay", |cx| {
///     let link = Link::new(first_cx.clone(), vec![opentelemetry::KeyValue::new(mqtrace::attributes::LINK_TYPE, "replaced")], 0);
///     tracer.span_builder("send").with_kind(SpanKind::Producer).with_links(vec![link]).start_with_context(&tracer, &cx);
/// });
/// let spans = t.spans();
/// mqtrace_integration_tests::support::assert_relay_send(
///     mqtrace::ExistingContext::Replace, spans.one("send"), spans.one("relay"), spans.one("first"),
/// );
/// ```
pub fn assert_relay_send(
    rule: mqtrace::ExistingContext,
    forward: &opentelemetry_sdk::trace::SpanData,
    relay: &opentelemetry_sdk::trace::SpanData,
    first: &opentelemetry_sdk::trace::SpanData,
) {
    use mqtrace::testing::SpanDataExt;
    use opentelemetry::trace::SpanKind;
    forward.assert_child_of(relay);
    forward.assert_links_to(&first.span_context);
    match rule {
        mqtrace::ExistingContext::Keep => forward.assert_kind(SpanKind::Client),
        _ => {
            forward.assert_kind(SpanKind::Producer);
            assert_eq!(
                forward
                    .link_of_type("replaced")
                    .map(|l| l.span_context.span_id()),
                Some(first.span_context.span_id()),
                "the replaced context is linked as `replaced`"
            );
        }
    }
}
