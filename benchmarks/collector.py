"""Collector throughput and latency, with the floors and a peer measured in the same run.

    .venv/bin/python benchmarks/collector.py            # full run: 3 rounds, every row once per round, medians
    .venv/bin/python benchmarks/collector.py --quick    # one short run per row

Rows (events/s through one process, p50/p99 request latency):
- `maidian serve` as a subprocess (fsync durability with group commit, dedup
  and identity indexing on), fed by one load process sending pre-built
  msgpack+zstd batches over keep-alive connections on 127.0.0.1, for 50- and
  500-event batches, with a one-event plan and a generated 3,000-event plan;
  beside events/s, the collector's CPU µs per event (all its threads, and its
  event loop alone) from /proc, which other load on the machine disturbs far
  less than events/s, and the cores the load process itself used;
- two worker processes (`--workers 2`, SO_REUSEPORT) on the same data directory;
- stages: CPU µs per event of each stage of the pipeline (decompress, decode,
  judge and within it validate, deduplicate-frame-append, response), measured
  in-process as the least of several passes;
- floors: an aiohttp handler that only reads the body (HTTP cost), and the
  pipeline with no HTTP (decompress, decode, judge, dedupe, append with
  fsync group commit) driven in-process; their combined floor is the rate if
  the two costs simply added up;
- a peer ceiling: nginx (Debian's package, one worker) reading each body and
  appending it to a log (echo module + access_log of $request_body).

Every batch comes from its own SDK-like device (its own source id, sequence
numbers from 1, one anonymous and one login id), so nothing is a duplicate
and every request brings the identity graph a new link (its worst case).
Rows run round-robin (every row once per round), so that a slow spell of a
shared host lands on all rows alike; the two-process scaling is the median of
each round's ratio. Prints the load average, a Markdown table and the stage
table, and writes JSON to benchmarks/results/collector.json.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import multiprocessing as mp
import os
import re
import shutil
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import msgspec
import zstandard

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from plangen import generate_plan  # noqa: E402

KEY = "bench-write-key-000000000001"
# Connections per load run. Each request waits for the fsync that covers it (about
# 8 ms on this shared disk when busy), so throughput needs enough requests in flight
# for one fsync to cover many events: many devices at once, as in production.
CONNS = {50: 48, 500: 16}
T0 = 1_763_800_000_000


# -- request bodies ----------------------------------------------------------------


def make_bodies(samples: dict[str, dict[str, Any]], batch: int, count: int, worker: int) -> list[bytes]:
    """`count` distinct compressed batches of `batch` events, each from its own device."""
    names = sorted(samples)
    cctx = zstandard.ZstdCompressor(level=1)
    enc = msgspec.msgpack.Encoder()
    now = int(time.time() * 1000)
    out = []
    for b in range(count):
        device = f"{worker:04x}{b:012x}{os.urandom(8).hex()}"
        anon = f"anon-{worker}-{b}"
        login = f"user-{worker}-{b % 5000}"
        events = []
        for k in range(batch):
            name = names[(b * batch + k) % len(names)]
            props = dict(samples[name])
            props["$lib"] = "maidian-python"
            props["$lib_version"] = "0.1.0"
            events.append(
                {
                    "type": "track",
                    "event": name,
                    "event_id": f"{device}-{k + 1}",
                    "time": now - 1000 + k,
                    "identities": {"anonymous_id": anon, "login_id": login},
                    "properties": props,
                }
            )
        out.append(cctx.compress(enc.encode({"sent_at": now, "lib": "bench", "lib_version": "0", "events": events})))
    return out


def request_bytes(body: bytes, port: int) -> bytes:
    head = (
        f"POST /v1/batch HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nContent-Type: application/msgpack\r\n"
        f"Content-Encoding: zstd\r\nX-Maidian-Write-Key: {KEY}\r\nContent-Length: {len(body)}\r\n\r\n"
    )
    return head.encode() + body


# -- load generator (separate processes) -------------------------------------------


async def _connection(
    port: int,
    requests: list[bytes],
    start: int,
    step: int,
    deadline: float,
    lat: list[float],
    stats: dict[str, int],
    cycle: bool,
) -> None:
    reader, writer = await asyncio.open_connection("127.0.0.1", port)
    i = start
    try:
        while time.perf_counter() < deadline and (cycle or i < len(requests)):
            t = time.perf_counter()
            writer.write(requests[i % len(requests)])
            try:
                head = await reader.readuntil(b"\r\n\r\n")
            except (asyncio.IncompleteReadError, ConnectionError):
                # The server closed a keep-alive connection: reconnect and send the same request again.
                writer.close()
                reader, writer = await asyncio.open_connection("127.0.0.1", port)
                stats["reconnects"] = stats.get("reconnects", 0) + 1
                continue
            status = int(head[9:12])
            m = re.search(rb"(?i)content-length:\s*(\d+)", head)
            if m:
                await reader.readexactly(int(m.group(1)))
            else:  # chunked (nginx's echo module)
                while True:
                    size = int((await reader.readuntil(b"\r\n")).strip(), 16)
                    await reader.readexactly(size + 2)
                    if size == 0:
                        break
            lat.append(time.perf_counter() - t)
            stats[str(status)] = stats.get(str(status), 0) + 1
            i += step
    finally:
        writer.close()


def _load(
    port: int,
    plan_events: int,
    batch: int,
    count: int,
    worker: int,
    conns: int,
    duration_s: float,
    ready: Any,
    go: Any,
    results: Any,
    cycle: bool,
) -> None:
    _, samples = generate_plan(plan_events)
    requests = [request_bytes(b, port) for b in make_bodies(samples, batch, count, worker)]
    ready.set()
    go.wait()
    lat: list[float] = []
    stats: dict[str, int] = {}

    async def run() -> float:
        start = time.perf_counter()
        deadline = start + duration_s
        await asyncio.gather(
            *(_connection(port, requests, c, conns, deadline, lat, stats, cycle) for c in range(conns))
        )
        return time.perf_counter() - start

    cpu = time.process_time()
    elapsed = asyncio.run(run())
    results.put(
        {
            "latencies": lat,
            "stats": stats,
            "elapsed": elapsed,
            "requests": len(lat),
            "exhausted": len(lat) >= len(requests),
            "cpu_s": time.process_time() - cpu,
        }
    )


def drive(
    port: int,
    plan_events: int,
    batch: int,
    *,
    duration_s: float,
    rate_hint: float,
    procs: int = 1,
    conns: int = 8,
    cycle: bool = False,
) -> dict[str, Any]:
    """Run `procs` load processes against a server for `duration_s`; events/s and latency percentiles.

    `cycle` sends a few hundred bodies over and over (servers that do not deduplicate);
    otherwise every body is new, and `rate_hint` sizes how many to build.
    """
    ctx = mp.get_context("fork")
    go = ctx.Event()
    results = ctx.Queue()
    count = 400 if cycle else int(rate_hint * duration_s * 1.5 / batch / procs) + conns * 4
    readies, workers = [], []
    for w in range(procs):
        ready = ctx.Event()
        p = ctx.Process(
            target=_load,
            args=(
                port,
                plan_events,
                batch,
                count,
                w + 100 * os.getpid() % 1000,
                conns,
                duration_s,
                ready,
                go,
                results,
                cycle,
            ),
        )
        p.start()
        readies.append(ready)
        workers.append(p)
    for r in readies:
        r.wait(600)
    go.set()
    outs = [results.get(timeout=duration_s + 120) for _ in workers]
    for p in workers:
        p.join()
    lat = sorted(x for o in outs for x in o["latencies"])
    ok = sum(o["stats"].get("200", 0) for o in outs)
    elapsed = max(o["elapsed"] for o in outs)
    statuses: dict[str, int] = {}
    for o in outs:
        for k, v in o["stats"].items():
            statuses[k] = statuses.get(k, 0) + v
    return {
        "events_total": ok * batch,
        "events_per_s": ok * batch / elapsed,
        "requests_per_s": len(lat) / elapsed,
        "p50_ms": lat[len(lat) // 2] * 1000 if lat else None,
        "p99_ms": lat[int(len(lat) * 0.99)] * 1000 if lat else None,
        "statuses": statuses,
        "exhausted": any(o["exhausted"] for o in outs),
        # Cores the load processes used while sending: what they took from the servers on a shared machine.
        "loadgen_cores": sum(o["cpu_s"] for o in outs) / elapsed,
    }


# -- CPU accounting --------------------------------------------------------------------


def _stat(pid: int) -> tuple[int, float]:
    """(parent pid, CPU seconds used) of a process, from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return int(fields[1]), (int(fields[11]) + int(fields[12])) / ticks


