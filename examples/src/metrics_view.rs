//! Reading back the metrics the workers exported ([`crate::telemetry::JsonLinesMetricExporter`])
//! and printing them as one row per stage: messages, outcomes, time in queue, process time and
//! pipeline latency.
//!
//! Percentiles are estimated from the histogram buckets (the conventions' duration buckets,
//! 5 ms to 10 s): linear interpolation inside the bucket holding the rank, kept within the
//! recorded minimum and maximum.

use crate::check::{DEAD_LETTERS, ENRICHER, NOTIFIER, ORDER_API, VALIDATOR};
use serde_json::Value;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::Path;

/// The pipeline's stages, in order (service names).
pub const STAGES: [&str; 5] = [ORDER_API, VALIDATOR, ENRICHER, NOTIFIER, DEAD_LETTERS];

/// A histogram summed over its points: bucket bounds, counts, min and max.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Buckets {
    /// Upper bounds of the buckets but the last (which is unbounded).
    pub bounds: Vec<f64>,
    /// Count per bucket (`bounds.len() + 1` of them).
    pub counts: Vec<u64>,
    /// Smallest recorded value.
    pub min: Option<f64>,
    /// Largest recorded value.
    pub max: Option<f64>,
}

impl Buckets {
    /// How many values were recorded.
    ///
    /// ```
    /// let b = mqtrace_examples::metrics_view::Buckets { bounds: vec![1.0], counts: vec![2, 1], min: None, max: None };
    /// assert_eq!(b.count(), 3);
    /// ```
    pub fn count(&self) -> u64 {
        self.counts.iter().sum()
    }

    fn add(&mut self, point: &Value) {
        let bounds: Vec<f64> = point["bounds"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_f64).collect())
            .unwrap_or_default();
        let counts: Vec<u64> = point["bucket_counts"]
            .as_array()
            .map(|a| a.iter().filter_map(Value::as_u64).collect())
            .unwrap_or_default();
        if self.counts.is_empty() {
            self.bounds = bounds;
            self.counts = counts;
        } else if self.bounds == bounds && self.counts.len() == counts.len() {
            for (c, n) in self.counts.iter_mut().zip(counts) {
                *c += n;
            }
        }
        if let Some(m) = point["min"].as_f64() {
            self.min = Some(self.min.map_or(m, |x| x.min(m)));
        }
        if let Some(m) = point["max"].as_f64() {
            self.max = Some(self.max.map_or(m, |x| x.max(m)));
        }
    }

    /// The `q` quantile (0..=1), estimated from the buckets: linear within the bucket holding
    /// the rank, clamped to the recorded min and max. `None` without values.
    ///
    /// ```
    /// use mqtrace_examples::metrics_view::Buckets;
    /// // 10 values in (0.01, 0.025], min 0.012, max 0.02
    /// let b = Buckets { bounds: vec![0.01, 0.025], counts: vec![0, 10, 0], min: Some(0.012), max: Some(0.02) };
    /// let p50 = b.quantile(0.5).expect("values");
    /// assert!(p50 >= 0.012 && p50 <= 0.02);
    /// assert_eq!(b.quantile(1.0), Some(0.02));
    /// ```
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let total = self.count();
        if total == 0 {
            return None;
        }
        #[allow(clippy::cast_precision_loss)]
        let rank = q.clamp(0.0, 1.0) * total as f64;
        let mut seen = 0_u64;
        for (i, &c) in self.counts.iter().enumerate() {
            if c == 0 {
                continue;
            }
            #[allow(clippy::cast_precision_loss)]
            let (before, after) = (seen as f64, (seen + c) as f64);
            seen += c;
            if rank <= after {
                let lower = if i == 0 { 0.0 } else { self.bounds[i - 1] };
                let lower = self.min.map_or(lower, |m| lower.max(m));
                let upper = self.bounds.get(i).copied().or(self.max).unwrap_or(lower);
                let upper = self.max.map_or(upper, |m| upper.min(m));
                let f = if after > before {
                    (rank - before) / (after - before)
                } else {
                    1.0
                };
                return Some(lower + (upper - lower).max(0.0) * f);
            }
        }
        self.max
    }
}

