"""`journeys dev`: the whole default column of SPEC section 2 in one process tree.

PostgreSQL and the Temporal dev server run as child processes with their data under
`$JOURNEYS_HOME`; the SMTP sink runs here; the worker and the API run as child
processes configured through the environment, exactly as in production.
"""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
from collections.abc import Callable

from temporalio.client import Client

from core.config import Settings
from core.db import Database
from core.migrate import upgrade_async
from devstack.inbound import InboundMail
from devstack.ports import PortTaken, port_in_use
from devstack.postgres import EmbeddedPostgres
from devstack.smtp_sink import SinkHandler, SmtpSink, db_store, db_stored
from devstack.temporal import TemporalDevServer

Say = Callable[[str], None]


def _check_ports(settings: Settings) -> None:
    wanted = [("the API", settings.api_port, "API_PORT")]
    if not settings.database_url:
        wanted.append(("embedded PostgreSQL", settings.postgres_port, "POSTGRES_PORT"))
    if not settings.temporal_address:
        wanted.append(("the Temporal dev server", settings.temporal_port, "TEMPORAL_PORT"))
        wanted.append(("the Temporal UI", settings.temporal_ui_port, "TEMPORAL_UI_PORT"))
    if not settings.smtp_url:
        wanted.append(("the SMTP sink", settings.smtp_sink_port, "SMTP_SINK_PORT"))
    for what, port, setting in wanted:
        if port_in_use(port):
            raise PortTaken(what, port, setting)


async def ensure_admin_key(db: Database, settings: Settings) -> str | None:
    """On first start, mint an admin key and keep a copy readable only by the owner."""
    from services.apikeys import any_keys, create_key

    async with db.session() as s:
        if await any_keys(s):
            return None
        key = await create_key(s, "admin", str(settings.secret_values()["api_key_pepper"]), "dev admin")
    path = settings.home / "admin.key"
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        fh.write(key + "\n")
    return key


async def _temporal_client(settings: Settings, env: dict[str, str]) -> Client | None:
    """For the sink's inbound mail (reports and unsubscribes reach runs)."""
    from core.temporal import TemporalConfigError, connect

    address = env.get("TEMPORAL_ADDRESS") or settings.temporal_address
    try:
        return await connect(settings, address) if address else None
    except TemporalConfigError:
        return None


async def run_dev(settings: Settings, say: Say = print) -> int:
    from core import logsafe

    logsafe.install()  # the SMTP sink runs in this process: no message data in its logs
    home = settings.home
    home.mkdir(parents=True, exist_ok=True)
    _check_ports(settings)
    settings.secret_values()  # create the dev secrets once, before children read them

    pg: EmbeddedPostgres | None = None
    temporal: TemporalDevServer | None = None
    sink: SmtpSink | None = None
    children: list[subprocess.Popen[bytes]] = []
    db: Database | None = None
    env = dict(os.environ, JOURNEYS_HOME=str(home), DEV_MODE="true")
    try:
        if not settings.database_url:
            pg = EmbeddedPostgres(home / "postgres", settings.postgres_port)
            pg.start()
            await pg.wait_ready()
            env["DATABASE_URL"] = pg.url()
        database_url = env.get("DATABASE_URL") or settings.database_url
        assert database_url
        await upgrade_async(database_url)
        db = Database(database_url)

        if not settings.temporal_address:
            temporal = TemporalDevServer(
                port=settings.temporal_port,
                ui_port=settings.temporal_ui_port,
                db_file=home / "temporal.db",
                namespace=settings.temporal_namespace,
                codec_endpoint=f"{settings.public_base_url.rstrip('/')}/codec",
                log_file=home / "temporal.log",
            )
            temporal.start()
            await temporal.wait_ready()
            env["TEMPORAL_ADDRESS"] = temporal.address

        if not settings.smtp_url:
            inbound = InboundMail(db, settings, await _temporal_client(settings, env))
            handler = SinkHandler(db_store(db), inbound=inbound, stored=db_stored(db))
            sink = SmtpSink(handler, port=settings.smtp_sink_port)
            await sink.start()
            env["SMTP_URL"] = f"smtp://127.0.0.1:{settings.smtp_sink_port}"
            env["SMTP_ALLOW_PLAINTEXT"] = "true"

        admin_key = await ensure_admin_key(db, settings)

        for part in ("worker", "api"):
            children.append(
                subprocess.Popen([sys.executable, "-m", "cli.main", part], env=env, start_new_session=True)
            )

        base = settings.public_base_url.rstrip("/")
        say("journeys is up:")
        say(f"  API           {base}/v1")
        say(f"  OpenAPI docs  {base}/docs")
        ui = f"http://127.0.0.1:{settings.temporal_ui_port}" if temporal else "(external Temporal)"
        say(f"  Temporal UI   {ui}")
        say(f"  Outbox        {base}/dev/outbox")
        if temporal:
            say(f"  Codec login   {base}/codec/login  (clear payloads in the Temporal UI for")
            say("                operator/admin keys; see README 'Privacy and security')")
        if admin_key:
            say(f"  admin API key (shown once; also in {home / 'admin.key'}): {admin_key}")
        else:
            say(f"  admin API key: in {home / 'admin.key'} (or `journeys keys create --role admin`)")
        say("Press Ctrl-C to stop.")

        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for sig in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(sig, stop.set)
        while not stop.is_set():
            dead = [c for c in children if c.poll() is not None]
            if dead:
                say("a child process exited; stopping the stack")
                return 1
            try:
                await asyncio.wait_for(stop.wait(), timeout=1.0)
            except TimeoutError:
                pass
        return 0
    finally:
        for c in children:
            if c.poll() is None:
                c.send_signal(signal.SIGTERM)
        for c in children:
            try:
                c.wait(15)
            except subprocess.TimeoutExpired:
                c.kill()
        if sink:
            await sink.stop()
        if db:
            await db.dispose()
        if temporal:
            temporal.stop()
        if pg:
            pg.stop()
        say("stopped")
