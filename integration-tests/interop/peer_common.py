"""What mqtrace's Python interop peers share: tracing into memory, and printing the spans
exported (ids, parent, links, attributes) with what the peer saw, as one JSON object on stdout.

The peers run as scripts from this folder, so `import peer_common` finds this file.
"""

import json
import sys

from opentelemetry import baggage, context, propagate, trace
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


# The baggage the `*-baggage` modes send, through the SDK's own W3C baggage propagator:
# values with `%`, an escape-like `%41`, `,`, `;`, `=` and non-ASCII text (no spaces: the
# SDK's encoder writes a space as `+`, which W3C decoders read as a plus sign).
BAGGAGE = {"pct": "10%", "esc": "%41", "sep": "a,b;c=d", "uni": "héllo€"}


def attach_baggage(entries):
    """Attaches a context holding `entries` as baggage; returns the token to detach."""
    ctx = context.get_current()
    for key, value in entries.items():
        ctx = baggage.set_baggage(key, value, ctx)
    return context.attach(ctx)


def sdk_baggage(carrier):
    """The baggage the SDK's global propagator (tracecontext + baggage) reads from `carrier`
    (a dict of text headers), as {key: value}."""
    return {k: str(v) for k, v in baggage.get_all(propagate.extract(carrier)).items()}


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