/// What one stage (service) recorded, summed over its files, destinations and attributes.
#[derive(Clone, Debug, Default)]
pub struct Stage {
    /// The service.
    pub service: String,
    /// `messaging.client.sent.messages`.
    pub sent: u64,
    /// `messaging.client.consumed.messages`.
    pub consumed: u64,
    /// `mqtrace.message.outcomes` by `mqtrace.outcome`.
    pub outcomes: BTreeMap<String, u64>,
    /// `mqtrace.message.queue_time`.
    pub queue_time: Buckets,
    /// `messaging.process.duration`.
    pub process: Buckets,
    /// `mqtrace.pipeline.latency`.
    pub latency: Buckets,
}

impl Stage {
    /// The messages the stage handled: consumed, or for a stage that only sends, sent.
    ///
    /// ```
    /// let s = mqtrace_examples::metrics_view::Stage { sent: 5, ..Default::default() };
    /// assert_eq!(s.messages(), 5);
    /// ```
    pub fn messages(&self) -> u64 {
        if self.consumed > 0 {
            self.consumed
        } else {
            self.sent
        }
    }

    /// All outcomes counted.
    ///
    /// ```
    /// assert_eq!(mqtrace_examples::metrics_view::Stage::default().outcome_total(), 0);
    /// ```
    pub fn outcome_total(&self) -> u64 {
        self.outcomes.values().sum()
    }

    /// The count of one outcome (`ack`, `retry`, ...).
    ///
    /// ```
    /// assert_eq!(mqtrace_examples::metrics_view::Stage::default().outcome("ack"), 0);
    /// ```
    pub fn outcome(&self, name: &str) -> u64 {
        self.outcomes.get(name).copied().unwrap_or(0)
    }

    fn add(&mut self, metric: &Value) {
        let points = metric["points"].as_array().map_or(&[][..], Vec::as_slice);
        let sum = || {
            points
                .iter()
                .filter_map(|p| p["value"].as_u64())
                .sum::<u64>()
        };
        match metric["name"].as_str().unwrap_or("") {
            "messaging.client.sent.messages" => self.sent += sum(),
            "messaging.client.consumed.messages" => self.consumed += sum(),
            "mqtrace.message.outcomes" => {
                for p in points {
                    let o = p["attributes"]["mqtrace.outcome"].as_str().unwrap_or("?");
                    *self.outcomes.entry(o.to_owned()).or_default() +=
                        p["value"].as_u64().unwrap_or(0);
                }
            }
            "mqtrace.message.queue_time" => points.iter().for_each(|p| self.queue_time.add(p)),
            "messaging.process.duration" => points.iter().for_each(|p| self.process.add(p)),
            "mqtrace.pipeline.latency" => points.iter().for_each(|p| self.latency.add(p)),
            _ => {}
        }
    }
}

/// Reads the metric files of `dir` (`*.jsonl`): the last complete line of each file (the
/// exports are cumulative), summed per service. Returns the stages of [`STAGES`], in order,
/// then any other service that recorded messages.
///
/// ```no_run
/// let stages = mqtrace_examples::metrics_view::read_dir(std::path::Path::new("/tmp/metrics"))?;
/// print!("{}", mqtrace_examples::metrics_view::render(&stages));
/// # Ok::<(), std::io::Error>(())
/// ```
pub fn read_dir(dir: &Path) -> std::io::Result<Vec<Stage>> {
    let mut by_service: BTreeMap<String, Stage> = BTreeMap::new();
    for file in crate::telemetry::jsonl_files(dir)? {
        let text = std::fs::read_to_string(&file)?;
        let last = text
            .lines()
            .rev()
            .find_map(|l| serde_json::from_str::<Value>(l).ok());
        let Some(line) = last else { continue };
        let service = line["service"].as_str().unwrap_or("?").to_owned();
        let stage = by_service.entry(service.clone()).or_insert_with(|| Stage {
            service,
            ..Stage::default()
        });
        for metric in line["metrics"].as_array().map_or(&[][..], Vec::as_slice) {
            stage.add(metric);
        }
    }
    let mut out = Vec::new();
    for name in STAGES {
        out.push(by_service.remove(name).unwrap_or_else(|| Stage {
            service: name.to_owned(),
            ..Stage::default()
        }));
    }
    // Other services (e.g. the demo's own caller) only when they recorded something.
    out.extend(
        by_service
            .into_values()
            .filter(|s| s.messages() > 0 || !s.outcomes.is_empty()),
    );
    Ok(out)
}

