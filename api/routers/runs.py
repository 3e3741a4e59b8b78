from __future__ import annotations

from typing import Any

from fastapi import APIRouter
from pydantic import BaseModel, Field, model_validator

from api.deps import Operator
from api.paging import Limit, Offset
from services import enrollment, runs

router = APIRouter(prefix="/v1/journeys/{key}", tags=["runs"])


class EnrollIn(BaseModel):
    contact_ids: list[str] | None = Field(default=None, max_length=100_000)
    segment: str | None = None

    @model_validator(mode="after")
    def _one(self) -> EnrollIn:
        if (self.contact_ids is None) == (self.segment is None):
            raise ValueError("give exactly one of contact_ids or segment")
        return self


class ExitIn(BaseModel):
    reason: str = Field(default="operator", pattern=r"^[a-z0-9_]{1,40}$")


@router.post("/enrollments")
async def enroll(ctx: Operator, key: str, body: EnrollIn) -> dict[str, Any]:
    if body.segment is not None:
        from services.segments import member_ids

        ids = await member_ids(ctx, body.segment)
    else:
        ids = body.contact_ids or []
    return (await enrollment.enroll(ctx, key, ids)).as_dict()


@router.get("/runs")
async def list_runs(
    ctx: Operator, key: str, status: str | None = None, limit: Limit = 100, offset: Offset = 0
) -> dict[str, Any]:
    return {"runs": await runs.list_runs(ctx, key, status, limit, offset)}


@router.get("/runs/{contact_id}")
async def get_run(ctx: Operator, key: str, contact_id: str) -> dict[str, Any]:
    return await runs.get_run(ctx, key, contact_id)


@router.post("/runs/{contact_id}/exit")
async def exit_run(
    ctx: Operator, key: str, contact_id: str, body: ExitIn | None = None
) -> dict[str, Any]:
    return await runs.exit_run(ctx, key, contact_id, (body or ExitIn()).reason)
