"""A Python peer for mqtrace's RabbitMQ interop test.

Uses pika with OpenTelemetry's own pika instrumentation (opentelemetry-instrumentation-pika),
the way a Python service would, and prints the spans it exported as one JSON object on stdout.

    python rabbitmq_peer.py publish QUEUE     # publish one message to QUEUE
    python rabbitmq_peer.py consume QUEUE     # consume and ack one message from QUEUE
"""

import os
import sys

import pika
from opentelemetry.instrumentation.pika import PikaInstrumentor

from peer_common import WAIT_S, fail, in_memory_tracing, spans_json


def main():
    mode, queue = sys.argv[1], sys.argv[2]
    provider, exporter = in_memory_tracing()

    url = os.environ.get("AMQP_URL", "amqp://guest:guest@127.0.0.1:5672/%2f")
    connection = pika.BlockingConnection(pika.URLParameters(url))
    channel = connection.channel()
    PikaInstrumentor().instrument_channel(channel, tracer_provider=provider)

    extra = {}
    if mode == "publish":
        channel.basic_publish("", queue, b"from python", pika.BasicProperties(headers={"x-origin": "python"}))
    elif mode == "consume":

        def on_message(ch, method, properties, body):
            extra["body"] = body.decode("utf-8", "replace")
            extra["headers"] = {k: (v if isinstance(v, str) else repr(v)) for k, v in (properties.headers or {}).items()}
            ch.basic_ack(method.delivery_tag)
            ch.stop_consuming()

        channel.basic_consume(queue, on_message)
        connection.call_later(WAIT_S, channel.stop_consuming)
        channel.start_consuming()
        if "body" not in extra:
            fail(f"no message on {queue} within {WAIT_S} s")
    else:
        sys.exit(f"unknown mode {mode}")
    connection.close()
    print(spans_json(exporter, extra))


if __name__ == "__main__":
    main()
