"""`harvest-async explain SYMBOL`: what the service would do with a symbol now, and why.

Built from the service's public pieces, so it cannot disagree with them: the input
hashes read by the service's own reader, `evaluate` (validation, staleness), the
kernel, and `gate.decide` against the proposal hash in Redis (what the running service
last wrote). What it cannot see is the running engine's memory: a publish that was
retracted since still holds the floor (read from the audit stream when it is there),
and a retraction the service has not written yet.

Modules: `snapshot` (what Redis holds: the Redis side), `decide` (pure: a Snapshot and a
time in, an Explanation out), `text` (the Explanation for people).
"""

from harvest_async.tools.explain.decide import Explanation, Verdict, explain, kernel_reasons
from harvest_async.tools.explain.snapshot import Snapshot, read_snapshot
from harvest_async.tools.explain.text import render_text

__all__ = [
    "Explanation",
    "Snapshot",
    "Verdict",
    "explain",
    "kernel_reasons",
    "read_snapshot",
    "render_text",
]
