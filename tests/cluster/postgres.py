"""A real PostgreSQL server for the cluster tests: Debian's binaries, a throwaway cluster, a free port.

`PostgresServer.start()` finds `initdb`/`pg_ctl` under /usr/lib/postgresql/<version>/bin, creates a cluster in
a fresh temporary directory with `initdb` (as the `postgres` user when running as root, since PostgreSQL
refuses to run as root), starts it with `pg_ctl -w` (which polls until the server accepts connections) on a
free 127.0.0.1 port with its unix socket in the same directory, and returns once `SELECT 1` answers.
`stop()` stops it (`pg_ctl stop -m immediate`) and removes the directory. Any failure raises
`PostgresError` with pg_ctl's log, so a test that needs the server fails with the reason.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import subprocess
import tempfile
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
        options = (
            f"-p {self.port} -k {self.directory} -c listen_addresses=127.0.0.1 "
            "-c shared_buffers=32MB -c max_connections=50"
        )
        log = self.directory / "postgres.log"
        result = self._run("pg_ctl", "-D", str(self.data), "-l", str(log), "-o", options, "-w", "-t", "60", "start")
        if result.returncode != 0:
            tail = log.read_text(errors="replace")[-2000:] if log.exists() else ""
            raise PostgresError(f"pg_ctl start failed ({result.returncode}): {result.stderr[-1000:]}\n{tail}")
        import psycopg

        with psycopg.connect(self.dsn, connect_timeout=10) as conn:
            conn.execute("SELECT 1")

    def stop(self) -> None:
        if (self.data / "postmaster.pid").exists():
            self._run("pg_ctl", "-D", str(self.data), "-m", "immediate", "-w", "stop", timeout_s=60)
        with contextlib.suppress(OSError):
            shutil.rmtree(self.directory)
