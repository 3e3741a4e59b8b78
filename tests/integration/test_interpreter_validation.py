"""Definitions the interpreter must never see: a cycle that could spin without time passing
is refused on save and on publish, with a message naming the cycle."""

from __future__ import annotations

import httpx

from tests.journey_support import journey


def _cycle() -> dict[str, object]:
    return journey(
        {
            "start": {"type": "wait", "duration": "PT1H", "next": "ping"},
            "ping": {"type": "goto", "step": "pong", "max_visits": 5},
            "pong": {"type": "branch", "cases": [
                {"if": {"attr": "x", "op": "exists"}, "next": "ping"}], "default": "end"},
            "end": {"type": "exit"},
        },
        "start",
    )


def _cycle_errors(body: dict[str, object]) -> list[dict[str, str]]:
    error = body["error"]
    assert isinstance(error, dict)
    return [e for e in error["details"]["errors"] if e["code"] == "zero_time_cycle"]


async def test_zero_time_cycle_is_refused_with_the_cycle_named(api: httpx.AsyncClient) -> None:
    d = _cycle()
    r = await api.post("/v1/journeys", json=d)
    assert r.status_code == 422, r.text
    [err] = _cycle_errors(r.json())
    assert err["step"] == "ping" and "ping -> pong -> ping" in err["message"]
    assert (await api.get(f"/v1/journeys/{d['key']}")).status_code == 404  # nothing saved

    # A valid draft cannot be turned into the cycle nor published as one.
    steps = d["steps"]
    assert isinstance(steps, dict)
    ok = {**d, "steps": {**steps, "ping": {"type": "wait", "duration": "PT1M", "next": "pong"}}}
    assert (await api.post("/v1/journeys", json=ok)).status_code == 201
    r = await api.put(f"/v1/journeys/{d['key']}", json=d)
    assert r.status_code == 422 and _cycle_errors(r.json())
    r = await api.post(f"/v1/journeys/{d['key']}/publish")
    assert r.status_code == 200  # the saved draft is still the valid one
