"""Every Redis key, pattern and stream name, in one place."""

from __future__ import annotations

from dataclasses import dataclass

INPUT_KINDS = ("marketstate", "risk", "position")
LEASE_PREFIX = "quantum:harvest:lease:"
EPOCH_PREFIX = "quantum:harvest:epoch:"


@dataclass(frozen=True, slots=True)
class Keys:
    marketstate_prefix: str = "quantum:marketstate:"
    risk_prefix: str = "quantum:risk:proposal:"
    position_prefix: str = "quantum:state:positions:"
    harvest_prefix: str = "quantum:harvest:proposal:"
    stream: str = "quantum:stream:harvest.proposal"
    liveness_prefix: str = "quantum:harvest:publisher:"
    db: int = 0

    def marketstate(self, symbol: str) -> str:
        return self.marketstate_prefix + symbol

    def risk(self, symbol: str) -> str:
        return self.risk_prefix + symbol

    def position(self, symbol: str) -> str:
        return self.position_prefix + symbol

    def input_key(self, kind: str, symbol: str) -> str:
        """The key of one input hash: `kind` is marketstate, risk or position."""
        return self.input_prefixes()[kind] + symbol

    def proposal(self, symbol: str) -> str:
        return self.harvest_prefix + symbol

    def liveness(self, instance: str) -> str:
        return self.liveness_prefix + instance

    def lease(self, group: str, partition: int) -> str:
        """A group's partition lease (INTERFACE §6); the partition is the cluster hash tag,
        so a partition's lease and epoch live in one slot."""
        return f"{LEASE_PREFIX}{group}:{{{partition}}}"

    def epoch(self, group: str, partition: int) -> str:
        """A group's partition fencing epoch (INCR on every acquisition: only grows)."""
        return f"{EPOCH_PREFIX}{group}:{{{partition}}}"

    def input_prefixes(self) -> dict[str, str]:
        """Input kind -> key prefix."""
        return {
            "marketstate": self.marketstate_prefix,
            "risk": self.risk_prefix,
            "position": self.position_prefix,
        }

    def keyspace_channel_prefix(self) -> str:
        return f"__keyspace@{self.db}__:"

    def keyspace_patterns(self) -> list[str]:
        """One PSUBSCRIBE pattern per input prefix (glob chars in prefixes escaped)."""
        base = self.keyspace_channel_prefix()
        return [base + glob_escape(p) + "*" for p in self.input_prefixes().values()]

    def liveness_channel(self, instance: str) -> str:
        return self.keyspace_channel_prefix() + self.liveness(instance)

    def classify(self, key: str) -> tuple[str, str] | None:
        """(kind, symbol) for an input key, or None. Longest prefix wins."""
        best: tuple[str, str] | None = None
        best_len = -1
        for kind, prefix in self.input_prefixes().items():
            if key.startswith(prefix) and len(prefix) > best_len and len(key) > len(prefix):
                best = (kind, key[len(prefix) :])
                best_len = len(prefix)
        return best


def glob_escape(text: str) -> str:
    """`text` as a literal in a Redis glob pattern (SCAN MATCH, PSUBSCRIBE)."""
    out = []
    for ch in text:
        if ch in "*?[]\\":
            out.append("\\")
        out.append(ch)
    return "".join(out)
