"""The `--against-audit` report: a table for people, JSON lines for scripts."""

from __future__ import annotations

import msgspec

from harvest_async.core.timefmt import iso_utc_ms
from harvest_async.replay.audit_decisions import KINDS, LABELS
from harvest_async.replay.audit_diff import AuditDiff, Difference

__all__ = ["format_jsonl", "format_text"]

# -- reports ---------------------------------------------------------------------------


def format_text(result: AuditDiff, *, replay_label: str, audit_label: str) -> str:
    """The summary table, then every difference in time order."""
    lines = [
        f"replay: {replay_label}",
        f"audit:  {audit_label}",
        f"window: {iso_utc_ms(result.start)} to {iso_utc_ms(result.end)} "
        f"({result.end - result.start:.1f} s); decisions = material publishes and "
        f"retractions (heartbeats excluded); tolerance {result.tolerance:g} s",
        "",
    ]
    head = (
        "symbol",
        "replay",
        "audit",
        "agree",
        "only-replay",
        "only-audit",
        "differ",
        "timing",
        "start",
    )
    table = [head]
    for row in result.symbols:
        c = row.counts
        table.append(
            (
                row.symbol,
                str(row.replay),
                str(row.audit),
                str(row.agree),
                str(c["only_replay"]),
                str(c["only_audit"]),
                str(c["differs"] + c["retraction_differs"]),
                str(c["timing"]),
                str(c["start_state"]),
            )
        )
    widths = [max(len(r[k]) for r in table) for k in range(len(head))]
    for r in table:
        cells = [r[0].ljust(widths[0])] + [
            v.rjust(w) for v, w in zip(r[1:], widths[1:], strict=True)
        ]
        lines.append("  ".join(cells).rstrip())
    if result.differences:
        lines.append("")
        lines.append("differences, in time order:")
        for d in result.differences:
            lines.extend(_describe(d, result.start))
    lines.append("")
    differ = sum(1 for row in result.symbols if row.differs)
    if result.agrees:
        lines.append(f"agree: {len(result.symbols)} symbols, the same decisions")
    else:
        counted = sum(1 for d in result.differences if d.counted)
        lines.append(f"DIFFER: {counted} differences in {differ} of {len(result.symbols)} symbols")
    return "\n".join(lines) + "\n"


def _describe(d: Difference, start: float) -> list[str]:
    note = "" if d.counted else " (not counted: at the window's end)"
    detail = f": {d.detail}" if d.detail else ""
    out = [
        f"  +{d.at - start:.3f} s ({iso_utc_ms(d.at)}) {d.symbol}: {LABELS[d.kind]}{detail}{note}"
    ]
    if d.replay is not None:
        out.append(f"      replay: {d.replay.describe()} at +{d.replay.at - start:.3f} s")
    if d.audit is not None:
        where = " (live state at the start)" if d.audit.start_state else ""
        ref = f" [{d.audit.ref}]" if d.audit.ref else ""
        out.append(f"      audit:  {d.audit.describe()} at +{d.audit.at - start:.3f} s{where}{ref}")
    return out


def format_jsonl(result: AuditDiff) -> bytes:
    """One JSON object per difference, then one per symbol, then the totals."""
    encode = msgspec.json.encode
    out: list[bytes] = []
    for d in result.differences:
        out.append(
            encode(
                {
                    "type": "difference",
                    "kind": d.kind,
                    "symbol": d.symbol,
                    "at": d.at,
                    "counted": d.counted,
                    "detail": d.detail,
                    "replay": None if d.replay is None else d.replay.brief(),
                    "audit": None if d.audit is None else d.audit.brief(),
                }
            )
        )
    for row in result.symbols:
        out.append(
            encode(
                {
                    "type": "symbol",
                    "symbol": row.symbol,
                    "replay": row.replay,
                    "audit": row.audit,
                    "agree": row.agree,
                    **row.counts,
                }
            )
        )
    totals = dict.fromkeys(KINDS, 0)
    for row in result.symbols:
        for kind, n in row.counts.items():
            totals[kind] += n
    out.append(
        encode(
            {
                "type": "summary",
                "agrees": result.agrees,
                "start": result.start,
                "end": result.end,
                "tolerance": result.tolerance,
                "symbols": len(result.symbols),
                **totals,
            }
        )
    )
    return b"\n".join(out) + b"\n"
