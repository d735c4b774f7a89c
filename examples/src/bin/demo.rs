//! `demo`: the steps of `scripts/demo.sh`, which runs the whole pipeline.
//!
//! ```text
//! demo setup                       create the queues, the Kafka topic, the Pub/Sub topic and subscription
//! demo send [--url HOST:PORT]      send the demo's orders to the order API; writes {spans}/orders.json
//! demo wait [--timeout SECS]       wait until every order was acked by the notifier or dead-lettered
//! demo waterfall [--check]         print each order's trace as a waterfall, then the stages' metrics
//!                                  table; --check verifies both
//! demo teardown                    delete the Pub/Sub subscription and topic again
//! ```
//!
//! `--spans DIR` (default `$MQTRACE_DEMO_SPANS`) is where the workers write their spans,
//! `--metrics DIR` (default `$MQTRACE_DEMO_METRICS`) their metrics; without it `waterfall`
//! prints no metrics table.
//! `demo send` is itself traced as the service `checkout-web`: one order is sent from inside a
//! CLIENT span whose `traceparent` the order API continues.
#![forbid(unsafe_code)]

use mqtrace_examples::check::{self, Expected, Kind};
use mqtrace_examples::metrics_view;
use mqtrace_examples::telemetry::{METRICS_DIR_VAR, SPANS_DIR_VAR};
use mqtrace_examples::trace_view::{self, SpanRecord, Trace};
use mqtrace_examples::{Error, ORDER_ID, env, http};
use opentelemetry::trace::{SpanKind, TraceContextExt, Tracer};
use opentelemetry::{Context, KeyValue, global};
use serde_json::{Value, json};
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Duration, Instant};

const USAGE: &str = "usage: demo <setup|send|wait|waterfall|teardown> [--spans DIR] [--metrics DIR] [--url HOST:PORT] [--timeout SECS] [--check]";

struct Args {
    command: String,
    spans: Option<PathBuf>,
    metrics: Option<PathBuf>,
    url: String,
    timeout: Duration,
    check: bool,
}

fn parse_args() -> Result<Args, String> {
    let mut it = std::env::args().skip(1);
    let command = it.next().ok_or(USAGE)?;
    let mut args = Args {
        command,
        spans: std::env::var_os(SPANS_DIR_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        metrics: std::env::var_os(METRICS_DIR_VAR)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from),
        url: env::order_api_addr(),
        timeout: Duration::from_secs(90),
        check: false,
    };
    while let Some(a) = it.next() {
        match a.as_str() {
            "--spans" => args.spans = Some(it.next().ok_or(USAGE)?.into()),
            "--metrics" => args.metrics = Some(it.next().ok_or(USAGE)?.into()),
            "--url" => {
                let u = it.next().ok_or(USAGE)?;
                args.url = u
                    .trim_start_matches("http://")
                    .trim_end_matches('/')
                    .to_owned();
            }
            "--timeout" => {
                let s: u64 = it
                    .next()
                    .and_then(|s| s.parse().ok())
                    .ok_or("--timeout takes seconds")?;
                args.timeout = Duration::from_secs(s);
            }
            "--check" => args.check = true,
            other => return Err(format!("unknown argument {other:?}\n{USAGE}")),
        }
    }
    Ok(args)
}

