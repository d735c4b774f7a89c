"""A Python peer for mqtrace's Pub/Sub interop test.

Uses Google's own Pub/Sub client (google-cloud-pubsub) with its OpenTelemetry tracing turned on
(`enable_open_telemetry_tracing=True`), the way a Python service would, against the emulator
named by PUBSUB_EMULATOR_HOST, and prints the spans it exported as one JSON object on stdout.

    python pubsub_peer.py publish projects/P/topics/T                # publish one message
    python pubsub_peer.py subscribe projects/P/subscriptions/S       # receive and ack one
"""

import sys
import threading
import time

from google.cloud import pubsub_v1
from opentelemetry import trace

from peer_common import WAIT_S, fail, in_memory_tracing, spans_json


def main():
    mode, name = sys.argv[1], sys.argv[2]
    provider, exporter = in_memory_tracing()

    extra = {}
    if mode == "publish":
        publisher = pubsub_v1.PublisherClient(
            publisher_options=pubsub_v1.types.PublisherOptions(enable_open_telemetry_tracing=True)
        )
        future = publisher.publish(name, b"from python", **{"x-origin": "python"})
        extra["message_id"] = future.result(timeout=WAIT_S)
        publisher.stop()
    elif mode == "subscribe":
        subscriber = pubsub_v1.SubscriberClient(
            subscriber_options=pubsub_v1.types.SubscriberOptions(enable_open_telemetry_tracing=True)
        )
        got = threading.Event()

        def callback(message):
            extra["body"] = message.data.decode("utf-8", "replace")
            extra["attributes"] = dict(message.attributes)
            extra["message_id"] = message.message_id
            message.ack()
            got.set()

        streaming = subscriber.subscribe(name, callback)
        if not got.wait(WAIT_S):
            streaming.cancel()
            fail(f"no message on {name} within {WAIT_S} s")
        # The subscribe span ends once the ack has been handled; give it a bounded moment.
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline and not any(
            s.kind == trace.SpanKind.CONSUMER for s in exporter.get_finished_spans()
        ):
            time.sleep(0.05)
        streaming.cancel()
        try:
            streaming.result(timeout=WAIT_S)
        except Exception:  # the cancellation itself
            pass
        subscriber.close()
    else:
        fail(f"unknown mode {mode}")
    provider.force_flush()
    print(spans_json(exporter, extra))


if __name__ == "__main__":
    main()
