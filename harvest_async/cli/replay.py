"""`harvest-async replay`: a recording through the live engine on a virtual clock, a
comparison of two sets of tunables, or a rehearsal into a Redis."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from harvest_async.cli.args import non_negative_float, positive_int
from harvest_async.cli.common import add_config_args, run_async, settings_from_args
from harvest_async.cli.exits import EXIT_ERROR, EXIT_USAGE, CliError


def register(subparsers: Any) -> None:
    p: argparse.ArgumentParser = subparsers.add_parser(
        "replay",
        help="replay a recording through the engine (or into a Redis)",
        description=(
            "Run a recording through the same engine and publish rules as the live service, on "
            "a virtual clock that follows the recorded timestamps, and write every publish and "
            "retraction as the audit stream would carry it. Deterministic: the same file and "
            "configuration give byte-identical output. The decision settings "
            "(PUBLISH_INTERVAL_SEC, MAX_PUBLISH_AGE_SEC, CHANGE_EPS_PCT, R_EPS, "
            "MAX_INPUT_AGE_SEC, MAX_CLOCK_SKEW_SEC, POSITION_SOURCE, THETA_*) come from the "
            "environment, --env-file and the flags, as for `run`."
        ),
    )
    p.add_argument("recording", metavar="FILE", help="a recording (.jsonl, or .jsonl.gz)")
    # the help lists the flags in the order added: output, modes, running, configuration
    _add_output_args(p)
    p.add_argument(
        "--compare",
        metavar="THETA_FILE",
        help="replay twice, current tunables vs this file's, and summarise the differences",
    )
    _add_into_args(p)
    _add_running_args(p)
    add_config_args(p, theta=True, decisions=True)
    _add_against_audit_args(p)
    p.set_defaults(handler=handle)


def _add_output_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--out",
        "-o",
        metavar="FILE",
        help="write here (default: stdout); the file appears only if the whole replay worked",
    )
    p.add_argument(
        "--format",
        choices=("jsonl", "csv", "text"),
        help="output format: jsonl (default) or csv; with --compare: text (default) or jsonl",
    )


def _add_into_args(p: argparse.ArgumentParser) -> None:
    p.add_argument(
        "--into",
        metavar="REDIS_URL",
        help="write the recorded changes into this Redis instead (rehearsals, load tests)",
    )
    p.add_argument(
        "--speed",
        type=non_negative_float,
        default=1.0,
        metavar="X",
        help="with --into: recorded pace times X (default 1; 0 = as fast as possible)",
    )
    p.add_argument(
        "--keep-times",
        action="store_true",
        help="with --into: write timestamps as recorded (default: shift them to now, so a "
        "live service does not find the inputs stale)",
    )


def _add_running_args(p: argparse.ArgumentParser) -> None:
    """How the replay runs (progress bar, processes); none of it changes the output."""
    progress = p.add_mutually_exclusive_group()
    progress.add_argument(
        "--progress", dest="progress", action="store_true", default=None, help="force the bar"
    )
    progress.add_argument(
        "--no-progress", dest="progress", action="store_false", help="no progress bar"
    )
    p.add_argument(
        "--jobs",
        "-j",
        type=positive_int,
        default=1,
        metavar="N",
        help="split the symbols over N processes (the same output, byte for byte; default 1)",
    )


def _add_against_audit_args(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "against the audit stream",
        "Diff the replay's decisions with what the service published (exit 0 when they "
        "agree, 1 when they differ); --format text (default) or jsonl.",
    )
    g.add_argument(
        "--against-audit",
        metavar="SOURCE",
        help="a Redis URL (the audit stream read there) or an `export-audit` JSONL file",
    )
    g.add_argument(
        "--audit-stream",
        metavar="NAME",
        help="the audit stream at a SOURCE URL (default: STREAM_NAME)",
    )
    g.add_argument(
        "--tolerance",
        type=non_negative_float,
        metavar="SEC",
        help="timing tolerance (default: the floor, PUBLISH_INTERVAL_SEC, at least 0.05 s)",
    )


def handle(args: argparse.Namespace) -> int:
    import os

    from harvest_async.replay.format import RecordingError

    if not os.path.isfile(args.recording):
        raise CliError(f"replay: no such file {args.recording!r}", EXIT_USAGE)
    modes = [
        name for name in ("compare", "into", "against_audit") if getattr(args, name) is not None
    ]
    if len(modes) > 1:
        flags = " and ".join(f"--{name.replace('_', '-')}" for name in modes)
        raise CliError(f"replay: {flags} cannot be combined", EXIT_USAGE)
    extra: dict[str, str] = {}
    if args.into is not None:
        if not args.into.startswith(("redis://", "rediss://", "unix://")):
            raise CliError(
                f"replay: --into must be a redis://, rediss:// or unix:// URL, got {args.into!r}",
                EXIT_USAGE,
            )
        extra["REDIS_URL"] = args.into
    settings = settings_from_args(args, extra)
    try:
        if args.into is not None:
            return _into(args, settings)
        if args.compare is not None:
            return _compare(args, settings)
        if args.against_audit is not None:
            return _against_audit(args, settings)
        return _replay(args, settings)
    except RecordingError as exc:
        if args.into is not None:
            what = "stopped; the changes before that line were written"
        elif args.out is None or args.out == "-":
            what = "stopped; the output above is incomplete"
        else:
            what = f"stopped; {args.out} was not written"
        raise CliError(f"replay: {exc} ({what})", EXIT_ERROR) from exc


def _replay(args: argparse.Namespace, settings: Any) -> int:
    from harvest_async.config import engine_config
    from harvest_async.replay.timeline import replay_to_file

    fmt = args.format or "jsonl"
    if fmt == "text":
        raise CliError("replay: --format text is for --compare; use jsonl or csv", EXIT_USAGE)
    stats = replay_to_file(
        args.recording,
        engine_config(settings),
        args.out,
        fmt=fmt,
        show_progress=args.progress,
        jobs=args.jobs,
    )
    note = "" if stats.complete else " (no end marker: the recording may be cut short)"
    print(
        f"replayed {stats.changes} changes ({stats.end - stats.start:.1f} s recorded, "
        f"{stats.symbols} symbols): {stats.publishes} publishes, {stats.retracts} "
        f"retractions{note}",
        file=sys.stderr,
    )
    return 0


def _compare(args: argparse.Namespace, settings: Any) -> int:
    import msgspec

    from harvest_async.config import engine_config, load_theta, load_theta_file
    from harvest_async.replay.compare import compare, format_comparison
    from harvest_async.replay.timeline import atomic_output

    fmt = args.format or "text"
    if fmt == "csv":
        raise CliError("replay: --compare writes text or jsonl, not csv", EXIT_USAGE)
    other = load_theta_file(args.compare, variable="--compare")
    base = msgspec.structs.asdict(settings.theta)
    theta_b = load_theta(args.compare, variable="--compare", base=base)
    config_a = engine_config(settings)
    config_b = msgspec.structs.replace(config_a, theta=theta_b)
    rows, stats = compare(args.recording, config_a, config_b)
    if fmt == "jsonl":
        data = b"".join(msgspec.json.encode(row) + b"\n" for row in rows)
    else:
        label_b = f"{args.compare} ({_describe(other)})"
        data = format_comparison(rows, "current tunables", label_b, stats).encode()
    if args.out is None or args.out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        with atomic_output(args.out) as stream:
            stream.write(data)
    return 0


def _describe(values: dict[str, object]) -> str:
    return ", ".join(f"{k}={v}" for k, v in sorted(values.items())) or "no changes"


def _into(args: argparse.Namespace, settings: Any) -> int:
    from harvest_async.redis_io.client import client_for, describe_url
    from harvest_async.replay.into_redis import replay_into

    url = args.into

    cluster = False

    async def main() -> Any:
        nonlocal cluster
        from harvest_async.redis_io.client import check_redis
        from harvest_async.redis_io.cluster.setup import cluster_client, cluster_mode

        await check_redis(settings)
        # a Redis Cluster: each key written on its node, a group as per-node pipelines
        cluster = await cluster_mode(settings)
        client = (
            cluster_client(settings, name="harvest-async-replay")
            if cluster
            else client_for(
                settings.redis_url, settings.redis_password, name="harvest-async-replay"
            )
        )
        try:
            return await replay_into(
                args.recording,
                client,
                settings.keys,
                speed=args.speed,
                retime=not args.keep_times,
                transaction=not cluster,
            )
        finally:
            await client.aclose()

    stats = run_async(main)
    shifted = (
        "timestamps as recorded"
        if args.keep_times
        else f"timestamps shifted by {stats.offset:+.0f} s"
    )
    groups = "per-node pipelined groups" if cluster else "transactions"
    print(
        f"wrote {stats.changes} changes ({stats.snapshots} snapshots, {stats.transactions} "
        f"{groups}, {len(stats.keys)} keys) into {describe_url(url)} in "
        f"{stats.seconds:.1f} s ({stats.recorded_seconds:.1f} s recorded, speed "
        f"{args.speed:g}); {shifted}"
    )
    return 0


def _against_audit(args: argparse.Namespace, settings: Any) -> int:
    import os

    from harvest_async.config import engine_config
    from harvest_async.redis_io.client import describe_url
    from harvest_async.replay.against_audit import against_audit, is_redis_url
    from harvest_async.replay.audit_report import format_jsonl, format_text
    from harvest_async.replay.timeline import atomic_output

    fmt = args.format or "text"
    if fmt == "csv":
        raise CliError("replay: --against-audit writes text or jsonl, not csv", EXIT_USAGE)
    source = args.against_audit
    if not is_redis_url(source) and not os.path.isfile(source):
        raise CliError(
            f"replay: --against-audit {source!r} is neither a redis://, rediss:// or unix:// "
            "URL nor a file",
            EXIT_USAGE,
        )
    floor = settings.publish_interval_sec
    tolerance = args.tolerance if args.tolerance is not None else max(floor, 0.05)
    stream = args.audit_stream or settings.keys.stream
    done = against_audit(
        args.recording,
        engine_config(settings),
        source,
        stream=stream,
        password=settings.redis_password,
        tolerance=tolerance,
    )
    for note in done.notes:
        print(f"harvest-async: warning: {note}", file=sys.stderr)
    if fmt == "jsonl":
        data = format_jsonl(done.result)
    else:
        audit_label = f"{stream} at {describe_url(source)}" if is_redis_url(source) else source
        replay_label = (
            f"{args.recording} ({done.stats.changes} changes, {done.stats.publishes} "
            f"publishes, {done.stats.retracts} retractions)"
        )
        data = format_text(done.result, replay_label=replay_label, audit_label=audit_label).encode()
    if args.out is None or args.out == "-":
        sys.stdout.buffer.write(data)
        sys.stdout.flush()
    else:
        with atomic_output(args.out) as stream_out:
            stream_out.write(data)
    return 0 if done.result.agrees else EXIT_ERROR
