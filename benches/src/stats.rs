//! Rounds, modes, CPU time, medians of per-round ratios, and the Markdown they become.

use crate::telemetry::SpanCounts;
use std::fmt::Write as _;
use std::time::{Duration, Instant};

/// What is measured against what, in every broker run.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Mode {
    /// The raw client.
    Raw,
    /// The same context headers with a constant value, no OpenTelemetry call.
    Headers,
    /// Instrumentation as people write it: span + attributes + the global propagator + a
    /// settle span.
    HandWritten,
    /// mqtrace, every span sampled.
    Mqtrace,
    /// mqtrace, parent-based sampling of 10% of new traces.
    Mqtrace10,
    /// mqtrace with no tracer provider installed (the global no-op one).
    NoProvider,
}

impl Mode {
    /// Every mode, in the order of the tables.
    pub(crate) const ALL: [Mode; 6] = [
        Mode::Raw,
        Mode::Headers,
        Mode::HandWritten,
        Mode::Mqtrace,
        Mode::Mqtrace10,
        Mode::NoProvider,
    ];

    /// The letter used in ratios.
    pub(crate) fn letter(self) -> &'static str {
        match self {
            Mode::Raw => "A",
            Mode::Headers => "H",
            Mode::HandWritten => "B",
            Mode::Mqtrace => "M",
            Mode::Mqtrace10 => "M10",
            Mode::NoProvider => "N",
        }
    }

    /// What the mode is, for the table.
    pub(crate) fn describe(self) -> &'static str {
        match self {
            Mode::Raw => "raw client",
            Mode::Headers => "headers only (constant traceparent)",
            Mode::HandWritten => {
                "hand-written (span + attributes + global propagator + settle span)"
            }
            Mode::Mqtrace => "mqtrace, sampled",
            Mode::Mqtrace10 => "mqtrace, parent-based 10%",
            Mode::NoProvider => "mqtrace, no tracer provider",
        }
    }
}

/// The process's CPU time so far (user + system, every thread, including librdkafka's and the
/// batch processor's), from `/proc/self/stat`, in clock ticks of 10 ms.
pub(crate) fn cpu_time() -> Duration {
    let stat = std::fs::read_to_string("/proc/self/stat").unwrap_or_default();
    // Fields after the command name (which is in parentheses and may hold spaces).
    let rest = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or("");
    let fields: Vec<&str> = rest.split_whitespace().collect();
    // utime and stime are fields 14 and 15 of the whole line: 12 and 13 after the name.
    let ticks = |i: usize| {
        fields
            .get(i)
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0)
    };
    Duration::from_millis((ticks(11) + ticks(12)) * 10)
}

/// Wall time and CPU time of one phase.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Meter {
    wall: Instant,
    cpu: Duration,
}

impl Meter {
    /// Starts measuring.
    pub(crate) fn start() -> Self {
        Self {
            cpu: cpu_time(),
            wall: Instant::now(),
        }
    }

    /// The phase's figures for `n` messages.
    pub(crate) fn stop(self, n: u32) -> Phase {
        let wall = self.wall.elapsed();
        let cpu = cpu_time().saturating_sub(self.cpu);
        Phase {
            rate: f64::from(n) / wall.as_secs_f64(),
            cpu_us: cpu.as_secs_f64() * 1e6 / f64::from(n),
        }
    }
}

/// One phase (publishing or consuming `n` messages).
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Phase {
    /// Messages per second.
    pub(crate) rate: f64,
    /// Process CPU time per message, µs.
    pub(crate) cpu_us: f64,
}

/// One mode in one round.
#[derive(Debug, Clone, Copy, Default)]
pub(crate) struct Sample {
    /// Publishing.
    pub(crate) publish: Phase,
    /// Consuming and settling.
    pub(crate) consume: Phase,
    /// Spans through the SDK during both phases.
    pub(crate) spans: SpanCounts,
}

/// Every round of every mode of one broker.
#[derive(Debug, Default)]
pub(crate) struct Runs {
    /// `rounds[r][m]` is mode `Mode::ALL[m]` in round `r`.
    pub(crate) rounds: Vec<[Sample; 6]>,
}

