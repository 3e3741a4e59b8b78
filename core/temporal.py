"""Connecting to Temporal with the encrypting data converter and optional TLS."""

from __future__ import annotations

from typing import Literal

from temporalio.client import (
    Client,
    Schedule,
    ScheduleAlreadyRunningError,
    ScheduleUpdate,
    ScheduleUpdateInput,
    TLSConfig,
)

from core.codec import KeyRing, data_converter
from core.config import Settings


class TemporalConfigError(RuntimeError):
    pass


def keyring(settings: Settings) -> KeyRing:
    s = settings.secret_values()
    return KeyRing.from_spec(s["codec_keys"], active=s["codec_active_key"])


def _tls(settings: Settings) -> TLSConfig | bool:
    if not (settings.temporal_tls_cert or settings.temporal_tls_ca):
        return False
    return TLSConfig(
        client_cert=settings.temporal_tls_cert.read_bytes() if settings.temporal_tls_cert else None,
        client_private_key=(
            settings.temporal_tls_key.read_bytes() if settings.temporal_tls_key else None
        ),
        server_root_ca_cert=settings.temporal_tls_ca.read_bytes() if settings.temporal_tls_ca else None,
        domain=settings.temporal_tls_server_name,
    )


async def connect(settings: Settings, address: str | None = None) -> Client:
    target = address or settings.temporal_address
    if not target:
        raise TemporalConfigError("TEMPORAL_ADDRESS is not set (journeys dev sets it for you)")
    try:
        return await Client.connect(
            target,
            namespace=settings.temporal_namespace,
            data_converter=data_converter(keyring(settings)),
            tls=_tls(settings),
        )
    except Exception as exc:
        raise TemporalConfigError(
            f"cannot reach Temporal at {target} (namespace {settings.temporal_namespace}); "
            "start it or set TEMPORAL_ADDRESS / TEMPORAL_NAMESPACE / TEMPORAL_TLS_*"
        ) from exc


async def put_schedule(
    client: Client, schedule_id: str, schedule: Schedule, *, keep_state: bool = False
) -> Literal["created", "updated"]:
    """Creates the schedule, or replaces an existing one's definition with `schedule`;
    with keep_state, an existing schedule keeps its state (an operator's pause)."""
    try:
        await client.create_schedule(schedule_id, schedule)
        return "created"
    except ScheduleAlreadyRunningError:
        pass

    def replace(current: ScheduleUpdateInput) -> ScheduleUpdate:
        if keep_state:
            schedule.state = current.description.schedule.state
        return ScheduleUpdate(schedule=schedule)

    await client.get_schedule_handle(schedule_id).update(replace)
    return "updated"
