//! Google Pub/Sub through google-cloud-pubsub against the emulator: `Publisher::publish` with
//! 1000 results in flight; a subscriber stream with one `ack` per message, for every mode,
//! alternating per round, a fresh topic and subscription each time.

use crate::handwritten;
use crate::stats::{Meter, Mode, Phase, Runs, Sample, index, order};
use crate::telemetry::Counted;
use futures_util::StreamExt;
use google_cloud_pubsub::client::{Publisher, Subscriber};
use google_cloud_pubsub::model::Message;
use google_cloud_pubsub::publisher::PublishFuture;
use mqtrace_integration_tests::pubsub::{PubSub, pubsub};
use mqtrace_pubsub::{TracedPublishFuture, TracedPublisher, TracedSubscriber};
use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracer};
use std::time::Duration;

/// How the Pub/Sub figures are made (for the report).
pub(crate) const METHOD: &str = "publish with `Publisher::publish` (1000 results in flight; M and H write `traceparent` and \
`googclient_traceparent`, as mqtrace does by default); consume from a streaming pull with one `ack` per message \
(B and M record a settle span for it). The emulator caps consume throughput, so consume CPU per message is the figure \
that shows the client-side cost.";

const WINDOW: usize = 1000;
const BODY: [u8; 128] = [7; 128];

enum Pending {
    Raw(PublishFuture),
    Hand(PublishFuture, Context),
    Traced(TracedPublishFuture),
}

async fn drain(pending: &mut Vec<Pending>) {
    for p in pending.drain(..) {
        match p {
            Pending::Raw(f) => {
                f.await.expect("published");
            }
            Pending::Hand(f, cx) => {
                let r = f.await;
                handwritten::end_send(&cx, r.as_ref().err().map(|e| e as _));
                r.expect("published");
            }
            Pending::Traced(f) => {
                f.await.expect("published");
            }
        }
    }
}

struct Clients {
    ps: PubSub,
    subscriber: Subscriber,
    traced_subscribers: [TracedSubscriber; 3],
    configs: [mqtrace::Config; 3],
    tracer: SdkTracer,
}

fn slot(mode: Mode) -> usize {
    match mode {
        Mode::Mqtrace10 => 1,
        Mode::NoProvider => 2,
        _ => 0,
    }
}

async fn publish(c: &Clients, mode: Mode, topic: &str, n: u32) -> Phase {
    let raw: Publisher =
        c.ps.emulator
            .publisher(topic)
            .build()
            .await
            .expect("publisher");
    let traced = matches!(mode, Mode::Mqtrace | Mode::Mqtrace10 | Mode::NoProvider).then(|| {
        TracedPublisher::new(
            raw.clone(),
            topic,
            c.ps.emulator.instrumentation(c.configs[slot(mode)].clone()),
        )
    });
    let short = mqtrace_pubsub::short_name(topic);
    let meter = Meter::start();
    let mut pending = Vec::with_capacity(WINDOW);
    for _ in 0..n {
        let mut msg = Message::new().set_data(BODY.to_vec());
        let p = match (&traced, mode) {
            (Some(t), _) => Pending::Traced(t.publish(msg)),
            (None, Mode::Headers) => {
                for key in ["traceparent", "googclient_traceparent"] {
                    msg.attributes
                        .insert(key.to_owned(), handwritten::CONSTANT_TRACEPARENT.to_owned());
                }
                Pending::Raw(raw.publish(msg))
            }
            (None, Mode::HandWritten) => {
                let cx = handwritten::pubsub_send(&c.tracer, short, &mut msg);
                Pending::Hand(raw.publish(msg), cx)
            }
            (None, _) => Pending::Raw(raw.publish(msg)),
        };
        pending.push(p);
        if pending.len() == WINDOW {
            drain(&mut pending).await;
        }
    }
    drain(&mut pending).await;
    meter.stop(n)
}

async fn consume(c: &Clients, mode: Mode, subscription: &str, n: u32) {
    let short = mqtrace_pubsub::short_name(subscription).to_owned();
    let limit = Duration::from_secs(120);
    match mode {
        Mode::Mqtrace | Mode::Mqtrace10 | Mode::NoProvider => {
            let mut stream = c.traced_subscribers[slot(mode)]
                .subscribe(subscription)
                .build();
            for _ in 0..n {
                let (_msg, handler) = tokio::time::timeout(limit, stream.next())
                    .await
                    .expect("a message within 120 s")
                    .expect("stream open")
                    .expect("message");
                handler.ack();
            }
        }
        _ => {
            let mut stream = c.subscriber.subscribe(subscription).build();
            for _ in 0..n {
                let (msg, handler) = tokio::time::timeout(limit, stream.next())
                    .await
                    .expect("a message within 120 s")
                    .expect("stream open")
                    .expect("message");
                match mode {
                    Mode::HandWritten => {
                        let cx = handwritten::pubsub_process(&c.tracer, &short, &msg);
                        let settle =
                            handwritten::settle_span(&c.tracer, &cx, "ack", "gcp_pubsub", &short);
                        handler.ack();
                        handwritten::end_settle(settle, None);
                        cx.span().end();
                    }
                    Mode::Headers => {
                        std::hint::black_box(msg.attributes.get("googclient_traceparent"));
                        handler.ack();
                    }
                    _ => handler.ack(),
                }
            }
        }
    }
}

/// Every mode, `rounds` times, `n` messages each.
pub(crate) async fn run(n: u32, rounds: usize) -> Runs {
    let sampled = Counted::new(Sampler::AlwaysOn);
    let ten = Counted::ten_percent();
    let configs = [sampled.config(), ten.config(), mqtrace::Config::new()];
    let ps = pubsub().await;
    let subscriber = ps.emulator.subscriber().build().await.expect("subscriber");
    let traced_subscribers = configs.clone().map(|config| {
        TracedSubscriber::new(subscriber.clone(), ps.emulator.instrumentation(config))
    });
    let clients = Clients {
        ps,
        subscriber,
        traced_subscribers,
        configs,
        tracer: sampled.tracer(),
    };
    let mut runs = Runs::default();
    for round in 0..rounds {
        let mut samples = [Sample::default(); 6];
        for mode in order(round) {
            let id =
                format!("bench-{}-{round}-{}", std::process::id(), mode.letter()).to_lowercase();
            let topic = clients.ps.create_topic(&id).await;
            let subscription = clients.ps.create_subscription(&id, &topic, |s| s).await;
            let telemetry = if mode == Mode::Mqtrace10 {
                &ten
            } else {
                &sampled
            };
            let _ = telemetry.take_counts();
            // The publisher is built inside, before its clock starts.
            let publish = publish(&clients, mode, &topic, n).await;
            let meter = Meter::start();
            consume(&clients, mode, &subscription, n).await;
            let consume = meter.stop(n);
            let spans = telemetry.take_counts();
            samples[index(mode)] = Sample {
                publish,
                consume,
                spans,
            };
        }
        runs.rounds.push(samples);
        eprintln!("pubsub: round {} of {rounds} done", round + 1);
    }
    sampled.shutdown();
    ten.shutdown();
    runs
}
