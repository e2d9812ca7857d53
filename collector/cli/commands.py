"""The server and data commands of `maidian`: thin handlers over the collector's library.

Each handler imports what it needs when it runs, so `maidian plan ...` works
without the collector's dependencies, and returns an exit code: 0 done,
1 nothing found, 2 unusable input (configuration, data directory, plan).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any, Final, TextIO

from maidian.collector.cli.options import add_audit_arguments, audit, load_plan, time_ms
from maidian.collector.cli.output import emit_json_line, reporting
from maidian.tracking_plan.cli import EXIT_FINDINGS, EXIT_OK, add_command, add_group

# The key the apps hash `x-pii: hash` identities with (the SDK reads the same variable).
PII_KEY_ENV: Final = "MAIDIAN_PII_KEY"

__all__ = ["add_collector_commands"]

Handler = Callable[[argparse.Namespace], int]


@reporting
def _serve(args: argparse.Namespace) -> int:
    from maidian.collector.config import ConfigSource, with_storage
    from maidian.collector.run.serve import serve

    flags = {
        "plan": args.plan,
        "data": args.data,
        "host": args.host,
        "port": args.port,
        "workers": args.workers,
        "durability": args.durability,
        "sink": args.sink,
        "kafka_bootstrap": args.kafka_bootstrap,
    }
    source = ConfigSource(args.config, tuple(flags.items()), tuple(args.write_key or ()))
    config = source.resolve()
    if args.writer_id:
        config = with_storage(config, writer_id=args.writer_id)
    if args.check_config:
        return _check_config(config, args.config)
    return serve(config, source)


def _check_config(config: Any, file: str | None) -> int:
    """`serve --check-config`: the configuration resolved and its plan loaded, nothing started; a summary."""
    from maidian.collector.run.serve import loop_factory
    from maidian.tracking_plan import load_plan

    plan = load_plan(config.plan)
    loop_factory(config.server.event_loop)
    keys = config.auth.write_keys
    revoked = sum(1 for k in keys if k.revoked)
    where = file or "flags and environment"
    print(
        f"configuration OK ({where}): plan {plan.name} {plan.version} ({len(plan.events)} events); "
        f"{len(keys) - revoked} active write keys, {revoked} revoked; {len(config.auth.sources)} server sources; "
        f"{len(config.auth.sensors_projects)} Sensors projects; listen {config.server.host}:{config.server.port}, "
        f"{config.server.workers} worker(s); data {config.storage.data_dir} ({config.storage.durability})"
    )
    return 0


@reporting
def _events(args: argparse.Namespace) -> int:
    import os

    from maidian.collector.errors import NoSuchPerson
    from maidian.collector.read import find_person_events

    key = os.environ.get(PII_KEY_ENV, "")
    try:
        view = find_person_events(
            Path(args.data), args.person, args.type, plan=load_plan(args.plan), pii_key=key.encode() or None
        )
    except NoSuchPerson:
        audit(args, "read", None)
        raise
    audit(args, "read", view.person)
    records = view.events
    for record in records:
        emit_json_line(record, sys.stdout)
    return EXIT_OK


class _Progress:
    """A one-line progress display on a terminal's stderr."""

    def __init__(self, stream: TextIO) -> None:
        self.stream = stream
        self.last = -1

    def __call__(self, done: int, total: int) -> None:
        percent = 100 if total == 0 else done * 100 // total
        if percent != self.last:
            self.last = percent
            self.stream.write(f"\rexporting: {percent:3d}% of {total / 1e6:.1f} MB")
            self.stream.flush()

    def finish(self, count: int) -> None:
        self.stream.write(f"\rexported {count} events{' ' * 20}\n")
        self.stream.flush()


@reporting
def _export(args: argparse.Namespace) -> int:
    from maidian.collector.read import export_events

    progress = _Progress(sys.stderr) if sys.stderr.isatty() else None
    damaged: list[tuple[str, Any]] = []
    count = 0
    for record in export_events(
        Path(args.data),
        since_ms=time_ms(args.since),
        until_ms=time_ms(args.until),
        quarantined=args.quarantined,
        progress=progress,
        on_damage=lambda log, damage: damaged.append((log, damage)),
    ):
        emit_json_line(record, sys.stdout)
        count += 1
    if progress is not None:
        progress.finish(count)
    if damaged:
        named = sum(d.events or 0 for _log, d in damaged)
        print(
            f"maidian export: skipped {len(damaged)} damaged frames ({named} events named in their heads); the frames"
            " after them were exported; `maidian verify` lists them",
            file=sys.stderr,
        )
    return EXIT_OK


@reporting
def _quarantine_list(args: argparse.Namespace) -> int:
    from maidian.collector.read import quarantine_records

    rows = quarantine_records(Path(args.data), args.rule)
    for row in rows:
        if args.format == "json":
            emit_json_line(row, sys.stdout)
        else:
            state = "replayed" if row["replayed"] else "waiting"
            where = f"{row['segment']}:{row['offset']}:{row['index']}"
            print(f"{where}  {row['event'] or '?'}  {','.join(row['rules'])}  {state}")
    if args.format != "json":
        waiting = sum(1 for r in rows if not r["replayed"])
        print(f"{len(rows)} quarantined events, {waiting} waiting for a replay", file=sys.stderr)
    return EXIT_OK


