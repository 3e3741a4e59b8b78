"""Session-scoped real services: embedded PostgreSQL, the Temporal dev server, the SMTP sink,
an in-process worker, and the API over ASGI. Every port is picked free, so the suite runs
beside `make run`. With pytest-xdist each test process gets its own set."""

from __future__ import annotations

import asyncio
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path

import httpx
import pytest
import pytest_asyncio
from temporalio.client import Client
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

from core.config import Settings
from core.db import Database
from core.migrate import upgrade_async
from core.temporal import connect, keyring
from devstack.ports import free_port
from devstack.postgres import EmbeddedPostgres
from devstack.smtp_sink import SinkHandler, SmtpSink, db_store, db_stored
from devstack.temporal import TemporalDevServer, test_server_binary


@pytest.fixture(scope="session")
def workdir() -> Iterator[Path]:
    # Not pytest's tmp_path: the PostgreSQL server user must be able to traverse it.
    d = Path(tempfile.mkdtemp(prefix="journeys-test-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest_asyncio.fixture(scope="session")
async def postgres(workdir: Path) -> AsyncIterator[EmbeddedPostgres]:
    pg = EmbeddedPostgres(workdir / "pg", free_port(), fast_unsafe=True)
    pg.start()
    await pg.wait_ready()
    await upgrade_async(pg.url())
    yield pg
    pg.stop()


@pytest_asyncio.fixture(scope="session")
async def temporal_server() -> AsyncIterator[TemporalDevServer]:
    server = TemporalDevServer(port=free_port(), ui_port=None, db_file=None)
    server.start()
    await server.wait_ready()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def sink_port() -> int:
    return free_port()


@pytest.fixture(scope="session")
def settings(
    workdir: Path, postgres: EmbeddedPostgres, temporal_server: TemporalDevServer, sink_port: int
) -> Settings:
    return Settings(
        journeys_home=workdir / "home",
        database_url=postgres.url(),
        temporal_address=temporal_server.address,
        temporal_task_queue=f"test-{uuid.uuid4().hex[:8]}",
        smtp_url=f"smtp://127.0.0.1:{sink_port}",
        smtp_allow_plaintext=True,
        public_base_url="http://testserver",
        dev_mode=True,
        _env_file=None,  # type: ignore[call-arg]
    )


@pytest_asyncio.fixture(scope="session")
async def db(settings: Settings) -> AsyncIterator[Database]:
    assert settings.database_url
    database = Database(settings.database_url)
    yield database
    await database.dispose()


@pytest_asyncio.fixture(scope="session")
async def sink(db: Database, sink_port: int) -> AsyncIterator[SmtpSink]:
    s = SmtpSink(SinkHandler(db_store(db), stored=db_stored(db)), port=sink_port)
    await s.start()
    yield s
    await s.stop()


@pytest_asyncio.fixture(scope="session")
async def temporal(settings: Settings) -> Client:
    return await connect(settings)


@pytest_asyncio.fixture(scope="session")
async def worker(
    temporal: Client, db: Database, settings: Settings, sink: SmtpSink
) -> AsyncIterator[Worker]:
    from worker import build_worker

    w = build_worker(temporal, db, settings)
    task = asyncio.create_task(w.run())
    yield w
    await w.shutdown()
    await asyncio.gather(task, return_exceptions=True)


@pytest_asyncio.fixture(scope="session")
async def app_client(
    settings: Settings, db: Database, temporal: Client
) -> AsyncIterator[httpx.AsyncClient]:
    from api.main import create_app

    app = create_app(settings, db=db, temporal=temporal)
    transport = httpx.ASGITransport(app=app, client=("127.0.0.1", 5555))
    async with httpx.AsyncClient(transport=transport, base_url="http://testserver") as c:
        yield c


async def _key(db: Database, settings: Settings, role: str) -> str:
    from services.apikeys import create_key

    async with db.session() as s:
        return await create_key(s, role, str(settings.secret_values()["api_key_pepper"]))


@pytest_asyncio.fixture(scope="session")
async def admin_key(db: Database, settings: Settings) -> str:
    return await _key(db, settings, "admin")


@pytest_asyncio.fixture(scope="session")
async def api(
    app_client: httpx.AsyncClient, admin_key: str, worker: Worker
) -> httpx.AsyncClient:
    """The API as an admin, with the worker running: the whole stack."""
    app_client.headers["Authorization"] = f"Bearer {admin_key}"
    return app_client


@pytest_asyncio.fixture(scope="session")
async def key_for(db: Database, settings: Settings):  # type: ignore[no-untyped-def]
    async def make(role: str) -> str:
        return await _key(db, settings, role)

    return make


@pytest_asyncio.fixture(scope="session")
async def time_skipping(
    settings: Settings, db: Database, sink: SmtpSink
) -> AsyncIterator[WorkflowEnvironment]:
    """A time-skipping Temporal test server with our worker on it: a 30-day wait takes seconds."""
    from temporalio.converter import DataConverter

    from core.codec import data_converter
    from worker import build_worker

    conv: DataConverter = data_converter(keyring(settings))
    env = await WorkflowEnvironment.start_time_skipping(
        test_server_existing_path=str(test_server_binary()), data_converter=conv
    )
    w = build_worker(env.client, db, settings)
    task = asyncio.create_task(w.run())
    yield env
    await w.shutdown()
    await asyncio.gather(task, return_exceptions=True)
    await env.shutdown()
