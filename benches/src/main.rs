//! The overhead benchmarks behind `BENCHMARKS.md`.
//!
//! `scripts/bench.sh` starts the brokers, builds this binary in release mode and runs it with
//! `--write BENCHMARKS.md`. By hand:
//!
//! ```text
//! mqtrace-bench [--quick] [--rounds R] [--write FILE] [micro] [rabbitmq] [kafka] [pubsub] [memory]
//! mqtrace-bench count CASE WHO SAMPLING ITERATIONS   # one micro case, for callgrind
//! ```
//!
//! `--quick` is the CI smoke run: a few messages, one round, no callgrind, no thresholds.

#![forbid(unsafe_code)]

/// With `--features mimalloc`, the whole process allocates through mimalloc (the allocator
/// comparison of BENCHMARKS.md).
#[cfg(feature = "mimalloc")]
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

mod handwritten;
mod kafka;
mod memory;
mod micro;
mod pubsub;
mod rabbitmq;
mod stats;
mod telemetry;

use micro::{Case, Sampling, Setup, Who};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use std::fmt::Write as _;
use std::process::Command;

struct Args {
    quick: bool,
    rounds: usize,
    write: Option<String>,
    sections: Vec<String>,
}

fn parse() -> Result<Args, String> {
    let mut args = Args {
        quick: false,
        rounds: 5,
        write: None,
        sections: Vec::new(),
    };
    let mut it = std::env::args().skip(1);
    while let Some(a) = it.next() {
        match a.as_str() {
            "--quick" => args.quick = true,
            "--rounds" => {
                args.rounds = it
                    .next()
                    .and_then(|r| r.parse().ok())
                    .ok_or("--rounds needs a number")?;
            }
            "--write" => args.write = Some(it.next().ok_or("--write needs a file")?),
            "micro" | "rabbitmq" | "kafka" | "pubsub" | "memory" => args.sections.push(a),
            other => return Err(format!("unknown argument {other:?}")),
        }
    }
    if args.sections.is_empty() {
        args.sections = ["micro", "rabbitmq", "kafka", "pubsub", "memory"]
            .map(String::from)
            .to_vec();
    }
    if args.quick {
        args.rounds = 1;
    }
    Ok(args)
}

fn find<T: Copy>(all: &[T], name: &str, f: impl Fn(T) -> &'static str) -> Option<T> {
    all.iter().copied().find(|x| f(*x) == name)
}

/// `count CASE WHO SAMPLING N`: runs one micro case N times (what callgrind counts).
fn count(rest: &[String]) -> Result<(), String> {
    let [case, who, sampling, n] = rest else {
        return Err("count CASE WHO SAMPLING ITERATIONS".into());
    };
    let case = find(&Case::ALL, case, Case::name).ok_or("unknown case")?;
    let who = find(&Who::ALL, who, Who::name).ok_or("unknown implementation")?;
    let sampling = find(&Sampling::ALL, sampling, Sampling::name).ok_or("unknown sampling")?;
    let n: u32 = n.parse().map_err(|_| "ITERATIONS is a number")?;
    let setup = Setup::new(sampling);
    for i in 0..n {
        setup.run(case, who, i);
    }
    setup.shutdown();
    Ok(())
}

/// Instructions per call of a micro case, from two callgrind runs (the difference cancels
/// the setup); `None` when valgrind is not installed.
fn instructions(case: Case, who: Who, sampling: Sampling) -> Option<f64> {
    let exe = std::env::current_exe().ok()?;
    let run = |n: u32| -> Option<f64> {
        let out = Command::new("valgrind")
            .args(["--tool=callgrind", "--callgrind-out-file=/dev/null"])
            .arg(&exe)
            .args(["count", case.name(), who.name(), sampling.name()])
            .arg(n.to_string())
            .output()
            .ok()?;
        let err = String::from_utf8_lossy(&out.stderr);
        let line = err.lines().find(|l| l.contains("Collected :"))?;
        line.rsplit(':').next()?.trim().parse().ok()
    };
    let (small, large) = (1_000, 6_000);
    Some((run(large)? - run(small)?) / f64::from(large - small))
}