@reporting
def _quarantine_replay(args: argparse.Namespace) -> int:
    from maidian.collector.read import replay_quarantine

    report = replay_quarantine(Path(args.data), load_plan(args.plan))
    print(
        f"moved {report.moved} events into the raw log; {report.duplicate} were already there; "
        f"{report.still_invalid} still fail the plan; {report.already_replayed} were replayed before"
    )
    return EXIT_OK


@reporting
def _drops(args: argparse.Namespace) -> int:
    from maidian.collector.read import sdk_drops

    rows = sdk_drops(Path(args.data))
    totals: dict[str, int] = {}
    for source, reason, n in rows:
        totals[reason] = totals.get(reason, 0) + n
        if args.format == "json":
            emit_json_line({"source": source, "reason": reason, "dropped": n}, sys.stdout)
        else:
            print(f"{source}  {reason}  {n}")
    if args.format != "json":
        summary = ", ".join(f"{reason} {n}" for reason, n in sorted(totals.items())) or "none"
        print(f"{len({r[0] for r in rows})} senders reported dropped events: {summary}", file=sys.stderr)
    return EXIT_OK


@reporting
def _rebuild(args: argparse.Namespace) -> int:
    from maidian.collector.read import rebuild

    counts = rebuild(Path(args.data), load_plan(args.plan))
    print(f"rebuilt the catalog: {counts['accepted']} accepted, {counts['quarantined']} quarantined events")
    return EXIT_OK


@reporting
def _verify(args: argparse.Namespace) -> int:
    from maidian.collector.store.log import DataDir
    from maidian.collector.store.verify import verify

    result = verify(DataDir.existing(args.data))
    for item in result.damaged:
        d = item.damage
        if args.format == "json":
            record = {
                "log": item.log,
                "segment": d.segment,
                "offset": d.offset,
                "length": d.length,
                "events": d.events,
                "event_ids": list(d.event_ids),
            }
            emit_json_line(record, sys.stdout)
        else:
            held = "an unreadable head" if d.events is None else f"{d.events} events"
            ids = " ".join(d.event_ids)
            print(f"{item.log}/{d.segment}  offset {d.offset}  length {d.length}  {held}{':  ' + ids if ids else ''}")
    torn = [s for s in result.segments if s.torn_bytes]
    lost = sum(d.damage.events or 0 for d in result.damaged)
    print(
        f"{len(result.segments)} segments, {result.frames} valid frames ({result.events} events); "
        f"{len(result.damaged)} damaged frames ({lost} events named); "
        f"{len(torn)} torn tails ({sum(s.torn_bytes for s in torn)} bytes, never acknowledged)",
        file=sys.stderr,
    )
    return EXIT_OK if result.clean else EXIT_FINDINGS


def _hash_key(args: argparse.Namespace) -> int:
    from maidian.collector.settings import hash_key

    key = args.key if args.key != "-" else sys.stdin.readline().strip()
    print(hash_key(key))
    return EXIT_OK