fn ms(v: Option<f64>) -> String {
    v.map_or_else(|| "-".to_owned(), |s| format!("{:.1}", s * 1000.0))
}

fn pair(b: &Buckets) -> String {
    if b.count() == 0 {
        return "-".to_owned();
    }
    format!("{} / {}", ms(b.quantile(0.5)), ms(b.quantile(0.99)))
}

/// The table: one row per stage with messages, outcomes, and p50 / p99 of time in queue,
/// process time and pipeline latency (ms; the last stage's latency is the pipeline's).
///
/// ```
/// let t = mqtrace_examples::metrics_view::render(&[]);
/// assert!(t.contains("estimated from histogram buckets"));
/// ```
pub fn render(stages: &[Stage]) -> String {
    let header = [
        "stage",
        "messages",
        "outcomes",
        "queue p50/p99",
        "process p50/p99",
        "pipeline p50/p99",
    ];
    let rows: Vec<[String; 6]> = stages
        .iter()
        .map(|s| {
            let outcomes = if s.outcomes.is_empty() {
                if s.consumed == 0 && s.sent > 0 {
                    format!("(sent {})", s.sent)
                } else {
                    "-".to_owned()
                }
            } else {
                s.outcomes
                    .iter()
                    .map(|(k, v)| format!("{k} {v}"))
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            [
                s.service.clone(),
                s.messages().to_string(),
                outcomes,
                pair(&s.queue_time),
                pair(&s.process),
                pair(&s.latency),
            ]
        })
        .collect();
    let mut widths = header.map(str::len);
    for r in &rows {
        for (w, c) in widths.iter_mut().zip(r) {
            *w = (*w).max(c.chars().count());
        }
    }
    let mut out = String::from(
        "── metrics per stage (as the workers exported them; times in ms, p50/p99 estimated from histogram buckets) ──\n",
    );
    let line = |out: &mut String, cells: &[&str]| {
        for (i, (c, w)) in cells.iter().zip(widths).enumerate() {
            if i > 0 {
                out.push_str("  ");
            }
            let _ = write!(out, "{c:<w$}");
        }
        out.truncate(out.trim_end().len());
        out.push('\n');
    };
    line(&mut out, &header);
    for r in &rows {
        let cells: Vec<&str> = r.iter().map(String::as_str).collect();
        line(&mut out, &cells);
    }
    out
}

/// What the table must show for a run with `valid` orders that pass every stage, `transient`
/// ones that fail twice in the validator, and `poison` ones: the problems found (empty when
/// consistent). Per stage, outcomes sum to the messages consumed and the process-time
/// histogram counted each of them; counts are at least the run's (queues may hold messages
/// of earlier runs); time in queue and pipeline latency were recorded at most once per message.
///
/// ```
/// let problems = mqtrace_examples::metrics_view::check(&[], 1, 0, 0);
/// assert!(!problems.is_empty());
/// ```
pub fn check(stages: &[Stage], valid: u64, transient: u64, poison: u64) -> Vec<String> {
    let mut problems = Vec::new();
    let get = |name: &str| stages.iter().find(|s| s.service == name);
    let through = valid + transient;
    // (stage, at least consumed, at least acked, retries, dead-letters)
    let expected = [
        (
            VALIDATOR,
            through + 2 * transient + poison,
            through,
            2 * transient,
            poison,
        ),
        (ENRICHER, through, through, 0, 0),
        (NOTIFIER, through, through, 0, 0),
        (DEAD_LETTERS, poison, poison, 0, 0),
    ];
    match get(ORDER_API) {
        Some(s) if s.sent >= through + poison => {}
        Some(s) => problems.push(format!(
            "{ORDER_API}: {} messages sent, expected at least {}",
            s.sent,
            through + poison
        )),
        None => problems.push(format!("{ORDER_API}: no metrics")),
    }
    for (name, consumed, acked, retried, dead) in expected {
        let Some(s) = get(name) else {
            problems.push(format!("{name}: no metrics"));
            continue;
        };
        if s.consumed < consumed {
            problems.push(format!(
                "{name}: {} messages consumed, expected at least {consumed}",
                s.consumed
            ));
        }
        if s.outcome_total() != s.consumed {
            problems.push(format!(
                "{name}: outcomes sum to {}, not to the {} messages consumed",
                s.outcome_total(),
                s.consumed
            ));
        }
        if s.process.count() != s.consumed {
            problems.push(format!(
                "{name}: process time recorded {} times, for {} messages",
                s.process.count(),
                s.consumed
            ));
        }
        if s.latency.count() > s.consumed || s.queue_time.count() > s.consumed {
            problems.push(format!(
                "{name}: queue time recorded {} times and pipeline latency {}, for {} messages",
                s.queue_time.count(),
                s.latency.count(),
                s.consumed
            ));
        }
        for (outcome, at_least) in [("ack", acked), ("retry", retried), ("dead_letter", dead)] {
            if s.outcome(outcome) < at_least {
                problems.push(format!(
                    "{name}: {} {outcome}, expected at least {at_least}",
                    s.outcome(outcome)
                ));
            }
        }
    }
    problems
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hist(counts: &[u64]) -> Buckets {
        Buckets {
            bounds: vec![0.005, 0.01, 0.025, 0.05],
            counts: counts.to_vec(),
            min: None,
            max: None,
        }
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket_and_respect_min_max() {
        // 100 values: 50 in (0, 5 ms], 49 in (5, 10 ms], 1 in (25, 50 ms]
        let mut b = hist(&[50, 49, 0, 1, 0]);
        assert!((b.quantile(0.5).expect("values") - 0.005).abs() < 1e-12);
        let p99 = b.quantile(0.99).expect("values");
        assert!((p99 - 0.01).abs() < 1e-12, "{p99}");
        assert!((b.quantile(1.0).expect("values") - 0.05).abs() < 1e-12);
        b.max = Some(0.03);
        assert!((b.quantile(1.0).expect("values") - 0.03).abs() < 1e-12);
        b.min = Some(0.004);
        assert!(b.quantile(0.0).expect("values") >= 0.004);
        assert_eq!(hist(&[0; 5]).quantile(0.5), None);
        // the overflow bucket ends at the max
        let over = Buckets {
            max: Some(12.0),
            ..hist(&[0, 0, 0, 0, 2])
        };
        assert!((over.quantile(1.0).expect("values") - 12.0).abs() < 1e-12);
    }

    #[test]
    fn check_finds_outcomes_that_do_not_add_up() {
        let h = |n: u64| Buckets {
            counts: vec![n, 0, 0, 0, 0],
            ..hist(&[])
        };
        let consumer = |name: &str, n: u64, outcomes: &[(&str, u64)]| Stage {
            service: name.to_owned(),
            consumed: n,
            outcomes: outcomes
                .iter()
                .map(|(k, v)| ((*k).to_owned(), *v))
                .collect(),
            queue_time: h(n),
            process: h(n),
            latency: h(n),
            ..Stage::default()
        };
        let mut stages = vec![
            Stage {
                service: ORDER_API.into(),
                sent: 5,
                ..Stage::default()
            },
            consumer(
                VALIDATOR,
                7,
                &[("ack", 4), ("retry", 2), ("dead_letter", 1)],
            ),
            consumer(ENRICHER, 4, &[("ack", 4)]),
            consumer(NOTIFIER, 4, &[("ack", 4)]),
            consumer(DEAD_LETTERS, 1, &[("ack", 1)]),
        ];
        assert_eq!(check(&stages, 3, 1, 1), Vec::<String>::new());
        stages[2].outcomes.insert("ack".into(), 3);
        let problems = check(&stages, 3, 1, 1);
        assert_eq!(problems.len(), 2, "{problems:?}");
        assert!(problems[0].contains("outcomes sum to 3"));
        assert!(render(&stages).contains("ack 4, dead_letter 1, retry 2"));
    }
}
