"""Reading runs: the database row plus the live `state` query when the run is open."""

from __future__ import annotations

from typing import Any

from sqlmodel import col, select

from core.models import Run, StepLog
from services.context import ServiceContext
from services.errors import NotFound
from workflows.journey import workflow_id


def run_out(r: Run) -> dict[str, Any]:
    return {
        "run_id": r.id,
        "journey_key": r.journey_key,
        "contact_id": r.contact_id,
        "workflow_id": r.workflow_id,
        "version": r.version,
        "status": r.status,
        "step": r.step,
        "visits": r.visits,
        "exit_reason": r.exit_reason,
        "waiting_for": r.waiting_for,
        "started_at": r.started_at,
        "ended_at": r.ended_at,
    }


async def latest_run(ctx: ServiceContext, key: str, contact_id: str) -> Run:
    r = (
        await ctx.session.exec(
            select(Run)
            .where(Run.journey_key == key, Run.contact_id == contact_id)
            .order_by(col(Run.started_at).desc())
            .limit(1)
        )
    ).first()
    if r is None:
        raise NotFound("no run of this journey for this contact", {"journey": key, "contact_id": contact_id})
    return r


async def get_run(ctx: ServiceContext, key: str, contact_id: str) -> dict[str, Any]:
    r = await latest_run(ctx, key, contact_id)
    out = run_out(r)
    if r.status == "running" and ctx.temporal is not None:
        try:
            handle = ctx.temporal.get_workflow_handle(workflow_id(key, contact_id))
            live = await handle.query("state")
            # Only while the run is live: an ending run is reported from its row once its
            # last steps are written, so status and history always agree.
            if live.get("status") == "running":
                keys = ("step", "visits", "waiting_for")
                out.update({k: live[k] for k in keys if k in live})
        except Exception:
            pass  # the database row is a good answer when the query cannot be served
    steps = (
        await ctx.session.exec(
            select(StepLog).where(StepLog.run_id == r.id).order_by(col(StepLog.seq))
        )
    ).all()
    out["history"] = [
        {"step": s.step, "visit": s.visit, "action": s.action, "outcome": s.outcome, "at": s.at}
        for s in steps
    ]
    return out


async def list_runs(
    ctx: ServiceContext, key: str, status: str | None = None, limit: int = 100, offset: int = 0
) -> list[dict[str, Any]]:
    q = select(Run).where(Run.journey_key == key)
    if status:
        q = q.where(Run.status == status)
    q = q.order_by(col(Run.started_at).desc()).offset(offset).limit(min(limit, 1000))
    return [run_out(r) for r in (await ctx.session.exec(q)).all()]


async def exit_run(ctx: ServiceContext, key: str, contact_id: str, reason: str = "operator") -> dict[str, Any]:
    r = await latest_run(ctx, key, contact_id)
    if r.status != "running":
        return {"status": r.status, "exit_reason": r.exit_reason}
    handle = ctx.require_temporal().get_workflow_handle(workflow_id(key, contact_id))
    await handle.signal("exit", reason)
    return {"status": "exiting", "exit_reason": reason}
