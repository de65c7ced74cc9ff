"""One module per subcommand: `register(subparsers)` adds its parser, `handle(args)` runs it.

Module top levels import only the standard library (and `_common`), so `harvest-async
compute` and `--help` never import redis or anyio; heavy imports happen in `handle`.
"""

COMMANDS: tuple[str, ...] = (
    "run",
    "compute",
    "simulate",
    "record",
    "replay",
    "export_audit",
    "plot",
    "doctor",
    "demo",
    "watch",
    "explain",
    "config",
)
