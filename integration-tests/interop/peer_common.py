"""What mqtrace's Python interop peers share: tracing into memory, and printing the spans
exported (ids, parent, links, attributes) with what the peer saw, as one JSON object on stdout.

The peers run as scripts from this folder, so `import peer_common` finds this file.
"""

import json
import sys

from opentelemetry import trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

# How long a peer waits for a broker's answer or a message.
WAIT_S = 20


def in_memory_tracing():
    """A global tracer provider exporting synchronously into memory: (provider, exporter)."""
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    trace.set_tracer_provider(provider)
    return provider, exporter


def context_json(ctx):
    return {"trace_id": format(ctx.trace_id, "032x"), "span_id": format(ctx.span_id, "016x")}


def spans_json(exporter, extra):
    """The exported spans (name, kind, ids, parent id, links, attributes as text) and `extra`."""
    out = []
    for s in exporter.get_finished_spans():
        out.append(
            {
                "name": s.name,
                "kind": s.kind.name,
                **context_json(s.get_span_context()),
                "parent_id": format(s.parent.span_id, "016x") if s.parent else None,
                "links": [context_json(link.context) for link in s.links],
                "attributes": {k: str(v) for k, v in (s.attributes or {}).items()},
            }
        )
    return json.dumps({"spans": out, **extra})


def fail(message):
    """Prints the error as JSON (the Rust side shows it) and exits with status 1."""
    print(json.dumps({"error": message}))
    sys.exit(1)
