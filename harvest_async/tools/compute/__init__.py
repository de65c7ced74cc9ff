"""The `compute` command: what-if runs over cases read from a stream.

Input: a JSON array, or JSON lines, of objects shaped like the reference vectors (docs/kernel.md)
(`position`, `market_state`, optional `p1_proposal`, optional `theta`, optional `name`;
other keys such as `expected` are ignored). The first non-blank character decides:
`[` means an array, anything else JSON lines (blank lines are skipped).

Two modes:

* the default, *what the service would do*: each object is read as the service reads
  the input hash of that name (its fields as the producer would write them), through the
  same validation (`core.inputs`: parse, then evaluate at `now`), then the kernel. A case the
  service would retract gets an `error` line with the service's reason text
  (`invalid_position: entry_price must be > 0 (0.0)`, `flat: position side is FLAT`).
* `raw`: the locked kernel alone, as the spec defines it (every reference vector,
  including the `edge::` ones the service refuses); only malformed cases and inputs the
  kernel itself refuses get an `error` line.

Output: one JSON line per case, in input order: `index` (0-based), `name` and `symbol`
when the case has them, then the decision; or, for a rejected case, `index` (JSON lines
also `line`, 1-based), `name`, `symbol` and `error`. Empty input gives no output and
status 0.

A case's `theta` sets only the tunables it names; the others come from `theta_default`
(the `--theta` file, else the kernel defaults).

Pure apart from the two streams: standard library, msgspec, the input parsing and the kernel.

Modules: `cases` (a case as decoded, its tunables, its hashes), `runner` (computing a case
into its output line), `stream` (reading a stream of cases, array or JSON lines).
"""

from harvest_async.tools.compute.cases import ServiceChecks
from harvest_async.tools.compute.stream import READ_BYTES, run_compute

__all__ = ["READ_BYTES", "ServiceChecks", "run_compute"]
