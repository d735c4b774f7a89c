"""A Python peer for mqtrace's Kafka interop test.

Uses confluent-kafka with OpenTelemetry's own confluent-kafka instrumentation
(opentelemetry-instrumentation-confluent-kafka), the way a Python service would, and prints the
spans it exported (with their links) as one JSON object on stdout.

    python kafka_peer.py produce TOPIC          # produce one message (user header x-origin) and flush
    python kafka_peer.py consume TOPIC GROUP    # consume one message as GROUP (20 s at most)
    python kafka_peer.py produce-baggage TOPIC  # produce one message with peer_common.BAGGAGE

`consume` also reports the baggage the SDK's propagator decodes from the record's headers.

KAFKA_BOOTSTRAP_SERVERS names the broker (default 127.0.0.1:9092).
"""

import os
import sys
import time

from confluent_kafka import Consumer, Producer
from opentelemetry.instrumentation.confluent_kafka import ConfluentKafkaInstrumentor

from opentelemetry import context

from peer_common import BAGGAGE, WAIT_S, attach_baggage, fail, in_memory_tracing, sdk_baggage, spans_json


def header_json(headers):
    """Headers as [key, value as text (or its repr when not UTF-8 bytes), Python type of the value]."""
    out = []
    for key, value in headers or []:
        try:
            text = value.decode("utf-8") if isinstance(value, bytes) else repr(value)
        except UnicodeDecodeError:
            text = repr(value)
        out.append([key, text, type(value).__name__])
    return out


def main():
    mode, topic = sys.argv[1], sys.argv[2]
    servers = os.environ.get("KAFKA_BOOTSTRAP_SERVERS", "127.0.0.1:9092")
    provider, exporter = in_memory_tracing()
    instrumentor = ConfluentKafkaInstrumentor()

    extra = {}
    if mode in ("produce", "produce-baggage"):
        producer = instrumentor.instrument_producer(
            Producer({"bootstrap.servers": servers, "message.timeout.ms": WAIT_S * 1000}),
            tracer_provider=provider,
        )
        reports = []
        headers = [("x-origin", b"python")]
        token = attach_baggage(BAGGAGE) if mode == "produce-baggage" else None
        producer.produce(
            topic,
            b"from python",
            key=b"py",
            headers=headers,
            on_delivery=lambda err, msg: reports.append(err),
        )
        if token is not None:
            context.detach(token)
        # What the instrumentation wrote into the header list the record was sent with.
        extra["headers"] = header_json(headers)
        if producer.flush(WAIT_S) != 0 or not reports:
            fail(f"no delivery report for {topic} within {WAIT_S} s")
        if reports[0] is not None:
            fail(f"delivery to {topic} failed: {reports[0]}")
    elif mode == "consume":
        group = sys.argv[3]
        consumer = instrumentor.instrument_consumer(
            Consumer(
                {
                    "bootstrap.servers": servers,
                    "group.id": group,
                    "auto.offset.reset": "earliest",
                    "enable.auto.commit": False,
                    "session.timeout.ms": 6000,
                }
            ),
            tracer_provider=provider,
        )
        consumer.subscribe([topic])
        deadline = time.monotonic() + WAIT_S
        message = None
        while message is None and time.monotonic() < deadline:
            m = consumer.poll(1.0)
            if m is None:
                continue
            if m.error():
                if m.error().retriable():
                    continue
                fail(f"consumer error on {topic}: {m.error()}")
            message = m
        # Closing ends the instrumentation's process span of the last message.
        consumer.close()
        if message is None:
            fail(f"no message on {topic} within {WAIT_S} s")
        extra["body"] = message.value().decode("utf-8", "replace")
        extra["headers"] = header_json(message.headers())
        text = {}
        for key, value in message.headers() or []:
            if isinstance(value, bytes):
                try:
                    text.setdefault(key, value.decode("utf-8"))
                except UnicodeDecodeError:
                    pass
        extra["baggage"] = sdk_baggage(text)
    else:
        sys.exit(f"unknown mode {mode}")
    print(spans_json(exporter, extra))


if __name__ == "__main__":
    main()
