//! Generated inputs: mqtrace's W3C codec against opentelemetry_sdk's `TraceContextPropagator`
//! and `BaggagePropagator` (byte-identical output on every input both accept, except where
//! the SDK departs from the specification, each such case named below), and the stability of
//! re-encoding across hops (issue 14: baggage must not grow on every hop).
//!
//! The generator is a fixed-seed xorshift, so a failure names a reproducible case number.

use mqtrace::Propagation;
use opentelemetry::Context;
use opentelemetry::baggage::{Baggage, BaggageExt, BaggageMetadata};
use opentelemetry::propagation::{TextMapCompositePropagator, TextMapPropagator};
use opentelemetry::trace::{SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState};
use opentelemetry_sdk::propagation::{BaggagePropagator, TraceContextPropagator};
use std::collections::{BTreeMap, HashMap};

struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        let mut x = self.0;
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        self.0 = x;
        x
    }
    fn below(&mut self, n: usize) -> usize {
        (self.next() % n as u64) as usize
    }
    fn chance(&mut self, percent: usize) -> bool {
        self.below(100) < percent
    }
    fn pick<'a, T>(&mut self, items: &'a [T]) -> &'a T {
        &items[self.below(items.len())]
    }
    fn word(&mut self, items: &[&'static str]) -> &'static str {
        items[self.below(items.len())]
    }
    fn string(&mut self, alphabet: &[&str], max: usize) -> String {
        (0..self.below(max + 1))
            .map(|_| *self.pick(alphabet))
            .collect()
    }
}

fn sdk() -> TextMapCompositePropagator {
    TextMapCompositePropagator::new(vec![
        Box::new(TraceContextPropagator::new()),
        Box::new(BaggagePropagator::new()),
    ])
}

const KEY_CHARS: &[&str] = &["a", "b", "z", "0", "9", "_", "-", ".", "!", "~", "K"];
const VALUE_CHARS: &[&str] = &[
    "a", "Z", "0", " ", "%", ",", ";", "=", "\"", "\\", "é", "€", "🙂", "\t", "/", ":", "+", "~",
];
const TS_KEYS: &[&str] = &[
    "foo",
    "rojo",
    "congo",
    "t1",
    "a*b/c_d-e",
    "tenant@vendor",
    "x@y",
];
const TS_VALUES: &[&str] = &["1", "00f067aa0ba902b7", "t61rcWkgMzE", " lead", "a b", "!~"];

/// Characters the SDK's baggage writer leaves raw although W3C Baggage requires them encoded
/// (`%`, `\`), or trims (white space at either end of a value).
fn sdk_departs_on_value(v: &str) -> bool {
    v.contains(['%', '\\']) || v.trim() != v
}

fn random_baggage(rng: &mut Rng) -> Baggage {
    let mut b = Baggage::new();
    for _ in 0..rng.below(6) {
        let key = format!("k{}", rng.string(KEY_CHARS, 6));
        let value = rng.string(VALUE_CHARS, 12);
        let meta = if rng.chance(25) {
            rng.pick(&["p", "p=1", "p1;p2", "a=b;c"]).to_string()
        } else {
            String::new()
        };
        b.insert_with_metadata(key, value, BaggageMetadata::from(meta));
    }
    b
}

fn random_trace_state(rng: &mut Rng) -> TraceState {
    let n = rng.below(4);
    let kvs: Vec<(&str, &str)> = (0..n)
        .map(|_| (*rng.pick(TS_KEYS), *rng.pick(TS_VALUES)))
        .collect();
    let mut dedup: Vec<(&str, &str)> = Vec::new();
    for kv in kvs {
        if !dedup.iter().any(|(k, _)| *k == kv.0) {
            dedup.push(kv);
        }
    }
    TraceState::from_key_value(dedup).unwrap_or_default()
}

fn without_empty_tracestate(mut h: HashMap<String, String>) -> HashMap<String, String> {
    h.retain(|k, v| !(k == "tracestate" && v.is_empty()));
    h
}

/// Writing: the same span contexts and baggage through both writers.
#[test]
fn inject_is_byte_identical_to_the_sdk() {
    let mut rng = Rng(0x9e37_79b9_7f4a_7c15);
    let (mut identical, mut departures) = (0, 0);
    for case in 0..20_000 {
        let sc = SpanContext::new(
            TraceId::from(u128::from(rng.next()) << 64 | u128::from(rng.next()) | 1),
            SpanId::from(rng.next() | 1),
            TraceFlags::new(rng.below(256) as u8),
            false,
            random_trace_state(&mut rng),
        );
        let baggage = random_baggage(&mut rng);
        let departs = baggage
            .iter()
            .any(|(_, (v, _))| sdk_departs_on_value(v.as_str()));
        let cx = Context::new().with_baggage(baggage);
        let mut ours: HashMap<String, String> = HashMap::new();
        Propagation::W3c.inject(&sc, &cx, &mut ours);
        let mut theirs: HashMap<String, String> = HashMap::new();
        sdk().inject_context(&cx.with_remote_span_context(sc.clone()), &mut theirs);
        let mut theirs = without_empty_tracestate(theirs);

        // Level 2: mqtrace writes the random flag, the SDK drops it.
        let flags = sc.trace_flags().to_u8();
        let tp = theirs.get_mut("traceparent").expect("sdk traceparent");
        assert_eq!(&tp[53..], format!("{:02x}", flags & 1), "case {case}");
        tp.replace_range(53.., &format!("{:02x}", flags & 3));

        if departs {
            departures += 1;
            assert_eq!(
                ours.get("traceparent"),
                theirs.get("traceparent"),
                "case {case}"
            );
            assert_eq!(
                ours.get("tracestate"),
                theirs.get("tracestate"),
                "case {case}"
            );
            // Ours still reads back to the same values.
            let (back, err) =
                mqtrace::w3c::parse_baggage(ours.get("baggage").map_or("", String::as_str));
            assert_eq!(err, None, "case {case}: {ours:?}");
            for (k, (v, _)) in cx.baggage() {
                assert_eq!(back.get(k.as_str()), Some(v), "case {case}: {ours:?}");
            }
        } else {
            identical += 1;
            assert_eq!(ours, theirs, "case {case}");
        }
    }
    assert!(
        identical > 5_000,
        "only {identical} cases compared ({departures} departures)"
    );
}

fn random_traceparent(rng: &mut Rng) -> String {
    let hex = |rng: &mut Rng, n: usize| -> String {
        (0..n)
            .map(|_| *rng.pick(&["0", "1", "9", "a", "f", "3", "7", "c"]))
            .collect()
    };
    let version = rng
        .pick(&["00", "00", "00", "cc", "ff", "01", "0A", "A0", "0"])
        .to_string();
    let mut s = format!(
        "{version}-{}-{}-{}",
        hex(rng, 32),
        hex(rng, 16),
        *rng.pick(&["00", "01", "02", "03", "09", "ff", "FF", "0"])
    );
    for _ in 0..rng.below(3) {
        let at = rng.below(s.len() + 1);
        match rng.below(5) {
            0 if at < s.len() => {
                s.remove(at);
            }
            1 => s.insert_str(at, rng.word(&["-", "g", "A", " ", "0", "+", "."])),
            2 if at < s.len() => {
                s.replace_range(at..=at, rng.word(&["0", "F", "-", "x"]));
            }
            3 => s.push_str(rng.word(&["-what", "-", ".x", " ", "\t"])),
            _ => s.insert(0, ' '),
        }
    }
    s
}

/// A reference check of the W3C grammar, written independently of the codec: what a
/// conforming parser must accept.
fn conforming_traceparent(v: &str) -> Option<(String, String, u8)> {
    let v = v.trim_matches([' ', '\t']);
    let lc = |s: &str| {
        s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    };
    let fields: Vec<&str> = v.splitn(5, '-').collect();
    if fields.len() < 4 || fields[0].len() != 2 || !lc(fields[0]) || fields[0] == "ff" {
        return None;
    }
    let (tid, sid, flags) = (fields[1], fields[2], fields[3]);
    if tid.len() != 32 || sid.len() != 16 || flags.len() != 2 || !lc(tid) || !lc(sid) || !lc(flags)
    {
        return None;
    }
    if (fields[0] == "00" && fields.len() != 4)
        || tid.bytes().all(|b| b == b'0')
        || sid.bytes().all(|b| b == b'0')
    {
        return None;
    }
    Some((
        tid.to_owned(),
        sid.to_owned(),
        u8::from_str_radix(flags, 16).ok()?,
    ))
}

fn random_tracestate(rng: &mut Rng) -> String {
    let parts = [
        "foo=1",
        "bar=2",
        "rojo=00f067aa0ba902b7",
        "foo@bar@baz=1",
        "t@vvvvvvvvvvvvvvv=1",
        "a/b*c=x y",
        "k= lead",
        "=1",
        "foo=",
        "foo==bar",
        "FOO=1",
        "foo =1",
        "foo=a\tb",
        "x=caf\u{e9}",
        "",
        " ",
        "\t",
        "foo@=1",
        "@x=1",
        "z=bar=baz",
    ];
    if rng.chance(50) {
        let valid = [
            "foo=1",
            "bar=2",
            "rojo=00f067aa0ba902b7",
            "a/b*c=x y",
            "k= lead",
            "foo@=1",
            " ",
            "",
        ];
        let n = rng.below(8);
        return (0..n)
            .map(|_| *rng.pick(&valid))
            .collect::<Vec<_>>()
            .join(",");
    }
    let n = rng.below(36);
    (0..n)
        .map(|_| {
            if rng.chance(10) {
                format!("m{}=v", rng.below(100))
            } else {
                rng.pick(&parts).to_string()
            }
        })
        .collect::<Vec<_>>()
        .join(*rng.pick(&[",", ", ", " ,\t"]))
}

fn random_baggage_header(rng: &mut Rng) -> String {
    let values = [
        "alice",
        "DF%2028",
        "10%",
        "%41",
        "%FF",
        "a%E2%82",
        "Am%C3%A9lie",
        "x=y",
        "a b",
        "%20pad%20",
        "",
        "%zz",
        "caf\u{e9}",
        "\"q\"",
    ];
    let props = [
        "", ";p", ";p=1", ";p=a%2Cb", "; p = x ", ";p=a b", ";=x", ";p=%",
    ];
    let n = rng.below(6);
    (0..n)
        .map(|i| {
            let key = if rng.chance(90) {
                format!("k{i}")
            } else {
                rng.pick(&["k%41", "bad key", "k(1)", ""]).to_string()
            };
            format!(
                "{key}{}={}{}",
                *rng.pick(&["", " "]),
                rng.pick(&values),
                rng.pick(&props)
            )
        })
        .collect::<Vec<_>>()
        .join(*rng.pick(&[",", ", "]))
}

fn members(b: &Baggage) -> BTreeMap<String, (String, String)> {
    b.iter()
        .map(|(k, (v, m))| (k.to_string(), (v.to_string(), m.as_str().to_owned())))
        .collect()
}

fn sorted_members(header: Option<&String>) -> Vec<String> {
    let mut m: Vec<String> =
        header.map_or(Vec::new(), |h| h.split(',').map(str::to_owned).collect());
    m.sort();
    m
}

/// Reading, then writing what was read: where both accept, the same context and the same
/// bytes out.
#[test]
fn extract_then_inject_matches_the_sdk_where_both_accept() {
    let mut rng = Rng(0x2545_f491_4f6c_dd1d);
    let (mut tp_both, mut ts_both, mut bg_both) = (0, 0, 0);
    for case in 0..30_000 {
        let mut h: HashMap<String, String> = HashMap::new();
        let tp = random_traceparent(&mut rng);
        h.insert("traceparent".into(), tp.clone());
        if rng.chance(60) {
            h.insert("tracestate".into(), random_tracestate(&mut rng));
        }
        if rng.chance(60) {
            h.insert("baggage".into(), random_baggage_header(&mut rng));
        }
        let ours = Propagation::W3c.extract(&h);
        let theirs = sdk().extract(&h);
        let (osc, tsc) = (ours.span_context(), theirs.span().span_context().clone());

        // traceparent: ours accepts exactly what the grammar allows; the SDK accepts a
        // superset (uppercase versions, shorter ids, signs) and never less.
        let reference = conforming_traceparent(&tp);
        assert_eq!(osc.is_valid(), reference.is_some(), "case {case}: {tp:?}");
        if let Some((tid, sid, flags)) = &reference {
            assert!(tsc.is_valid(), "case {case}: the SDK rejects {tp:?}");
            assert_eq!(osc.trace_id().to_string(), *tid);
            assert_eq!(osc.span_id().to_string(), *sid);
            assert_eq!(osc.trace_flags().to_u8(), flags & 3, "case {case}");
            assert_eq!(tsc.trace_id(), osc.trace_id());
            assert_eq!(tsc.span_id(), osc.span_id());
            assert_eq!(tsc.is_sampled(), osc.is_sampled());
            tp_both += 1;
        }
        if !osc.is_valid() || !tsc.is_valid() {
            continue;
        }

        // tracestate: where both kept one, the same list.
        let (ots, tts) = (osc.trace_state(), tsc.trace_state());
        if *ots != TraceState::NONE && !ots.header().is_empty() && !tts.header().is_empty() {
            assert_eq!(
                ots.header(),
                tts.header(),
                "case {case}: {:?}",
                h.get("tracestate")
            );
            ts_both += 1;
        }
        if let Some(ts) = h.get("tracestate")
            && mqtrace::w3c::tracestate_members(ts).is_err()
        {
            assert!(ots.header().is_empty(), "case {case}: invalid {ts:?} kept");
        }

        // Written again from what each read.
        let child_ours = SpanContext::new(
            osc.trace_id(),
            SpanId::from(0x77),
            osc.trace_flags(),
            false,
            ots.clone(),
        );
        let child_theirs = SpanContext::new(
            tsc.trace_id(),
            SpanId::from(0x77),
            tsc.trace_flags(),
            false,
            tts.clone(),
        );
        let mut out_ours: HashMap<String, String> = HashMap::new();
        Propagation::W3c.inject(&child_ours, ours.context(), &mut out_ours);
        let mut out_theirs: HashMap<String, String> = HashMap::new();
        sdk().inject_context(
            &theirs.with_remote_span_context(child_theirs),
            &mut out_theirs,
        );
        let out_theirs = without_empty_tracestate(out_theirs);
        let (a, b) = (&out_ours["traceparent"], &out_theirs["traceparent"]);
        assert_eq!(a[..53], b[..53], "case {case}");
        assert_eq!(
            u8::from_str_radix(&a[53..], 16).ok(),
            u8::from_str_radix(&b[53..], 16)
                .ok()
                .map(|f| f | (osc.trace_flags().to_u8() & 2)),
            "case {case}"
        );
        if ots.header() == tts.header() && !ots.header().is_empty() {
            assert_eq!(
                out_ours.get("tracestate"),
                out_theirs.get("tracestate"),
                "case {case}"
            );
        }

        // baggage: compare the members both read, where the SDK follows the specification
        // (it cuts values at a second `=`, trims decoded values, drops invalid UTF-8, and
        // decodes keys).
        let (ob, tb) = (members(ours.context().baggage()), members(theirs.baggage()));
        let raw = h.get("baggage").cloned().unwrap_or_default();
        let comparable = |k: &str| {
            raw.split(',')
                .filter(|m| m.trim_start().starts_with(k))
                .all(|m| {
                    let v = m.split(';').next().unwrap_or("");
                    let v = v.split_once('=').map_or("", |(_, v)| v.trim());
                    !v.contains('=')
                        && !v.contains("%FF")
                        && !v.contains("%E2%82")
                        && !v.contains("%20")
                        && !m.contains("%2C")
                        && !m.contains(";p=%")
                })
        };
        let mut all_same = ob.len() == tb.len();
        for (k, theirs_v) in &tb {
            match ob.get(k) {
                Some(ours_v) if comparable(k) => {
                    assert_eq!(ours_v.0, theirs_v.0, "case {case}: {k} in {raw:?}");
                    all_same &= ours_v.1 == theirs_v.1 && !sdk_departs_on_value(&ours_v.0);
                    bg_both += 1;
                }
                Some(ours_v) => all_same &= ours_v == theirs_v,
                None => all_same = false,
            }
        }
        if all_same && !ob.is_empty() {
            assert_eq!(
                sorted_members(out_ours.get("baggage")),
                sorted_members(out_theirs.get("baggage")),
                "case {case}: {raw:?}"
            );
        }
    }
    assert!(
        tp_both > 3_000 && ts_both > 1_000 && bg_both > 1_000,
        "{tp_both} {ts_both} {bg_both}"
    );
}

/// Issue 14 item 4: re-encoding is stable from the first hop on, and never grows.
#[test]
fn re_encoding_is_stable_across_ten_hops() {
    let mut rng = Rng(0xdead_beef_cafe_f00d);
    for case in 0..5_000 {
        let mut h: HashMap<String, String> = HashMap::new();
        h.insert(
            "traceparent".into(),
            format!(
                "00-{:032x}-{:016x}-0{}",
                u128::from(rng.next()) | 1,
                rng.next() | 1,
                rng.below(4)
            ),
        );
        h.insert("tracestate".into(), random_tracestate(&mut rng));
        h.insert("baggage".into(), random_baggage_header(&mut rng));
        let mut previous: Option<(Vec<String>, Option<String>, usize)> = None;
        for hop in 0..10 {
            let x = Propagation::W3c.extract(&h);
            let sc = x.span_context().clone();
            let child = SpanContext::new(
                sc.trace_id(),
                SpanId::from(hop + 1),
                sc.trace_flags(),
                false,
                sc.trace_state().clone(),
            );
            let mut out: HashMap<String, String> = HashMap::new();
            Propagation::W3c.inject(&child, x.context(), &mut out);
            let bag = sorted_members(out.get("baggage"));
            let len = out.get("baggage").map_or(0, String::len);
            let ts = out.get("tracestate").cloned();
            if let Some((pb, pts, plen)) = &previous {
                assert_eq!(&bag, pb, "case {case} hop {hop}: baggage changed");
                assert_eq!(&ts, pts, "case {case} hop {hop}: tracestate changed");
                assert!(len <= *plen, "case {case} hop {hop}: grew");
            }
            assert_eq!(
                &out["traceparent"][3..35],
                &h["traceparent"][3..35],
                "case {case}"
            );
            previous = Some((bag, ts, len));
            h = out;
        }
    }
}
