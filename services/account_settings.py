"""Account-wide settings (SPEC section 4, `GET/PUT /v1/settings`), one row per key in `setting`.

Unset keys read as their defaults, so a fresh account behaves sensibly and a new
setting needs no migration. Writes are validated as a whole and applied in one
transaction: a bad key or value changes nothing.
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, StrictBool, ValidationError
from sqlalchemy.dialects.postgresql import insert
from sqlmodel import col, select

from core.models import AuditLog, Setting, utcnow
from services.context import ServiceContext
from services.errors import Invalid


class AccountSettings(BaseModel):
    """Every account setting with its default. Strict types: `"yes"` is not a boolean."""

    model_config = ConfigDict(extra="forbid")

    # Reports leave automated (machine) opens and clicks out of their counts and rates.
    exclude_automated_events: StrictBool = True


DEFAULTS: dict[str, Any] = AccountSettings().model_dump()


def _errors(exc: ValidationError) -> list[dict[str, Any]]:
    # Field and reason only, never the submitted value.
    out = []
    for err in exc.errors():
        field = ".".join(str(p) for p in err.get("loc", ()))
        message = "unknown setting" if err.get("type") == "extra_forbidden" else err.get("msg", "")
        out.append({"field": field, "message": message, "type": err.get("type")})
    return out


async def get_settings(ctx: ServiceContext) -> dict[str, Any]:
    rows = (
        await ctx.session.exec(select(Setting).where(col(Setting.key).in_(list(DEFAULTS))))
    ).all()
    stored = {r.key: r.value for r in rows}
    merged = {**DEFAULTS, **stored}
    try:
        return AccountSettings.model_validate(merged).model_dump()
    except ValidationError:
        # A row written by hand with a bad value: fall back to the default for it.
        return {k: (v if _valid(k, v) else DEFAULTS[k]) for k, v in merged.items()}


def _valid(key: str, value: Any) -> bool:
    try:
        AccountSettings.model_validate({key: value})
    except ValidationError:
        return False
    return True


async def get_setting(ctx: ServiceContext, key: str) -> Any:
    """One setting's value (its default when unset), for other services such as reports."""
    if key not in DEFAULTS:
        raise KeyError(key)
    return (await get_settings(ctx))[key]


async def update_settings(ctx: ServiceContext, changes: Any) -> dict[str, Any]:
    """Set the given keys (others keep their values); all or nothing."""
    if not isinstance(changes, dict):
        raise Invalid(
            "settings must be a JSON object",
            {"errors": [{"field": "", "message": "not an object"}]},
        )
    if not changes:
        raise Invalid("no settings given", {"errors": [{"field": "", "message": "empty object"}]})
    try:
        AccountSettings.model_validate({**DEFAULTS, **changes})
    except ValidationError as exc:
        raise Invalid("settings are invalid", {"errors": _errors(exc)}) from None
    now = utcnow()
    for key, value in changes.items():
        stmt = insert(Setting).values(key=key, value=value, updated_at=now)
        await ctx.session.exec(  # type: ignore[call-overload]
            stmt.on_conflict_do_update(
                index_elements=["key"],
                set_={"value": stmt.excluded.value, "updated_at": stmt.excluded.updated_at},
            )
        )
    ctx.session.add(
        AuditLog(
            actor=ctx.actor.id,
            role=ctx.actor.role,
            action="update",
            resource="settings",
            fields=sorted(changes),
            request_id=ctx.actor.request_id,
        )
    )
    await ctx.session.commit()
    return await get_settings(ctx)