def add_collector_commands(sub: Any) -> None:
    """Register the server and data commands on the root parser's subparsers."""
    p = add_command(
        sub,
        "serve",
        help="run the collector",
        description=(
            "Receive batches over HTTP, enforce the tracking plan, and store events durably in a data directory.\n"
            "Settings come from flags, then MAIDIAN_* environment variables, then the TOML file (--config);\n"
            "docs/collector.md lists them all. SIGTERM drains requests in flight, syncs and exits."
        ),
        example="maidian serve --plan plan.json --data /var/lib/maidian --host 0.0.0.0 --port 8106 --write-key KEY",
        handler=_serve,
    )
    p.add_argument("--config", help="a TOML configuration file (or MAIDIAN_CONFIG)")
    p.add_argument("--plan", help="the tracking plan (or MAIDIAN_PLAN)")
    p.add_argument("--data", help="the data directory (or MAIDIAN_DATA; default ./maidian-data)")
    p.add_argument("--host", help="address to listen on (default 127.0.0.1)")
    p.add_argument("--port", type=int, help="port to listen on (default 8106; 0 for any free port)")
    p.add_argument(
        "--write-key", action="append", help="a client write key (repeat for rotation; or MAIDIAN_WRITE_KEYS)"
    )
    p.add_argument("--workers", type=int, help="worker processes sharing the port (SO_REUSEPORT); default 1")
    p.add_argument("--durability", choices=("fsync", "write"), help="fsync (default) or write; see docs/collector.md")
    p.add_argument("--writer-id", help="this process's writer id in the data directory (default w0)")
    p.add_argument(
        "--sink", choices=("local", "kafka"), help="local segments (default) or Apache Kafka; see docs/scaling.md"
    )
    p.add_argument("--kafka-bootstrap", help="the Kafka brokers, HOST:PORT,... (or MAIDIAN_KAFKA_BOOTSTRAP)")
    p.add_argument(
        "--check-config",
        action="store_true",
        help="check the configuration (file, environment, flags) and the plan, print a summary, and exit "
        "without starting: 0 when usable, 2 naming the file, line and key that is not",
    )

    p = add_command(
        sub,
        "events",
        help="print one person's events, in time order",
        description=(
            "Print every stored event of the person who owns an identity (any of their ids: anonymous id,\n"
            "login id, or a declared type), as JSON lines in time order, including events from before login.\n"
            "Exit 1 when no stored event carries the identity."
        ),
        example="maidian events --data /var/lib/maidian --person u_10086",
        handler=_events,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--person", required=True, help="any identity value of the person")
    p.add_argument("--type", help="the identity type of the value (default: any)")
    p.add_argument(
        "--plan",
        help=f"the tracking plan, for its identity rules (default: the built-in rules); with it and {PII_KEY_ENV},"
        " a raw value of a hashed identity type (a mobile number) is hashed before the lookup",
    )
    add_audit_arguments(p)

    p = add_command(
        sub,
        "export",
        help="stream stored events as JSON lines",
        description=(
            "Stream every accepted event (deduplicated, in log order) as JSON lines on standard output;\n"
            "--since/--until bound the corrected event time (epoch ms or ISO 8601, UTC by default).\n"
            "Progress goes to standard error when it is a terminal."
        ),
        example="maidian export --data /var/lib/maidian --since 2026-11-01 --until 2026-11-02 --format jsonl",
        handler=_export,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--since", help="only events at or after this time")
    p.add_argument("--until", help="only events before this time")
    p.add_argument("--format", choices=("jsonl",), default="jsonl", help="jsonl (one JSON object per line)")
    p.add_argument("--quarantined", action="store_true", help="also export quarantined events, with their reasons")

    qsub = add_group(
        sub,
        "quarantine",
        help="list and replay quarantined events",
        description="Inspect the quarantine log and replay its events against a corrected plan.",
        example="maidian quarantine list --data /var/lib/maidian",
        dest="quarantine_command",
    )
    p = add_command(
        qsub,
        "list",
        help="list quarantined events with their rules",
        description=(
            "List every quarantined event: its position, event name, the rules it broke, and whether a replay\n"
            "has moved it. Event values are not printed (use export --quarantined)."
        ),
        example="maidian quarantine list --data /var/lib/maidian --rule enum",
        handler=_quarantine_list,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--rule", help="only events that broke this rule")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or JSON lines")
    p = add_command(
        qsub,
        "replay",
        help="move quarantined events that pass a new plan into the raw log",
        description=(
            "Re-validate every quarantined event not yet replayed against PLAN and append the ones that pass to\n"
            "the raw log, once: a second replay moves nothing again. Safe while the server runs."
        ),
        example="maidian quarantine replay --data /var/lib/maidian --plan plan-v2.json",
        handler=_quarantine_replay,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--plan", required=True, help="the corrected tracking plan")

    p = add_command(
        sub,
        "drops",
        help="list the events senders reported they dropped",
        description=(
            "List, per sender (the source id of its event ids) and reason, the largest count of events it\n"
            "reported it dropped and will never send (buffer or spool full, expired, too large, ...): the\n"
            "batch's `dropped` field. Counts are cumulative per sender; the totals go to standard error."
        ),
        example="maidian drops --data /var/lib/maidian --format json",
        handler=_drops,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or JSON lines")

    p = add_command(
        sub,
        "rebuild",
        help="rebuild the derived catalog from the logs",
        description=(
            "Delete the derived files (catalog.sqlite, identity graph, dedup snapshots) and rebuild them from\n"
            "the raw and quarantine logs. Run it with the server stopped."
        ),
        example="maidian rebuild --data /var/lib/maidian",
        handler=_rebuild,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--plan", help="the tracking plan, for its identity rules")

    p = add_command(
        sub,
        "verify",
        help="check every frame of the logs and list the damaged ones",
        description=(
            "Read every segment of the raw and quarantine logs from its first byte and check each frame's\n"
            "length and CRC. Print each damaged frame (log, segment, offset, length, and the event ids it held:\n"
            "the events lost there); readers skip damaged frames and keep the ones after them.\n"
            "Safe while the server runs. Exit 1 when a frame is damaged."
        ),
        example="maidian verify --data /var/lib/maidian",
        handler=_verify,
    )
    p.add_argument("--data", required=True, help="the data directory")
    p.add_argument("--format", choices=("text", "json"), default="text", help="text (default) or JSON lines")

    ksub = add_group(
        sub,
        "keys",
        help="work with write keys",
        description="Write keys are stored hashed in the configuration file.",
        example="maidian keys hash mk_live_2f9c",
        dest="keys_command",
    )
    p = add_command(
        ksub,
        "hash",
        help="print the sha256 to put in [[write_keys]]",
        description="Print the SHA-256 of a write key, the form the configuration file stores ('-' reads stdin).",
        example="maidian keys hash mk_live_2f9c",
        handler=_hash_key,
    )
    p.add_argument("key", help="the write key, or '-' to read it from standard input")
