"""A Python peer for mqtrace's RabbitMQ interop test.

Uses pika with OpenTelemetry's own pika instrumentation (opentelemetry-instrumentation-pika),
the way a Python service would, and prints the spans it exported as one JSON object on stdout.

    python rabbitmq_peer.py publish QUEUE     # publish one message to QUEUE
    python rabbitmq_peer.py consume QUEUE     # consume and ack one message from QUEUE
    python rabbitmq_peer.py publish-baggage QUEUE   # publish one message with peer_common.BAGGAGE

`consume` also reports the baggage the SDK's propagator decodes from the message's headers.
"""

import os
import sys

import pika
from opentelemetry.instrumentation.pika import PikaInstrumentor

from opentelemetry import context

from peer_common import BAGGAGE, WAIT_S, attach_baggage, fail, in_memory_tracing, sdk_baggage, spans_json


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
    elif mode == "publish-baggage":
        token = attach_baggage(BAGGAGE)
        headers = {"x-origin": "python"}
        channel.basic_publish("", queue, b"from python", pika.BasicProperties(headers=headers))
        context.detach(token)
        extra["headers"] = dict(headers)
    elif mode == "consume":

        def on_message(ch, method, properties, body):
            extra["body"] = body.decode("utf-8", "replace")
            extra["headers"] = {k: (v if isinstance(v, str) else repr(v)) for k, v in (properties.headers or {}).items()}
            text = {k: (v.decode("utf-8") if isinstance(v, bytes) else v) for k, v in (properties.headers or {}).items()}
            extra["baggage"] = sdk_baggage({k: v for k, v in text.items() if isinstance(v, str)})
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
