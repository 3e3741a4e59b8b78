"""What every service call carries: a database session, settings, Temporal, and who acts."""

from __future__ import annotations

from dataclasses import dataclass, field

from sqlmodel.ext.asyncio.session import AsyncSession
from temporalio.client import Client

from core.config import Settings


@dataclass(frozen=True)
class Actor:
    id: str  # api key id, "cli" or "system"
    role: str
    request_id: str | None = None


SYSTEM = Actor("system", "admin")


@dataclass
class ServiceContext:
    session: AsyncSession
    settings: Settings
    temporal: Client | None = None
    actor: Actor = field(default=SYSTEM)

    def require_temporal(self) -> Client:
        if self.temporal is None:
            from services.errors import Unavailable

            raise Unavailable("Temporal is not connected")
        return self.temporal

    @property
    def pepper(self) -> str:
        return str(self.settings.secret_values()["api_key_pepper"])