def _tree(root: int) -> list[int]:
    """A process and all its descendants."""
    parents: dict[int, int] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)] = _stat(int(entry))[0]
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    out, todo = [], [root]
    while todo:
        pid = todo.pop()
        out.append(pid)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return out


def main_thread_seconds(root: int) -> float:
    """CPU seconds of the main threads (the event loops) of a process tree; the rest is helper threads."""
    ticks = os.sysconf("SC_CLK_TCK")
    total = 0.0
    for pid in _tree(root):
        try:
            with open(f"/proc/{pid}/task/{pid}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except (FileNotFoundError, ProcessLookupError):
            continue
        total += (int(fields[11]) + int(fields[12])) / ticks
    return total


def cpu_seconds(root: int) -> float:
    """CPU seconds used so far by a process and all its descendants (the collector and its workers)."""
    parents: dict[int, int] = {}
    used: dict[int, float] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                parents[int(entry)], used[int(entry)] = _stat(int(entry))
            except (FileNotFoundError, ProcessLookupError, IndexError, ValueError):
                continue
    total, todo = 0.0, [root]
    while todo:
        pid = todo.pop()
        total += used.get(pid, 0.0)
        todo.extend(child for child, parent in parents.items() if parent == pid)
    return total


# -- servers -------------------------------------------------------------------------


def _wait_port(proc: subprocess.Popen[str], count: int = 1, pattern: str = r"http://127\.0\.0\.1:(\d+)") -> int:
    """The port from the first of `count` "listening" lines on the server's stderr."""
    assert proc.stderr is not None
    deadline = time.time() + 60
    ports: list[int] = []
    while time.time() < deadline and len(ports) < count:
        line = proc.stderr.readline()
        if not line:
            break
        ports += [int(p) for p in re.findall(pattern, line)]
    if len(ports) < count:
        raise RuntimeError("server did not start")
    return ports[0]


def _stop(proc: subprocess.Popen[str]) -> None:
    proc.send_signal(signal.SIGTERM)
    try:
        proc.wait(60)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def start_collector(
    plan_path: Path, data: Path, workers: int = 1, python: str = sys.executable
) -> tuple[subprocess.Popen[str], int]:
    cmd = [
        python,
        "-m",
        "maidian.collector.cli",
        "serve",
        "--plan",
        str(plan_path),
        "--data",
        str(data),
        "--host",
        "127.0.0.1",
        "--port",
        "0",
        "--write-key",
        KEY,
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL, text=True, cwd=ROOT)
    return proc, _wait_port(proc, workers)


def start_bare() -> tuple[subprocess.Popen[str], int]:
    proc = subprocess.Popen([sys.executable, str(HERE / "_bare_aiohttp.py")], stderr=subprocess.PIPE, text=True)
    return proc, _wait_port(proc)


NGINX_CONF = """
load_module /usr/lib/nginx/modules/ngx_http_echo_module.so;
worker_processes 1;
daemon off;
pid {dir}/nginx.pid;
error_log {dir}/error.log;
events {{ worker_connections 1024; }}
http {{
  access_log off;
  keepalive_requests 1000000;
  client_body_temp_path {dir}/body;
  proxy_temp_path {dir}/proxy;
  fastcgi_temp_path {dir}/fastcgi;
  uwsgi_temp_path {dir}/uwsgi;
  scgi_temp_path {dir}/scgi;
  log_format bodies escape=none '$request_body';
  server {{
    listen 127.0.0.1:{port};
    client_max_body_size 4m;
    client_body_buffer_size 4m;
    location = /v1/batch {{
      echo_read_request_body;
      access_log {dir}/bodies.log bodies;
      echo '{{"accepted":0}}';
    }}
  }}
}}
"""


def start_nginx(tmp: Path) -> tuple[subprocess.Popen[str], int, Path] | None:
    nginx = shutil.which("nginx") or ("/usr/sbin/nginx" if Path("/usr/sbin/nginx").exists() else None)
    if nginx is None or not Path("/usr/lib/nginx/modules/ngx_http_echo_module.so").exists():
        return None
    import socket

    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    port = s.getsockname()[1]
    s.close()
    d = tmp / "nginx"
    d.mkdir()
    conf = d / "nginx.conf"
    conf.write_text(NGINX_CONF.format(dir=d, port=port))
    proc = subprocess.Popen([nginx, "-c", str(conf), "-p", str(d)], stderr=subprocess.PIPE, text=True)
    deadline = time.time() + 10
    while time.time() < deadline:
        try:
            socket.create_connection(("127.0.0.1", port), timeout=0.2).close()
            return proc, port, d / "bodies.log"
        except OSError:
            time.sleep(0.05)
    proc.kill()
    return None


# -- the pipeline with no HTTP ---------------------------------------------------------


def pipeline_floor(plan_path: Path, plan_events: int, batch: int, data: Path, duration_s: float) -> dict[str, Any]:
    """Decompress, decode, judge, dedupe and append (fsync group commit), in-process, 8 requests at a time."""
    from maidian.collector.pipeline.auth import Principal
    from maidian.collector.pipeline.decode import decode_batch, decompress
    from maidian.collector.service import Collector
    from maidian.collector.settings import Config, StorageConfig
    from maidian.tracking_plan.envelope import DEFAULT_LIMITS

    _, samples = generate_plan(plan_events)
    bodies = make_bodies(samples, batch, int(200_000 * duration_s * 1.5 / batch) + 64, 7)
    config = Config(plan=plan_path, storage=StorageConfig(data_dir=data))
    collector = Collector(config)
    collector.open()
    principal = Principal("bench", "key", trusted=False)
    import gc

    gc.freeze()  # as `maidian serve` does once it has started
    gc.set_threshold(50_000, 20, 20)

    async def run() -> tuple[int, float, float]:
        await collector.start()
        ingest = collector.ingest
        assert ingest is not None
        done = 0
        nxt = 0
        start = time.perf_counter()
        cpu = time.process_time()
        deadline = start + duration_s

        async def worker() -> None:
            nonlocal done, nxt
            while time.perf_counter() < deadline and nxt < len(bodies):
                body = bodies[nxt]
                nxt += 1
                b = decode_batch(decompress(body, "zstd", DEFAULT_LIMITS.max_decoded_bytes), "msgpack", DEFAULT_LIMITS)
                out = await ingest.ingest(b, principal, "r")
                done += out.accepted

        await asyncio.gather(*(worker() for _ in range(CONNS[batch])))
        elapsed = time.perf_counter() - start
        cpu_s = time.process_time() - cpu
        await collector.close()
        return done, elapsed, cpu_s

    done, elapsed, cpu_s = asyncio.run(run())
    return {"events_per_s": done / elapsed, "cpu_us_per_event": cpu_s / done * 1e6}


STAGES = ("decompress", "decode", "judge", "validate", "store", "response", "total")
STAGE_EVENTS = 20_000  # events per measurement of one stage
STAGE_REPEATS = 5  # the least CPU time of this many passes counts: other work only ever adds to it


def stage_costs(plan_path: Path, plan_events: int, batch: int, data: Path) -> dict[str, Any]:
    """CPU µs per event of each stage of the pipeline, in-process, on the benchmark's own bodies.

    Each stage runs alone over pre-built inputs, `STAGE_REPEATS` times, and the
    least process CPU time counts, so the figures hold on a busy machine.
    `store` is the rest of `Ingest.ingest` given the verdicts (deduplicate,
    build the frame, append, wait for the group commit, mark seen); it consumes
    its input (ids become seen), so each repeat gets its own batches, and it
    runs with fsync group commit, the fsync thread's CPU included.
    """
    from maidian.collector.pipeline.auth import Principal
    from maidian.collector.pipeline.decode import decode_batch, decompress
    from maidian.collector.service import Collector
    from maidian.collector.settings import Config, StorageConfig
    from maidian.tracking_plan.envelope import DEFAULT_LIMITS

    _, samples = generate_plan(plan_events)
    count = STAGE_EVENTS // batch
    sets = [make_bodies(samples, batch, count, 40 + r) for r in range(STAGE_REPEATS)]
    config = Config(plan=plan_path, storage=StorageConfig(data_dir=data, index_catalog=False))
    collector = Collector(config)
    collector.open()
    import gc

    gc.freeze()
    gc.set_threshold(50_000, 20, 20)
    limits = DEFAULT_LIMITS
    principal = Principal("bench", "key", trusted=False)
    n = count * batch

    def least(run: Any, inputs: list[Any]) -> tuple[float, Any]:
        best, out = float("inf"), None
        for item in inputs:
            start = time.process_time()
            out = run(item)
            best = min(best, time.process_time() - start)
        return best / n * 1e6, out

    decompress_us, _ = least(lambda bodies: [decompress(b, "zstd", limits.max_decoded_bytes) for b in bodies], sets)
    datas_sets = [[decompress(b, "zstd", limits.max_decoded_bytes) for b in bodies] for bodies in sets]
    decode_us, _ = least(lambda ds: [decode_batch(d, "msgpack", limits) for d in ds], datas_sets)
    batch_sets = [[decode_batch(d, "msgpack", limits) for d in ds] for ds in datas_sets]
    is_valid = collector.validator.is_valid
    validate_us, _ = least(lambda bs: [is_valid(e) for b in bs for e in b.values], batch_sets)
    received_ms = int(time.time() * 1000)
    judge = collector.judge.judge
    judge_us, _ = least(lambda bs: [judge(b, trusted=False, received_ms=received_ms) for b in bs], batch_sets)
    verdicts = {id(b): judge(b, trusted=False, received_ms=received_ms) for bs in batch_sets for b in bs}

    class Judged:
        """The verdicts judged above, so that the store stage is timed without judging again."""

        def judge(self, batch: Any, *, trusted: bool, received_ms: int) -> Any:
            return verdicts[id(batch)]

    async def ingest_all() -> tuple[float, float]:
        await collector.start()
        ingest = collector.ingest
        assert ingest is not None
        ingest.judge = Judged()  # type: ignore[assignment]
        best_ingest, best_response = float("inf"), float("inf")
        for bs in batch_sets:
            start = time.process_time()
            outcomes = []
            for i in range(0, len(bs), CONNS[batch]):  # as many requests at once as the load runs keep in flight
                outcomes += await asyncio.gather(*(ingest.ingest(b, principal, "r") for b in bs[i : i + CONNS[batch]]))
            best_ingest = min(best_ingest, time.process_time() - start)
            assert sum(o.accepted for o in outcomes) == n
            start = time.process_time()
            for o in outcomes:
                o.to_json()
            best_response = min(best_response, time.process_time() - start)
        await collector.close()
        return best_ingest / n * 1e6, best_response / n * 1e6

    ingest_us, response_us = asyncio.run(ingest_all())
    return {
        "decompress": decompress_us,
        "decode": decode_us,
        "judge": judge_us,
        "validate": validate_us,
        "store": ingest_us,
        "response": response_us,
        "total": decompress_us + decode_us + judge_us + ingest_us + response_us,
    }


def _in_subprocess(fn: Any, args: tuple[Any, ...], out: Any) -> None:
    out.put(fn(*args))


def _spawned(fn: Any, *args: Any) -> dict[str, Any]:
    """`fn(*args)` in a fresh interpreter, so that one measurement's heap and GC state never carry into another."""
    ctx = mp.get_context("spawn")
    q = ctx.Queue()
    p = ctx.Process(target=_in_subprocess, args=(fn, args, q))
    p.start()
    result = q.get(timeout=600)
    p.join()
    return result


def pipeline_floor_subprocess(*args: Any) -> dict[str, Any]:
    return _spawned(pipeline_floor, *args)


# -- the run -------------------------------------------------------------------------------


def median_of(runs: list[dict[str, Any]]) -> dict[str, Any]:
    keys = (
        "events_per_s",
        "requests_per_s",
        "p50_ms",
        "p99_ms",
        "cpu_us_per_event",
        "main_cpu_us_per_event",
        "collector_cores",
        "loadgen_cores",
        "load_avg",
        *STAGES,
    )
    out: dict[str, Any] = {}
    for k in keys:
        values = [r[k] for r in runs if r.get(k) is not None]
        if values:
            out[k] = statistics.median(values)
            out[k + "_runs"] = [round(v, 2) for v in values]
    out["statuses"] = runs[-1].get("statuses")
    return out


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--quick", action="store_true", help="one short run per row")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--duration", type=float, default=4.0, help="seconds per measurement")
    parser.add_argument("--only", help="run only rows whose name contains one of these (separated by ';')")
    parser.add_argument(
        "--baseline",
        metavar="PYTHON",
        help="also run each one-process collector row with this interpreter (another checkout's venv), "
        "interleaved with this tree's rows, and print the ratios",
    )
    args = parser.parse_args()
    runs = 1 if args.quick else args.runs
    duration = 2.0 if args.quick else args.duration
    tmp = Path(tempfile.mkdtemp(prefix="maidian-bench-"))
    rows: list[dict[str, Any]] = []
    try:
        plans = {}
        for n in (1, 3000):
            doc, _ = generate_plan(n)
            path = tmp / f"plan-{n}.json"
            path.write_text(json.dumps(doc))
            plans[n] = path

        specs: list[tuple[str, Any, dict[str, Any]]] = []

        def row(name: str, fn: Any, **meta: Any) -> None:
            """Register a row; `run_rows` runs every row once per round, `runs` rounds."""
            if args.only and not any(part in name for part in args.only.split(";")):
                return
            specs.append((name, fn, meta))

        def run_rows() -> None:
            # Round-robin, not one row's runs back to back: this shared host has slow spells of a
            # minute or more, which would otherwise land on all the runs of one row and skew the
            # ratios between rows (two processes against one, collector against its floors).
            results: dict[str, list[dict[str, Any]]] = {name: [] for name, _, _ in specs}
            for r in range(runs):
                for name, fn, _meta in specs:
                    results[name].append(fn(r))
                print(f"round {r + 1} of {runs} done", file=sys.stderr, flush=True)
            for name, _fn, meta in specs:
                show(name, results[name], meta)

        def show(name: str, results: list[dict[str, Any]], meta: dict[str, Any]) -> None:
            m = median_of(results)
            m.update(name=name, **meta)
            rows.append(m)
            if meta.get("kind") == "stages":
                shown = "  ".join(f"{k} {m[k]:.2f}" for k in STAGES)
                print(f"{name:58s} CPU µs/event: {shown}", file=sys.stderr, flush=True)
                return
            cpu = f"  CPU µs/event={m['cpu_us_per_event_runs']}" if "cpu_us_per_event_runs" in m else ""
            load = f"  load={m['load_avg_runs']}" if "load_avg_runs" in m else ""
            print(
                f"{name:58s} {m['events_per_s']:>10,.0f} ev/s  runs={m['events_per_s_runs']}{cpu}{load}",
                file=sys.stderr,
                flush=True,
            )

        def collector_run(
            r: int, plan_events: int, batch: int, workers: int, python: str = sys.executable
        ) -> dict[str, Any]:
            """One run of `maidian serve` with `workers` processes, fed by as many load processes."""
            data = tmp / f"data-{plan_events}-{batch}-{workers}-{r}-{abs(hash(python))}"
            proc, port = start_collector(plans[plan_events], data, workers, python)
            try:
                cpu, main_cpu = cpu_seconds(proc.pid), main_thread_seconds(proc.pid)
                load = os.getloadavg()[0]
                out = drive(
                    port,
                    plan_events,
                    batch,
                    duration_s=duration,
                    rate_hint=(200_000 if plan_events == 1 else 80_000) * workers,
                    # One load process whatever the number of workers: a second one would only take
                    # CPU from the servers on a 2-core machine.
                    procs=1,
                    conns=CONNS[batch],
                )
                events = max(1, out["events_total"])
                used = cpu_seconds(proc.pid) - cpu
                out["cpu_us_per_event"] = used / events * 1e6
                # Cores the collector got: with other work on the machine, two workers may not get two.
                out["collector_cores"] = used / (out["events_total"] / out["events_per_s"]) if events > 1 else 0.0
                out["main_cpu_us_per_event"] = (main_thread_seconds(proc.pid) - main_cpu) / events * 1e6
                out["load_avg"] = load
                return out
            finally:
                _stop(proc)
                shutil.rmtree(data, ignore_errors=True)

        def floor_run(r: int, plan_events: int, batch: int) -> dict[str, Any]:
            data = tmp / f"floor-{plan_events}-{batch}-{r}"
            try:
                load = os.getloadavg()[0]
                return {
                    **pipeline_floor_subprocess(plans[plan_events], plan_events, batch, data, duration),
                    "load_avg": load,
                }
            finally:
                shutil.rmtree(data, ignore_errors=True)

        def stages_run(r: int, plan_events: int, batch: int) -> dict[str, Any]:
            data = tmp / f"stages-{plan_events}-{batch}-{r}"
            try:
                return {**_spawned(stage_costs, plans[plan_events], plan_events, batch, data), "events_per_s": 0.0}
            finally:
                shutil.rmtree(data, ignore_errors=True)

        for plan_events in (1, 3000):
            meta = {"plan_events": plan_events}
            for batch in (50, 500):
                for name, run, kind in (
                    (f"stages: CPU per event, {plan_events}-event plan, {batch}", stages_run, "stages"),
                    (f"collector, {plan_events}-event plan, {batch}-event batches", collector_run, "collector"),
                    (f"floor: pipeline without HTTP, {plan_events}-event plan, {batch}", floor_run, "pipeline"),
                ):
                    fn = functools.partial(run, plan_events=plan_events, batch=batch)
                    if kind == "collector":
                        fn = functools.partial(fn, workers=1)
                    row(name, fn, kind=kind, batch=batch, processes=1, **meta)
                    if kind == "collector" and args.baseline:
                        row(
                            f"baseline: {name}",
                            functools.partial(fn, python=args.baseline),
                            kind="baseline",
                            batch=batch,
                            processes=1,
                            **meta,
                        )
            row(
                f"collector x2 processes, {plan_events}-event plan, 500",
                functools.partial(collector_run, plan_events=plan_events, batch=500, workers=2),
                kind="collector",
                batch=500,
                processes=2,
                **meta,
            )

        for batch in (50, 500):

            def bare_run(r: int, batch: int = batch) -> dict[str, Any]:
                proc, port = start_bare()
                try:
                    return drive(port, 1, batch, duration_s=duration, rate_hint=0, conns=CONNS[batch], cycle=True)
                finally:
                    _stop(proc)

            row(
                f"floor: aiohttp handler that only reads the body, {batch}",
                bare_run,
                kind="aiohttp",
                plan_events=1,
                batch=batch,
                processes=1,
            )

            def nginx_run(r: int, batch: int = batch) -> dict[str, Any]:
                started = start_nginx(Path(tempfile.mkdtemp(dir=tmp)))
                if started is None:
                    return {"events_per_s": 0.0, "skipped": "nginx or its echo module is not installed"}
                proc, port, log = started
                try:
                    out = drive(port, 1, batch, duration_s=duration, rate_hint=0, conns=CONNS[batch], cycle=True)
                    out["log_bytes"] = log.stat().st_size if log.exists() else 0
                    return out
                finally:
                    proc.send_signal(signal.SIGQUIT)
                    proc.wait(30)

            row(
                f"peer: nginx appending bodies to a log, {batch}",
                nginx_run,
                kind="nginx",
                plan_events=1,
                batch=batch,
                processes=1,
            )
        run_rows()
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    report(rows)
    if args.baseline:
        compare_baseline(rows)
    return 0


