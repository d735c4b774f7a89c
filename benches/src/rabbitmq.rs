//! RabbitMQ through lapin: publish with confirms (1024 in flight), consume with a prefetch of
//! 500 and one ack per message, for every mode, alternating per round, fresh queue each time.

use crate::handwritten;
use crate::stats::{Meter, Mode, Runs, Sample, index, order};
use crate::telemetry::Counted;
use futures_util::StreamExt;
use lapin::PublisherConfirm;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, QueueDeclareOptions, QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable, LongString};
use lapin::{BasicProperties, Channel, Connection, ConnectionProperties};
use mqtrace_lapin::{TracedChannel, TracedPublisherConfirm};
use opentelemetry::Context;
use opentelemetry::trace::TraceContextExt as _;
use opentelemetry_sdk::trace::{Sampler, SdkTracer};

const WINDOW: usize = 1024;
const BODY: [u8; 128] = [7; 128];

enum Pending {
    Raw(PublisherConfirm),
    Hand(PublisherConfirm, Context),
    Traced(TracedPublisherConfirm),
}

async fn settle_all(pending: &mut Vec<Pending>) {
    for p in pending.drain(..) {
        match p {
            Pending::Raw(c) => {
                c.await.expect("confirm");
            }
            Pending::Hand(c, cx) => {
                let answer = c.await;
                handwritten::end_send(&cx, answer.as_ref().err().map(|e| e as _));
                answer.expect("confirm");
            }
            Pending::Traced(c) => {
                c.await.expect("confirm");
            }
        }
    }
}

struct Clients {
    raw: Channel,
    traced: [TracedChannel; 3],
    tracer: SdkTracer,
}

impl Clients {
    fn traced(&self, mode: Mode) -> &TracedChannel {
        match mode {
            Mode::Mqtrace10 => &self.traced[1],
            Mode::NoProvider => &self.traced[2],
            _ => &self.traced[0],
        }
    }
}

async fn publish(c: &Clients, mode: Mode, queue: &str, n: u32) {
    let mut pending = Vec::with_capacity(WINDOW);
    for _ in 0..n {
        let props = BasicProperties::default();
        let p = match mode {
            Mode::Raw => Pending::Raw(
                c.raw
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &BODY,
                        props,
                    )
                    .await
                    .expect("publish"),
            ),
            Mode::Headers => {
                let mut table = FieldTable::default();
                table.insert(
                    "traceparent".into(),
                    AMQPValue::LongString(LongString::from(handwritten::CONSTANT_TRACEPARENT)),
                );
                Pending::Raw(
                    c.raw
                        .basic_publish(
                            "".into(),
                            queue.into(),
                            BasicPublishOptions::default(),
                            &BODY,
                            props.with_headers(table),
                        )
                        .await
                        .expect("publish"),
                )
            }
            Mode::HandWritten => {
                let (cx, table) = handwritten::rabbitmq_publish(&c.tracer, queue, &props, &BODY);
                let confirm = c
                    .raw
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &BODY,
                        props.with_headers(table),
                    )
                    .await
                    .expect("publish");
                Pending::Hand(confirm, cx)
            }
            Mode::Mqtrace | Mode::Mqtrace10 | Mode::NoProvider => Pending::Traced(
                c.traced(mode)
                    .basic_publish(
                        "".into(),
                        queue.into(),
                        BasicPublishOptions::default(),
                        &BODY,
                        props,
                    )
                    .await
                    .expect("publish"),
            ),
        };
        pending.push(p);
        if pending.len() == WINDOW {
            settle_all(&mut pending).await;
        }
    }
    settle_all(&mut pending).await;
}