fn micro_section(quick: bool, rounds: usize, targets: &mut Targets) -> String {
    let iterations = if quick { 500 } else { 30_000 };
    let callgrind = !quick
        && Command::new("valgrind")
            .arg("--version")
            .output()
            .is_ok_and(|o| o.status.success());
    let mut out = String::new();
    let _ = writeln!(
        out,
        "Per message, no broker, RabbitMQ path (lapin's header table; `Delivery::mock` with an acker that answers at once). \
         ns: median of {rounds} alternating rounds of {iterations} calls; Ir: instructions per call from callgrind \
         (every thread, so the batch processor's share of a span is in it). \"net\" subtracts the raw client's own work \
         (building the delivery, the ack bookkeeping)."
    );
    let _ = writeln!(out);
    let _ = writeln!(
        out,
        "| case | sampling | raw ns | hand-written ns | mqtrace ns | mqtrace net ns | hand-written net ns | M/B | raw Ir | hand-written Ir | mqtrace Ir | spans dropped |"
    );
    let _ = writeln!(
        out,
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"
    );
    for sampling in Sampling::ALL {
        let setup = Setup::new(sampling);
        for case in Case::ALL {
            let whos: &[Who] = if case == Case::SdkSpan {
                &[Who::HandWritten]
            } else {
                &Who::ALL
            };
            let mut times: Vec<Vec<f64>> = vec![Vec::new(); 3];
            for _ in 0..rounds {
                for (k, who) in whos.iter().enumerate() {
                    times[k].push(micro::time_per_op(iterations, |i| setup.run(case, *who, i)));
                }
            }
            let med = |k: usize| stats::median(&times[k]);
            let ir = |who: Who| {
                if callgrind {
                    instructions(case, who, sampling)
                        .map(|x| format!("{x:.0}"))
                        .unwrap_or_else(|| "—".into())
                } else {
                    "—".into()
                }
            };
            let dropped = setup.dropped();
            if case == Case::SdkSpan {
                let _ = writeln!(
                    out,
                    "| {} | {} | — | {:.0} | — | — | — | — | — | {} | — | {dropped} |",
                    case.name(),
                    sampling.name(),
                    med(0),
                    ir(Who::HandWritten),
                );
            } else {
                let (a, b, m) = (med(0), med(1), med(2));
                targets.micro.push((case, sampling, m - a));
                let _ = writeln!(
                    out,
                    "| {} | {} | {a:.0} | {b:.0} | {m:.0} | {:.0} | {:.0} | {:.2} | {} | {} | {} | {dropped} |",
                    case.name(),
                    sampling.name(),
                    m - a,
                    b - a,
                    (m - a) / (b - a),
                    ir(Who::Raw),
                    ir(Who::HandWritten),
                    ir(Who::Mqtrace),
                );
            }
            eprintln!("micro: {} {} done", case.name(), sampling.name());
        }
        setup.shutdown();
    }
    out
}

fn machine() -> String {
    let read = |p: &str| std::fs::read_to_string(p).unwrap_or_default();
    let cpu = read("/proc/cpuinfo")
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split_once(':'))
        .map(|(_, v)| v.trim().to_owned())
        .unwrap_or_default();
    let cores = std::thread::available_parallelism().map_or(0, |n| n.get());
    let mem = read("/proc/meminfo")
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .nth(1)
        .and_then(|k| k.parse::<u64>().ok())
        .map_or(0, |k| k / 1024 / 1024);
    let load = read("/proc/loadavg");
    let load = load
        .split_whitespace()
        .take(3)
        .collect::<Vec<_>>()
        .join(" ");
    format!("{cores} cores ({cpu}), {mem} GiB; load average at the start: {load}")
}