/// The median.
pub(crate) fn median(v: &[f64]) -> f64 {
    let mut s: Vec<f64> = v.iter().copied().filter(|x| x.is_finite()).collect();
    if s.is_empty() {
        return f64::NAN;
    }
    s.sort_by(f64::total_cmp);
    let m = s.len() / 2;
    if s.len() % 2 == 1 {
        s[m]
    } else {
        (s[m - 1] + s[m]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    v.iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), x| {
            (lo.min(*x), hi.max(*x))
        })
}

/// `median [min-max]` with `digits` decimals.
pub(crate) fn spread(v: &[f64], digits: usize) -> String {
    let (lo, hi) = min_max(v);
    format!("{:.d$} [{:.d$}–{:.d$}]", median(v), lo, hi, d = digits)
}

/// The position of `mode` in [`Mode::ALL`] (and in a round's samples).
pub(crate) fn index(mode: Mode) -> usize {
    Mode::ALL.iter().position(|m| *m == mode).unwrap_or(0)
}

impl Runs {
    fn column(&self, mode: Mode, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.rounds.iter().map(|r| f(&r[index(mode)])).collect()
    }

    /// Per-round ratios `a / b` of `f`.
    pub(crate) fn ratios(&self, a: Mode, b: Mode, f: impl Fn(&Sample) -> f64) -> Vec<f64> {
        self.rounds
            .iter()
            .map(|r| f(&r[index(a)]) / f(&r[index(b)]))
            .collect()
    }

    /// The median of the per-round ratios `a / b` of `f`.
    pub(crate) fn ratio(&self, a: Mode, b: Mode, f: impl Fn(&Sample) -> f64) -> f64 {
        median(&self.ratios(a, b, f))
    }

    /// Spans ended and dropped by `mode` over every round.
    pub(crate) fn spans(&self, mode: Mode) -> (u64, u64) {
        self.rounds.iter().fold((0, 0), |(e, d), r| {
            let s = r[index(mode)].spans;
            (e + s.ended, d + s.dropped())
        })
    }

    /// The Markdown tables: one row per mode, then the ratios.
    pub(crate) fn markdown(&self, consume_label: &str) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "| mode | publish msg/s | consume msg/s | publish CPU µs/msg | consume CPU µs/msg | spans ended | dropped |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- | --- | --- | --- |");
        for mode in Mode::ALL {
            let ended: u64 = self.rounds.iter().map(|r| r[index(mode)].spans.ended).sum();
            let dropped: u64 = self
                .rounds
                .iter()
                .map(|r| r[index(mode)].spans.dropped())
                .sum();
            let dropped = if ended == 0 {
                "—".to_owned()
            } else {
                format!("{dropped} ({:.2}%)", dropped as f64 * 100.0 / ended as f64)
            };
            let _ = writeln!(
                out,
                "| {} {} | {} | {} | {} | {} | {} | {} |",
                mode.letter(),
                mode.describe(),
                spread(&self.column(mode, |s| s.publish.rate), 0),
                spread(&self.column(mode, |s| s.consume.rate), 0),
                spread(&self.column(mode, |s| s.publish.cpu_us), 1),
                spread(&self.column(mode, |s| s.consume.cpu_us), 1),
                ended,
                dropped
            );
        }
        let _ = writeln!(out);
        let _ = writeln!(
            out,
            "| ratio (median of per-round ratios [range]) | publish throughput | {consume_label} throughput | consume CPU per message |"
        );
        let _ = writeln!(out, "| --- | --- | --- | --- |");
        let pairs = [
            (Mode::Mqtrace, Mode::Headers),
            (Mode::Mqtrace, Mode::Raw),
            (Mode::Mqtrace, Mode::HandWritten),
            (Mode::Headers, Mode::Raw),
            (Mode::HandWritten, Mode::Headers),
            (Mode::Mqtrace10, Mode::Headers),
            (Mode::NoProvider, Mode::Raw),
        ];
        for (a, b) in pairs {
            let _ = writeln!(
                out,
                "| {}/{} | {} | {} | {} |",
                a.letter(),
                b.letter(),
                spread(&self.ratios(a, b, |s| s.publish.rate), 2),
                spread(&self.ratios(a, b, |s| s.consume.rate), 2),
                spread(&self.ratios(a, b, |s| s.consume.cpu_us), 2),
            );
        }
        out
    }
}

/// The order of the modes in round `round`: rotated, so no mode always runs first or last.
pub(crate) fn order(round: usize) -> [Mode; 6] {
    let mut m = Mode::ALL;
    let len = m.len();
    m.rotate_left(round % len);
    m
}
