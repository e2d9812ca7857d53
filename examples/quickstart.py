"""Run maidian end to end: a collector on the example plan, fed by the SDK.

    python examples/quickstart.py            # keeps the collector running until Ctrl-C
    python examples/quickstart.py --once     # stops it when the demo is done

It starts `maidian serve` on 127.0.0.1 (port 8106, or a free one) with the
example securities plan and the embedded store in ./maidian-data, then replays
three customers' sessions from examples/events.jsonl through the SDK: an app
client with a write key for the events the app sends, and a signed backend
client for the server-side ones (order filled, deposit succeeded, account
activated). A few deliberately wrong events follow, to show the quarantine.
Finally it prints one customer's whole journey, pre-login browsing included,
and the commands to look further.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from maidian.sdk import Client

HERE = Path(__file__).resolve().parent
PLAN = HERE / "securities_app.plan.json"
SESSIONS = HERE / "events.jsonl"
WRITE_KEY = "wk_quickstart_demo_key"
SOURCE, SECRET = "quickstart-backend", "quickstart-backend-secret-0001"
# Presets the SDK sets itself; the replayed ones are left to it.
SDK_PRESETS = {"$lib", "$lib_version", "$server", "$os", "$os_version", "$runtime", "$runtime_version"}


def free_port(preferred: int) -> int:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", preferred))
        except OSError:
            s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def start_collector(data: Path, port: int, config_dir: Path) -> subprocess.Popen[bytes]:
    config = config_dir / "quickstart.toml"
    config.write_text(f'[[sources]]\nname = "{SOURCE}"\nsecret = "{SECRET}"\n', encoding="utf-8")
    cmd = [sys.executable, "-m", "maidian.collector.cli", "serve", "--config", str(config), "--plan", str(PLAN)]
    cmd += ["--data", str(data), "--host", "127.0.0.1", "--port", str(port), "--write-key", WRITE_KEY]
    proc = subprocess.Popen(cmd)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            sys.exit(f"the collector exited with status {proc.returncode}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/readyz", timeout=1) as resp:
                if resp.status == 200:
                    return proc
        except OSError:
            time.sleep(0.05)  # polling for readiness, with a deadline
    proc.kill()
    sys.exit("the collector did not become ready within 30 s")


def replay_sessions(app: Client, backend: Client) -> tuple[int, str]:
    """Send the example sessions, moved so the last event happened a minute ago."""
    events = [json.loads(line) for line in SESSIONS.read_text(encoding="utf-8").splitlines() if line.strip()]
    shift = int(time.time() * 1000) - 60_000 - max(e["time"] for e in events)
    for e in events:
        server = e["properties"].get("$server", False)
        client = backend if server else app
        props = {k: v for k, v in e["properties"].items() if k not in SDK_PRESETS}
        if e["type"] == "track":
            client.track(e["event"], props, time=e["time"] + shift, identities=e["identities"])
        else:
            getattr(client, e["type"])(props, identities=e["identities"])
    journey = next(e["identities"]["login_id"] for e in events if e.get("event") == "account_activated")
    return len(events), journey


def send_mistakes(app: Client) -> int:
    """Three events a careless build might send: each is quarantined with the plan's reason."""
    device = {"anonymous_id": "quickstart-device-0001"}
    app.track("stock_order_submit", {"stock_code": "600519", "side": "hold"}, identities=device)
    app.track("stock_order_teleport", {"stock_code": "600519"}, identities=device)
    app.track("stock_order_filled", {"stock_code": "600519"}, identities=device)  # server-only, from the app
    return 3


def command() -> str:
    """How to run `maidian` from here: the venv's script, relative to the current folder when it can be."""
    script = Path(sys.executable).with_name("maidian")
    try:
        return str(script.relative_to(Path.cwd()))
    except ValueError:
        return str(script) if script.exists() else "maidian"


def show(cmd: list[str]) -> str:
    out = subprocess.run(
        [sys.executable, "-m", "maidian.collector.cli", *cmd], check=False, capture_output=True, text=True
    )
    return out.stdout


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", default="maidian-data", help="data directory (default ./maidian-data)")
    parser.add_argument("--port", type=int, default=8106, help="preferred port (default 8106)")
    parser.add_argument("--once", action="store_true", help="stop the collector when the demo is done")
    args = parser.parse_args()

    data = Path(args.data).resolve()
    port = free_port(args.port)
    endpoint = f"http://127.0.0.1:{port}"
    with tempfile.TemporaryDirectory(prefix="maidian-quickstart-") as tmp:
        collector = start_collector(data, port, Path(tmp))
        try:
            app = Client(endpoint, write_key=WRITE_KEY, app_version="8.12.0")
            backend = Client(endpoint, source=SOURCE, secret=SECRET.encode())
            sent, customer = replay_sessions(app, backend)
            wrong = send_mistakes(app)
            app.close(10)
            backend.close(10)
            stats = [app.stats, backend.stats]
            accepted = sum(s.acknowledged for s in stats)
            quarantined = sum(s.quarantined for s in stats)
            journey = show(["events", "--data", str(data), "--person", customer]).splitlines()
            mx = f"curl -s {endpoint}/metrics | grep maidian_events"
            m = command()
            print(
                f"""
maidian collector: {endpoint}   plan: {PLAN.relative_to(Path.cwd()) if PLAN.is_relative_to(Path.cwd()) else PLAN}
data directory:    {data}

The SDK sent {sent} events from three customers' sessions and {wrong} wrong ones:
{accepted} stored, {quarantined} quarantined with the plan's reasons.

Customer {customer}'s journey, pre-login browsing included ({len(journey)} events; first 6):"""
            )
            for line in journey[:6]:
                e = json.loads(line)
                when = time.strftime("%H:%M:%S", time.localtime(e["time"] / 1000))
                print(f"  {when}  {e['type']:<18} {e.get('event', '')}")
            print(
                f"""
Look further:
  {m} events --data {args.data} --person {customer}   # the whole sequence, as JSON lines
  {m} export --data {args.data} --format jsonl | head  # every accepted event
  {m} quarantine list --data {args.data}                # what was refused, and why
  {mx}
"""
            )
            if args.once:
                return 0
            print("The collector keeps running; press Ctrl-C to stop it.")
            with contextlib.suppress(KeyboardInterrupt):
                collector.wait()
            return 0
        finally:
            if collector.poll() is None:
                collector.send_signal(signal.SIGTERM)
                try:
                    collector.wait(timeout=30)
                except subprocess.TimeoutExpired:
                    collector.kill()


if __name__ == "__main__":
    sys.exit(main())