fn main() {
    // What applications install; hand-written instrumentation and mqtrace's default
    // (`Propagation::Global`) both go through it.
    opentelemetry::global::set_text_map_propagator(TraceContextPropagator::new());
    let all: Vec<String> = std::env::args().skip(1).collect();
    if all.first().map(String::as_str) == Some("count") {
        if let Err(e) = count(&all[1..]) {
            eprintln!("{e}");
            std::process::exit(2);
        }
        return;
    }
    let args = match parse() {
        Ok(a) => a,
        Err(e) => {
            eprintln!("{e}");
            std::process::exit(2);
        }
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("tokio runtime");
    let mut doc = String::new();
    let allocator = if cfg!(feature = "mimalloc") {
        "mimalloc"
    } else {
        "the system allocator (glibc)"
    };
    let _ = writeln!(doc, "Machine: {}. Allocator: {allocator}.", machine());
    let mut targets = Targets::default();
    let n = |full: u32| if args.quick { 200 } else { full };
    for section in &args.sections {
        let body = match section.as_str() {
            "micro" => micro_section(args.quick, args.rounds, &mut targets),
            "rabbitmq" => {
                let n = n(20_000);
                let runs = rt.block_on(rabbitmq::run(n, args.rounds));
                let body = format!(
                    "RabbitMQ 127.0.0.1:5672, lapin, {n} messages of 128 bytes per mode and round, {} rounds; publish with confirms \
                     (1024 in flight), consume with prefetch 500 and one ack each.\n\n{}",
                    args.rounds,
                    runs.markdown("consume")
                );
                targets.brokers.push(("rabbitmq", runs));
                body
            }
            "kafka" => {
                let n = n(20_000);
                let runs = rt.block_on(kafka::run(n, args.rounds));
                let body = format!(
                    "Kafka protocol (Tansu) at {}, rdkafka, {n} messages of 128 bytes per mode and round, {} rounds; \
                     {}\n\n{}",
                    mqtrace_integration_tests::kafka::bootstrap_servers(),
                    args.rounds,
                    kafka::METHOD,
                    runs.markdown("consume")
                );
                targets.brokers.push(("kafka", runs));
                body
            }
            "pubsub" => {
                let n = n(4_000);
                let runs = rt.block_on(pubsub::run(n, args.rounds));
                let body = format!(
                    "Google's Pub/Sub emulator, google-cloud-pubsub, {n} messages of 128 bytes per mode and round, {} rounds; \
                     {}\n\n{}",
                    args.rounds,
                    pubsub::METHOD,
                    runs.markdown("consume")
                );
                targets.brokers.push(("pubsub", runs));
                body
            }
            "memory" => rt.block_on(memory::run(n(1_000_000))),
            _ => continue,
        };
        println!("## {section}\n\n{body}");
        let _ = writeln!(doc, "\n## {section}\n\n{body}");
    }
    let summary = targets.markdown();
    println!("## targets\n\n{summary}");
    doc = format!(
        "{}\n## Targets\n\n{summary}{}",
        &doc[..doc.find('\n').map_or(0, |i| i + 1)],
        &doc[doc.find('\n').map_or(0, |i| i + 1)..]
    );
    if let Some(path) = &args.write
        && let Err(e) = std::fs::write(path, &doc)
    {
        eprintln!("writing {path}: {e}");
        std::process::exit(1);
    }
}

/// The issue's targets, checked against this run's figures.
#[derive(Default)]
struct Targets {
    /// Net mqtrace ns per message of each micro case.
    micro: Vec<(Case, Sampling, f64)>,
    brokers: Vec<(&'static str, stats::Runs)>,
}

impl Targets {
    fn markdown(&self) -> String {
        use stats::Mode::{Headers, Mqtrace, Mqtrace10, NoProvider, Raw};
        let mut rows: Vec<(String, String, bool)> = Vec::new();
        for (case, sampling, limit) in [
            (Case::Publish, Sampling::Sampled, 700.0),
            (Case::Consume, Sampling::Sampled, 1000.0),
            (Case::Publish, Sampling::Unsampled, 150.0),
            (Case::Consume, Sampling::Unsampled, 200.0),
        ] {
            if let Some((_, _, ns)) = self
                .micro
                .iter()
                .find(|(c, s, _)| *c == case && *s == sampling)
            {
                rows.push((
                    format!("{} {}, net ns ≤ {limit}", case.name(), sampling.name()),
                    format!("{ns:.0}"),
                    *ns <= limit,
                ));
            }
        }
        for (broker, runs) in &self.brokers {
            let publish = |s: &stats::Sample| s.publish.rate;
            let consume = |s: &stats::Sample| s.consume.rate;
            let cpu = |s: &stats::Sample| s.consume.cpu_us;
            let mut at_least = |what: String, v: f64, limit: f64| {
                rows.push((
                    format!("{broker} {what} ≥ {limit}"),
                    format!("{v:.2}"),
                    v >= limit,
                ));
            };
            let (p, c) = match *broker {
                "rabbitmq" => (0.97, 0.97),
                "kafka" => (0.85, 0.97),
                _ => (0.95, f64::NAN),
            };
            at_least(
                "publish M/H".into(),
                runs.ratio(Mqtrace, Headers, publish),
                p,
            );
            if c.is_finite() {
                at_least(
                    "consume M/H".into(),
                    runs.ratio(Mqtrace, Headers, consume),
                    c,
                );
            } else {
                at_least(
                    "consume M/A".into(),
                    runs.ratio(Mqtrace, Raw, consume),
                    0.99,
                );
            }
            at_least(
                "publish M10/H".into(),
                runs.ratio(Mqtrace10, Headers, publish),
                0.97,
            );
            at_least(
                "consume M10/H".into(),
                runs.ratio(Mqtrace10, Headers, consume),
                0.97,
            );
            at_least(
                "publish N/A".into(),
                runs.ratio(NoProvider, Raw, publish),
                0.90,
            );
            at_least(
                "consume N/A".into(),
                runs.ratio(NoProvider, Raw, consume),
                0.90,
            );
            if *broker == "pubsub" {
                let v = runs.ratio(Mqtrace, Raw, cpu);
                rows.push((
                    "pubsub consume CPU per message M/A ≤ 1.5".into(),
                    format!("{v:.2}"),
                    v <= 1.5,
                ));
            }
            let (ended, dropped) = runs.spans(Mqtrace);
            rows.push((
                format!("{broker} spans dropped (M, README batch queue)"),
                format!("{dropped} of {ended}"),
                dropped == 0,
            ));
        }
        let mut out = String::from("| target | this run | met |\n| --- | --- | --- |\n");
        for (what, value, met) in rows {
            let _ = writeln!(
                out,
                "| {what} | {value} | {} |",
                if met { "yes" } else { "**no**" }
            );
        }
        out
    }
}
