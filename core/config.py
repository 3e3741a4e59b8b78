"""Settings from the environment (pydantic-settings).

With nothing set, every service falls back to the embedded default of SPEC section 2:
the dev stack fills in DATABASE_URL, TEMPORAL_ADDRESS and SMTP_URL for its children.
Secrets that are not given are generated once and kept in `$JOURNEYS_HOME/secrets.json`
so a restart keeps decrypting old payloads and honouring old tracking links.
"""

from __future__ import annotations

import base64
import json
import os
import secrets
from functools import lru_cache
from pathlib import Path
from typing import Any

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_file=".env", extra="ignore")

    journeys_home: Path = Field(default=Path(".journeys"))

    # Temporal
    temporal_address: str | None = None
    temporal_namespace: str = "default"
    temporal_task_queue: str = "journeys"
    temporal_tls_cert: Path | None = None
    temporal_tls_key: Path | None = None
    temporal_tls_ca: Path | None = None
    temporal_tls_server_name: str | None = None
    temporal_port: int = 7233
    temporal_ui_port: int = 8233

    # Database
    database_url: str | None = None
    postgres_port: int = 5433

    # Mail
    smtp_url: str | None = None
    smtp_sink_port: int = 8025
    smtp_allow_plaintext: bool = False
    # Whether SMTP_URL is the built-in sink, which keeps every message in this database's
    # outbox, so a send interrupted mid-SMTP can be settled by looking there (see
    # activities/sending.py). None: ask the server (the sink says so in its greeting).
    smtp_builtin_sink: bool | None = None
    # Open SMTP connections a worker keeps and reuses (activities/smtp_pool.py): at most
    # this many at once, each closed after this many idle seconds (relays drop idle
    # clients) or this many messages. SMTP_POOL_MAX_MESSAGES=1: a connection per message.
    smtp_pool_size: int = Field(default=10, ge=1)
    smtp_pool_idle_seconds: float = Field(default=30.0, gt=0)
    smtp_pool_max_messages: int = Field(default=100, ge=1)
    mail_from: str = "Care Team <care@example.org>"
    mail_domain: str = "example.org"
    physical_address: str = "Example Health, 1 Main Street, Springfield, MA 01101, USA"
    unsubscribe_mailto: str = "unsubscribe@example.org"
    bounce_address: str | None = None  # envelope sender; default bounces@MAIL_DOMAIN
    dkim_selector: str | None = None
    dkim_domain: str | None = None
    dkim_private_key_path: Path | None = None

    # API
    api_host: str = "127.0.0.1"
    api_port: int = 8000
    public_base_url: str = "http://127.0.0.1:8000"
    trusted_proxies: str = "127.0.0.0/8,::1/128"
    temporal_ui_origin: str | None = None

    # Secrets (generated in dev when unset)
    codec_keys: str | None = None  # "k1:BASE64,k2:BASE64"
    codec_active_key: str | None = None
    token_keys: str | None = None  # "1:BASE64,2:BASE64"
    token_active_key: int | None = None
    api_key_pepper: str | None = None

    # Worker tuning (see docs/benchmarks.md)
    # Runs kept in memory between tasks (~120 KB each; least recently used evicted). Parked
    # runs need no cache: an evicted run replays its history on its next task (~5 ms for a
    # parked run, up to ~0.9 s CPU for a busy one near CONTINUE_AS_NEW_AFTER_EVENTS).
    worker_max_cached_workflows: int = 500
    worker_max_concurrent_activities: int = 200
    worker_max_concurrent_workflow_tasks: int = 200
    worker_max_concurrent_local_activities: int = 200
    # Run workflow code in Temporal's sandbox (a fresh module namespace per cached run).
    worker_workflow_sandbox: bool = True
    # Task pollers: a run's first workflow task comes from the shared queue, which the SDK's
    # default (5 pollers, a fifth of them on that queue) drains one task per poll round trip.
    worker_workflow_task_polls: int = 10
    worker_nonsticky_poll_ratio: float = 0.5
    worker_activity_task_polls: int = 10
    # Persistent database connections of a worker (plus up to 20 opened on demand). A
    # send holds one for its whole attempt; connections beyond the pool are closed after
    # each use, so a pool smaller than the usual number of sends in flight reconnects
    # (a new PostgreSQL backend) for every send.
    worker_db_pool_size: int = 40

    # Behaviour
    tracking_token_ttl_days: int = 180
    # Run the tracking judge inside each API process; false when `journeys judge`
    # processes do the judging (the API then only NOTIFYs them).
    tracking_judge_in_api: bool = True
    # Bounds (milliseconds) on the tracking pipeline's database work, so a stuck
    # database fails fast instead of holding requests: statement_timeout of what a pixel
    # or click request waits for (a link lookup, an inline write), of the background hit
    # writer's batches, and lock_timeout of both. A request then answers as on any
    # database error (the pixel anyway; a click on an uncached link gets the 503 page).
    tracking_request_db_timeout_ms: int = Field(default=2_000, gt=0)
    tracking_writer_db_timeout_ms: int = Field(default=5_000, gt=0)
    tracking_db_lock_timeout_ms: int = Field(default=1_000, gt=0)
    continue_as_new_after_events: int = 2000
    dev_mode: bool = False

    @property
    def envelope_sender(self) -> str:
        """Return-Path of every message: where delivery reports come back."""
        return self.bounce_address or f"bounces@{self.mail_domain}"

    @property
    def home(self) -> Path:
        return self.journeys_home.resolve()

    def secret_values(self) -> dict[str, Any]:
        """Resolved secrets: configured ones win, otherwise the persisted dev ones."""
        stored = _load_or_create_secrets(self.home)
        return {
            "codec_keys": self.codec_keys or stored["codec_keys"],
            "codec_active_key": self.codec_active_key or stored["codec_active_key"],
            "token_keys": self.token_keys or stored["token_keys"],
            "token_active_key": self.token_active_key or stored["token_active_key"],
            "api_key_pepper": self.api_key_pepper or stored["api_key_pepper"],
        }


def _load_or_create_secrets(home: Path) -> dict[str, Any]:
    path = home / "secrets.json"
    if path.exists():
        data: dict[str, Any] = json.loads(path.read_text())
        return data
    home.mkdir(parents=True, exist_ok=True)
    data = {
        "codec_keys": "k1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "codec_active_key": "k1",
        "token_keys": "1:" + base64.b64encode(secrets.token_bytes(32)).decode(),
        "token_active_key": 1,
        "api_key_pepper": secrets.token_urlsafe(32),
    }
    tmp = path.with_suffix(".tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as fh:
        json.dump(data, fh)
    os.replace(tmp, path)
    return data


@lru_cache
def get_settings() -> Settings:
    return Settings()