def compare_baseline(rows: list[dict[str, Any]]) -> None:
    """This tree against the baseline interpreter's, row by row: events/s and collector CPU µs per event."""
    print("\n| row | events/s | baseline | ratio | CPU µs/event | baseline | ratio |")
    print("|---|---:|---:|---:|---:|---:|---:|")
    by_name = {r["name"]: r for r in rows}
    for name, mine in by_name.items():
        base = by_name.get(f"baseline: {name}")
        if base is None:
            continue
        eps, beps = mine["events_per_s"], base["events_per_s"]
        cpu, bcpu = mine.get("cpu_us_per_event", 0.0), base.get("cpu_us_per_event", 0.0)
        print(
            f"| {name} | {eps:,.0f} | {beps:,.0f} | {eps / beps if beps else 0:.3f} | {cpu:.2f} | {bcpu:.2f} | "
            f"{cpu / bcpu if bcpu else 0:.3f} |"
        )


def report(rows: list[dict[str, Any]]) -> None:
    def find(kind: str, plan: int, batch: int, procs: int = 1) -> dict[str, Any] | None:
        for r in rows:
            if (r["kind"], r["plan_events"], r["batch"], r["processes"]) == (kind, plan, batch, procs):
                return r
        return None

    print()
    loads = [x for r in rows for x in r.get("load_avg_runs", [])]
    if loads:
        median = statistics.median(loads)
        print(f"load average (1 min) when each run started: {min(loads):.2f}-{max(loads):.2f}, median {median:.2f}")
    print(
        "| plan | batch | collector ev/s | p50 ms | p99 ms | aiohttp floor ev/s | pipeline floor ev/s "
        "| combined floor ev/s | vs combined | collector CPU µs/event (event loop) | collector cores "
        "| pipeline CPU µs/event | load generator cores | nginx ev/s (req/s) |"
    )
    print("|---|---|---|---|---|---|---|---|---|---|---|---|---|---|")
    for plan in (1, 3000):
        for batch in (50, 500):
            c = find("collector", plan, batch)
            if c is None:
                continue
            bare = find("aiohttp", 1, batch)
            pipe = find("pipeline", plan, batch)
            ngx = find("nginx", 1, batch)
            combined = None
            if bare and pipe and bare["events_per_s"] and pipe["events_per_s"]:
                combined = 1 / (1 / bare["events_per_s"] + 1 / pipe["events_per_s"])
                c["combined_floor"] = combined
                c["vs_combined_floor"] = c["events_per_s"] / combined
                c["vs_pipeline_floor"] = c["events_per_s"] / pipe["events_per_s"]
            print(
                f"| {plan} | {batch} | {c['events_per_s']:,.0f} | {c['p50_ms']:.2f} | {c['p99_ms']:.2f} "
                f"| {bare['events_per_s'] if bare else 0:,.0f} | {pipe['events_per_s'] if pipe else 0:,.0f} "
                f"| {combined or 0:,.0f} | {c.get('vs_combined_floor', 0):.2f} "
                f"| {c.get('cpu_us_per_event', 0):.1f} ({c.get('main_cpu_us_per_event', 0):.1f}) "
                f"| {c.get('collector_cores', 0):.2f} "
                f"| {pipe.get('cpu_us_per_event', 0) if pipe else 0:.1f} | {c.get('loadgen_cores', 0):.2f} "
                f"| {ngx['events_per_s'] if ngx else 0:,.0f} ({ngx.get('requests_per_s', 0) if ngx else 0:,.0f}) |"
            )
    stage_rows = [r for r in rows if r["kind"] == "stages"]
    if stage_rows:
        print()
        print("CPU µs per event by stage, in-process (least of several passes; `judge` includes `validate`):")
        print("| plan | batch | " + " | ".join(STAGES) + " |")
        print("|---|---|" + "---|" * len(STAGES))
        for r in stage_rows:
            print(f"| {r['plan_events']} | {r['batch']} | " + " | ".join(f"{r[k]:.2f}" for k in STAGES) + " |")
    print()
    for plan in (1, 3000):
        one, two = find("collector", plan, 500), find("collector", plan, 500, 2)
        if one and two:
            # Each round's two-process run against the same round's one-process run (minutes apart at
            # most), then the median: steadier on this host than the ratio of the two medians.
            paired = [t / o for t, o in zip(two["events_per_s_runs"], one["events_per_s_runs"], strict=False) if o]
            two["scaling_runs"] = [round(x, 3) for x in paired]
            two["scaling"] = statistics.median(paired) if paired else two["events_per_s"] / one["events_per_s"]
            two["scaling_of_medians"] = two["events_per_s"] / one["events_per_s"]
            print(
                f"two processes, {plan}-event plan, 500-event batches: {two['events_per_s']:,.0f} ev/s "
                f"= {two['scaling']:.2f}x one (median of the rounds' ratios {two['scaling_runs']}; "
                f"{two['scaling_of_medians']:.2f}x of the medians); "
                f"CPU per event {two.get('cpu_us_per_event', 0):.1f} µs "
                f"against {one.get('cpu_us_per_event', 0):.1f} µs for one; the collector got "
                f"{two.get('collector_cores', 0):.2f} cores against {one.get('collector_cores', 0):.2f}; "
                f"load generator {two.get('loadgen_cores', 0):.2f} cores"
            )
    out = HERE / "results"
    out.mkdir(exist_ok=True)
    (out / "collector.json").write_text(json.dumps(rows, indent=1))


if __name__ == "__main__":
    sys.exit(main())
