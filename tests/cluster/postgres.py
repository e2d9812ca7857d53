"""A real PostgreSQL server for the cluster tests: Debian's binaries, a throwaway cluster, a free port.

`PostgresServer.start()` finds `initdb` and `postgres` under /usr/lib/postgresql/<version>/bin, creates a
cluster in a fresh temporary directory with `initdb` (as the `postgres` user when running as root, since
PostgreSQL refuses to run as root), starts `postgres` on a free 127.0.0.1 port with its unix socket in the
same directory, as a child of this process that dies with it (`setpriv --pdeathsig`), and returns once
`SELECT 1` answers (polled). `stop()` stops it by PID (SIGQUIT: immediate shutdown) and removes the
directory. Any failure raises `PostgresError` with the server's log, so a test that needs the server
fails with the reason.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from tests.cluster.kafka import free_port


class PostgresError(RuntimeError):
    """The PostgreSQL server could not be created or started."""


def pg_bin() -> Path:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/initdb"), key=lambda p: int(p.parent.parent.name))
    if not candidates:
        raise PostgresError("no /usr/lib/postgresql/*/bin/initdb: apt-get install postgresql")
    return candidates[-1].parent


@dataclass(slots=True)
class PostgresServer:
    directory: Path
    port: int
    bin: Path
    user: str | None
    process: subprocess.Popen[bytes] | None = None

    @property
    def data(self) -> Path:
        return self.directory / "data"

    @property
    def dsn(self) -> str:
        return f"host=127.0.0.1 port={self.port} user=postgres dbname=postgres"

    def _run(self, *args: str, timeout_s: float = 120) -> subprocess.CompletedProcess[str]:
        command = [str(self.bin / args[0]), *args[1:]]
        if self.user is not None:
            command = ["runuser", "-u", self.user, "--", *command]
        return subprocess.run(command, capture_output=True, text=True, timeout=timeout_s, check=False)

    @classmethod
    def start(cls) -> PostgresServer:
        bin_dir = pg_bin()
        directory = Path(tempfile.mkdtemp(prefix="maidian-pg-"))
        user = None
        if os.geteuid() == 0:
            user = "postgres"
            entry = pwd.getpwnam(user)
            os.chown(directory, entry.pw_uid, entry.pw_gid)
        server = cls(directory, free_port(), bin_dir, user)
        try:
            server._init_and_start()
        except BaseException:
            server.stop()
            raise
        return server

    def _init_and_start(self) -> None:
        result = self._run("initdb", "-D", str(self.data), "-U", "postgres", "-A", "trust", "-E", "UTF8", "--no-sync")
        if result.returncode != 0:
            raise PostgresError(f"initdb failed ({result.returncode}): {(result.stdout + result.stderr)[-2000:]}")
        # The postmaster is this process's own child (no pg_ctl daemon), run as `postgres` by setpriv, and
        # gets SIGKILL if this process dies: a killed pytest leaves no server behind.
        user = [] if self.user is None else ["--reuid", self.user, "--regid", self.user, "--init-groups"]
        command = ["setpriv", *user, "--pdeathsig", "KILL", str(self.bin / "postgres"), "-D", str(self.data)]
        command += ["-p", str(self.port), "-k", str(self.directory), "-c", "listen_addresses=127.0.0.1"]
        command += ["-c", "shared_buffers=32MB", "-c", "max_connections=50"]
        with (self.directory / "postgres.log").open("ab") as log:
            self.process = subprocess.Popen(command, stdout=log, stderr=log, stdin=subprocess.DEVNULL)
        import psycopg

        deadline = time.monotonic() + 60
        while True:
            if self.process.poll() is not None:
                raise PostgresError(f"postgres exited ({self.process.returncode}):\n{self._log_tail()}")
            try:
                with psycopg.connect(self.dsn, connect_timeout=2) as conn:
                    conn.execute("SELECT 1")
                return
            except psycopg.OperationalError:
                if time.monotonic() > deadline:
                    raise PostgresError(f"postgres did not accept connections in 60 s:\n{self._log_tail()}") from None
                time.sleep(0.1)

    def _log_tail(self) -> str:
        try:
            return (self.directory / "postgres.log").read_text(errors="replace")[-2000:]
        except OSError:
            return ""

    def stop(self) -> None:
        """SIGQUIT (immediate shutdown) to the postmaster this object started, then wait for it."""
        if self.process is not None and self.process.poll() is None:
            self.process.send_signal(signal.SIGQUIT)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.directory)