fn main() -> ExitCode {
    let args = match parse_args() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            return ExitCode::from(2);
        }
    };
    let spans = || {
        args.spans
            .clone()
            .ok_or_else(|| Error::from(format!("set {SPANS_DIR_VAR} or pass --spans DIR")))
    };
    let result: Result<ExitCode, Error> = match args.command.as_str() {
        "setup" => runtime()
            .and_then(|rt| rt.block_on(setup()))
            .map(|()| ExitCode::SUCCESS),
        "send" => {
            // Traced as the caller `checkout-web` (its span file goes to the spans directory).
            return mqtrace_examples::run_worker("checkout-web", async {
                send(&args.url, &spans()?).await
            });
        }
        "teardown" => runtime()
            .and_then(|rt| rt.block_on(teardown()))
            .map(|()| ExitCode::SUCCESS),
        "wait" => spans().and_then(|dir| wait(&dir, args.timeout)),
        "waterfall" => spans().and_then(|dir| waterfall(&dir, args.metrics.as_deref(), args.check)),
        _ => Err(USAGE.into()),
    };
    match result {
        Ok(code) => code,
        Err(e) => {
            eprintln!("[demo] {e}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> Result<tokio::runtime::Runtime, Error> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}

/// Bounds one set-up step.
async fn bounded<T, E: Into<Error>>(
    what: &str,
    fut: impl std::future::Future<Output = Result<T, E>>,
) -> Result<T, Error> {
    match tokio::time::timeout(Duration::from_secs(20), fut).await {
        Ok(r) => r.map_err(|e| format!("{what}: {}", e.into()).into()),
        Err(_) => Err(format!("{what}: no answer within 20 s").into()),
    }
}

/// Creates what the pipeline needs (idempotent): RabbitMQ's queues, the Kafka topic (Kafka
/// brokers such as Tansu do not create topics on first use), the Pub/Sub topic and the
/// notifier's subscription.
async fn setup() -> Result<(), Error> {
    use lapin::options::QueueDeclareOptions;
    use lapin::types::FieldTable;
    use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
    use rdkafka::client::DefaultClientContext;
    use rdkafka::types::RDKafkaErrorCode;

    let url = env::amqp_url();
    let conn = bounded(
        "connecting to RabbitMQ",
        lapin::Connection::connect(&url, lapin::ConnectionProperties::default()),
    )
    .await?;
    let channel = conn.create_channel().await?;
    for q in [env::ORDERS_CREATED, env::ORDERS_DEAD_LETTERS] {
        let declare = channel.queue_declare(
            q.into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        );
        bounded(&format!("declaring queue {q}"), declare).await?;
    }
    let _ = conn.close(200, "done".into()).await;
    eprintln!(
        "[demo] RabbitMQ: queues {} and {}",
        env::ORDERS_CREATED,
        env::ORDERS_DEAD_LETTERS
    );

    let admin: AdminClient<DefaultClientContext> = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", env::kafka_bootstrap_servers())
        .create()?;
    let topics = [NewTopic::new(
        env::ORDERS_VALIDATED,
        1,
        TopicReplication::Fixed(1),
    )];
    let options = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for r in bounded(
        "creating the Kafka topic",
        admin.create_topics(&topics, &options),
    )
    .await?
    {
        match r {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((name, code)) => return Err(format!("creating Kafka topic {name}: {code}").into()),
        }
    }
    eprintln!("[demo] Kafka: topic {}", env::ORDERS_VALIDATED);

    let emulator = env::pubsub_emulator();
    emulator
        .check(&env::pubsub_project(), Duration::from_secs(10))
        .await?;
    let topic = env::pubsub_topic(env::ORDERS_READY);
    let topics = emulator.topic_admin().build().await?;
    if let Err(e) = topics.create_topic().set_name(&topic).send().await {
        // Already there is fine; anything else is not.
        bounded(
            &format!("topic {topic} ({e})"),
            topics.get_topic().set_topic(&topic).send(),
        )
        .await?;
    }
    let subscription = env::pubsub_subscription(env::NOTIFIER_SUBSCRIPTION);
    let subscriptions = emulator.subscription_admin().build().await?;
    let created = subscriptions
        .create_subscription()
        .set_name(&subscription)
        .set_topic(&topic)
        .set_ack_deadline_seconds(10)
        .send()
        .await;
    if let Err(e) = created {
        bounded(
            &format!("subscription {subscription} ({e})"),
            subscriptions
                .get_subscription()
                .set_subscription(&subscription)
                .send(),
        )
        .await?;
    }
    eprintln!("[demo] Pub/Sub: topic {topic}, subscription {subscription}");
    Ok(())
}

/// Deletes the Pub/Sub subscription and topic `setup` created (the RabbitMQ queues and the
/// Kafka topic stay: their consumers keep their place in them).
async fn teardown() -> Result<(), Error> {
    let emulator = env::pubsub_emulator();
    let subscription = env::pubsub_subscription(env::NOTIFIER_SUBSCRIPTION);
    let subscriptions = emulator.subscription_admin().build().await?;
    bounded(
        &format!("deleting subscription {subscription}"),
        subscriptions
            .delete_subscription()
            .set_subscription(&subscription)
            .send(),
    )
    .await?;
    let topic = env::pubsub_topic(env::ORDERS_READY);
    let topics = emulator.topic_admin().build().await?;
    bounded(
        &format!("deleting topic {topic}"),
        topics.delete_topic().set_topic(&topic).send(),
    )
    .await?;
    eprintln!("[demo] Pub/Sub: deleted {subscription} and {topic}");
    Ok(())
}

/// The demo's orders: two plain ones, one sent by a traced caller, one that fails transiently
/// twice, and a poison one.
fn orders(run: &str) -> Vec<(Expected, Value)> {
    let item = |sku: &str, qty: i64| json!({"sku": sku, "qty": qty});
    let order = |n: u32, kind: Kind, body: Value| {
        let id = format!("o-{run}-{n}");
        let mut body = body;
        if let Some(m) = body.as_object_mut() {
            m.insert("id".into(), json!(id));
        }
        (
            Expected {
                id,
                kind,
                traceparent: None,
            },
            body,
        )
    };
    vec![
        order(
            1,
            Kind::Valid,
            json!({"customer": "c-17", "items": [item("book-42", 1)]}),
        ),
        order(
            2,
            Kind::Valid,
            json!({"customer": "c-23", "items": [item("pen-7", 3), item("ink-2", 5)]}),
        ),
        order(
            3,
            Kind::Transient,
            json!({"customer": "c-31", "items": [item("lamp-1", 1)], "simulate": "transient_failure"}),
        ),
        order(4, Kind::Poison, json!({"customer": "c-40", "items": []})),
        order(
            5,
            Kind::Valid,
            json!({"customer": "c-52", "items": [item("mug-3", 2)]}),
        ),
    ]
}

/// The order sent from inside the caller's CLIENT span.
const TRACED_CALLER: usize = 1;

async fn send(addr: &str, spans: &Path) -> Result<(), Error> {
    // Wait (bounded) for the API to listen.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        match http::send(addr, "GET", "/health", &[], b"", Duration::from_secs(2)).await {
            Ok((200, _)) => break,
            other if Instant::now() > deadline => {
                return Err(format!("the order API at {addr} is not up: {other:?}").into());
            }
            _ => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
    let run = format!(
        "{:x}",
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() % 0x100_0000)
            .unwrap_or(0)
    );
    let tracer = global::tracer("mqtrace-examples/checkout-web");
    let mut expected = Vec::new();
    for (i, (mut e, body)) in orders(&run).into_iter().enumerate() {
        let body = body.to_string();
        let (status, answer) = if i == TRACED_CALLER {
            // A caller with its own trace: a CLIENT span, its context in the request headers.
            let span = tracer
                .span_builder("POST /orders")
                .with_kind(SpanKind::Client)
                .with_attributes([
                    KeyValue::new("http.request.method", "POST"),
                    KeyValue::new("url.full", format!("http://{addr}/orders")),
                    KeyValue::new(ORDER_ID, e.id.clone()),
                ])
                .start(&tracer);
            let cx = Context::current_with_span(span);
            let mut headers: HashMap<String, String> = HashMap::new();
            global::get_text_map_propagator(|p| p.inject_context(&cx, &mut headers));
            headers.insert("tracestate".into(), "checkout=web".into());
            e.traceparent = headers.get("traceparent").cloned();
            let hs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            let r = http::send(
                addr,
                "POST",
                "/orders",
                &hs,
                body.as_bytes(),
                Duration::from_secs(10),
            )
            .await?;
            cx.span()
                .set_attribute(KeyValue::new("http.response.status_code", i64::from(r.0)));
            cx.span().end();
            r
        } else {
            http::send(
                addr,
                "POST",
                "/orders",
                &[],
                body.as_bytes(),
                Duration::from_secs(10),
            )
            .await?
        };
        if status != 202 {
            return Err(format!("order {}: HTTP {status}: {answer}", e.id).into());
        }
        eprintln!(
            "[demo] sent {} ({}{}) → {status} {answer}",
            e.id,
            e.kind.as_str(),
            if e.traceparent.is_some() {
                ", with the caller's traceparent"
            } else {
                ""
            }
        );
        expected.push(e);
    }
    let file =
        json!({"run": run, "orders": expected.iter().map(Expected::to_json).collect::<Vec<_>>()});
    std::fs::create_dir_all(spans)?;
    std::fs::write(spans.join("orders.json"), file.to_string())?;
    Ok(())
}

fn read_expected(spans: &Path) -> Result<Vec<Expected>, Error> {
    let path = spans.join("orders.json");
    let text = std::fs::read_to_string(&path)
        .map_err(|e| format!("{}: {e} (run `demo send` first)", path.display()))?;
    let v: Value = serde_json::from_str(&text)?;
    Ok(v["orders"]
        .as_array()
        .map(|a| a.iter().filter_map(Expected::from_json).collect())
        .unwrap_or_default())
}

fn wait(spans: &Path, timeout: Duration) -> Result<ExitCode, Error> {
    let expected = read_expected(spans)?;
    let deadline = Instant::now() + timeout;
    let mut last = usize::MAX;
    loop {
        let records = trace_view::read_dir(spans)?;
        let missing = check::unfinished(&expected, &records);
        if missing.is_empty() {
            eprintln!("[demo] all {} orders finished", expected.len());
            return Ok(ExitCode::SUCCESS);
        }
        if missing.len() != last {
            eprintln!("[demo] waiting for {}", missing.join(", "));
            last = missing.len();
        }
        if Instant::now() > deadline {
            eprintln!(
                "[demo] gave up after {timeout:?}; not finished: {}",
                missing.join(", ")
            );
            return Ok(ExitCode::FAILURE);
        }
        std::thread::sleep(Duration::from_millis(250));
    }
}

fn waterfall(spans: &Path, metrics: Option<&Path>, check_mode: bool) -> Result<ExitCode, Error> {
    let expected = read_expected(spans)?;
    let records: Vec<SpanRecord> = trace_view::read_dir(spans)?;
    let reports = check::check(&expected, &records);
    let traces: HashMap<String, Trace> = trace_view::group(records.clone())
        .into_iter()
        .map(|t| (t.id.clone(), t))
        .collect();
    for (e, r) in expected.iter().zip(&reports) {
        match r.trace_id.as_ref().and_then(|t| traces.get(t)) {
            Some(t) => println!(
                "{}",
                trace_view::render(t, &format!("order {} ({})", e.id, e.kind.as_str()))
            ),
            None => println!(
                "── order {} ({}) ── no trace found\n",
                e.id,
                e.kind.as_str()
            ),
        }
    }
    let shown: Vec<&String> = reports.iter().filter_map(|r| r.trace_id.as_ref()).collect();
    let others = traces.keys().filter(|t| !shown.contains(t)).count();
    if others > 0 {
        println!(
            "({others} other trace(s) in {} not shown, e.g. messages left from earlier runs)\n",
            spans.display()
        );
    }
    let mut failed = 0;
    for r in &reports {
        if r.ok() {
            println!("✔ {} {}", r.order, r.summary);
        } else {
            failed += 1;
            println!("✘ {} {}", r.order, r.summary);
            for p in &r.problems {
                println!("    - {p}");
            }
        }
    }
    let mut checks = reports.len();
    if let Some(dir) = metrics {
        // The table is one more check: its counts add up and match the orders sent.
        checks += 1;
        let stages = metrics_view::read_dir(dir)
            .map_err(|e| format!("metrics in {}: {e}", dir.display()))?;
        println!("\n{}", metrics_view::render(&stages));
        let count = |k: Kind| expected.iter().filter(|e| e.kind == k).count() as u64;
        let problems = metrics_view::check(
            &stages,
            count(Kind::Valid),
            count(Kind::Transient),
            count(Kind::Poison),
        );
        if problems.is_empty() {
            println!("✔ metrics: outcomes add up to the messages of every stage");
        } else {
            failed += 1;
            println!("✘ metrics:");
            for p in &problems {
                println!("    - {p}");
            }
        }
    }
    if check_mode {
        if failed == 0 && !reports.is_empty() {
            println!(
                "check passed: {} orders, one trace each{}",
                reports.len(),
                if metrics.is_some() {
                    "; metrics consistent"
                } else {
                    ""
                }
            );
        } else {
            println!("check FAILED: {failed} of {checks} checks");
        }
        // One order's trace is one check, the metrics table another: the plain tally test
        // reports end with.
        println!("demo: {} passed, {failed} failed", checks - failed);
        if failed > 0 || reports.is_empty() {
            return Ok(ExitCode::FAILURE);
        }
    }
    Ok(ExitCode::SUCCESS)
}