async fn consume(c: &Clients, mode: Mode, queue: &str, n: u32) {
    let opts = BasicConsumeOptions::default();
    match mode {
        Mode::Mqtrace | Mode::Mqtrace10 | Mode::NoProvider => {
            let ch = c.traced(mode);
            let mut consumer = ch
                .basic_consume(queue.into(), "".into(), opts, FieldTable::default())
                .await
                .expect("consume");
            for _ in 0..n {
                let d = consumer.next().await.expect("open").expect("delivery");
                d.ack(BasicAckOptions::default()).await.expect("ack");
            }
            let _ = ch.basic_cancel(consumer.tag(), Default::default()).await;
        }
        Mode::Raw | Mode::Headers | Mode::HandWritten => {
            let mut consumer = c
                .raw
                .basic_consume(queue.into(), "".into(), opts, FieldTable::default())
                .await
                .expect("consume");
            for _ in 0..n {
                let d = consumer.next().await.expect("open").expect("delivery");
                match mode {
                    Mode::HandWritten => {
                        let cx = handwritten::rabbitmq_process(&c.tracer, queue, &d);
                        let ack =
                            handwritten::settle_span(&c.tracer, &cx, "ack", "rabbitmq", queue);
                        let result = d.acker.ack(BasicAckOptions::default()).await;
                        handwritten::end_settle(ack, result.as_ref().err().map(|e| e as _));
                        cx.span().end();
                        result.expect("ack");
                    }
                    Mode::Headers => {
                        let tp = d
                            .properties
                            .headers()
                            .as_ref()
                            .and_then(|h| h.inner().get("traceparent"));
                        std::hint::black_box(tp);
                        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    }
                    _ => {
                        d.acker.ack(BasicAckOptions::default()).await.expect("ack");
                    }
                }
            }
            let _ = c.raw.basic_cancel(consumer.tag(), Default::default()).await;
        }
    }
}

async fn channel(conn: &Connection) -> Channel {
    let ch = conn.create_channel().await.expect("channel");
    ch.confirm_select(ConfirmSelectOptions::default())
        .await
        .expect("confirm_select");
    ch.basic_qos(500, BasicQosOptions::default())
        .await
        .expect("qos");
    ch
}

/// Every mode, `rounds` times, `n` messages each.
pub(crate) async fn run(n: u32, rounds: usize) -> Runs {
    let url = std::env::var("AMQP_URL")
        .unwrap_or_else(|_| "amqp://guest:guest@127.0.0.1:5672/%2f".into());
    let conn = Connection::connect(&url, ConnectionProperties::default())
        .await
        .unwrap_or_else(|e| {
            panic!("RabbitMQ is not reachable at {url}: {e}. Start it with `scripts/start-brokers.sh rabbitmq`")
        });
    let sampled = Counted::new(Sampler::AlwaysOn);
    let ten = Counted::ten_percent();
    let server = Some(("127.0.0.1", 5672));
    let clients = Clients {
        raw: channel(&conn).await,
        traced: [
            TracedChannel::new(
                channel(&conn).await,
                mqtrace_lapin::instrumentation(sampled.config(), server),
            ),
            TracedChannel::new(
                channel(&conn).await,
                mqtrace_lapin::instrumentation(ten.config(), server),
            ),
            TracedChannel::new(
                channel(&conn).await,
                mqtrace_lapin::instrumentation(mqtrace::Config::new(), server),
            ),
        ],
        tracer: sampled.tracer(),
    };
    let mut runs = Runs::default();
    for round in 0..rounds {
        let mut samples = [Sample::default(); 6];
        for mode in order(round) {
            let queue = format!(
                "mqtrace-bench-{}-{round}-{}",
                std::process::id(),
                mode.letter()
            );
            let mut args = FieldTable::default();
            args.insert("x-expires".into(), AMQPValue::LongInt(600_000));
            clients
                .raw
                .queue_declare(queue.as_str().into(), QueueDeclareOptions::default(), args)
                .await
                .expect("declare");
            let telemetry = if mode == Mode::Mqtrace10 {
                &ten
            } else {
                &sampled
            };
            let _ = telemetry.take_counts();
            let meter = Meter::start();
            publish(&clients, mode, &queue, n).await;
            let publish = meter.stop(n);
            let meter = Meter::start();
            consume(&clients, mode, &queue, n).await;
            let consume = meter.stop(n);
            let spans = telemetry.take_counts();
            let _ = clients
                .raw
                .queue_delete(queue.as_str().into(), QueueDeleteOptions::default())
                .await;
            samples[index(mode)] = Sample {
                publish,
                consume,
                spans,
            };
        }
        runs.rounds.push(samples);
        eprintln!("rabbitmq: round {} of {rounds} done", round + 1);
    }
    sampled.shutdown();
    ten.shutdown();
    let _ = conn.close(200, "bench done".into()).await;
    runs
}
