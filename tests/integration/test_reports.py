"""Reports against real PostgreSQL: exact numbers for a journey with known outcomes.

The data goes in the way the product writes it (record_steps, the send ledger, judged
tracking events, each followed by its rollup hook); the report comes out over HTTP.
"""

from __future__ import annotations

import asyncio
import csv
import io
import json
import os
import sys
from collections.abc import AsyncIterator
from datetime import timedelta
from pathlib import Path
from typing import Any

import httpx
import pytest
import pytest_asyncio
from sqlmodel import col, select

from core.config import Settings
from core.db import Database
from core.models import AuditLog, ReportCounter, Setting, TrackingEvent
from tests.integration.report_scenario import DAY1, DAY2, Scenario, post_visit

pytestmark = pytest.mark.xdist_group("reports")
ROOT = str(Path(__file__).resolve().parents[2])


@pytest_asyncio.fixture(scope="module")
async def pv(db: Database) -> AsyncIterator[tuple[Scenario, dict[str, Any]]]:
    sc = Scenario(db)
    data = await post_visit(sc)
    yield sc, data


def step(report: dict[str, Any], name: str) -> dict[str, Any]:
    return next(s for s in report["steps"] if s["step"] == name)


async def get_report(api: httpx.AsyncClient, key: str, **params: Any) -> dict[str, Any]:
    r = await api.get(f"/v1/journeys/{key}/report", params=params)
    assert r.status_code == 200, r.text
    return r.json()


async def test_funnel_and_runs(pv: tuple[Scenario, dict[str, Any]], api: httpx.AsyncClient) -> None:
    sc, _ = pv
    rep = await get_report(api, sc.key)
    assert rep["versions"] == [1]
    assert [s["step"] for s in rep["steps"]] == ["thanks", "engaged?", "tag", "nudge", "done"]
    runs = rep["runs"]
    assert runs["started"] == 24 and runs["ended"] == 24
    exits = {e["reason"]: e["count"] for e in runs["exits"]}
    assert exits["completed"] == 18 and exits["goal"] == 4 and exits["exit_when"] == 2
    assert exits["loop_guard"] == 0 and exits["operator"] == 0  # always listed
    assert runs["goal"] == {"conversions": 5, "conversion_rate": round(5 / 24, 4)}

    thanks = step(rep, "thanks")
    assert (thanks["entered"], thanks["entries"], thanks["left"]) == (24, 24, 24)
    assert thanks["went_to"] == [{"step": "engaged?", "count": 24}]
    engaged = step(rep, "engaged?")
    assert engaged["entered"] == 24 and engaged["left"] == 22
    assert engaged["went_to"] == [{"step": "nudge", "count": 16}, {"step": "tag", "count": 6}]
    assert engaged["exits"] == [{"reason": "exit_when", "count": 2}]
    assert "send" not in engaged and engaged["type"] == "wait_for_engagement"
    tag = step(rep, "tag")
    assert tag["entered"] == 6 and tag["exits"] == [{"reason": "goal", "count": 4}]
    assert tag["went_to"] == [{"step": "done", "count": 2}]
    done = step(rep, "done")
    assert done["entered"] == 18 and done["exited"] == 18
    assert done["went_to"] == [{"step": None, "count": 18}]


async def test_sends_in_both_modes(
    pv: tuple[Scenario, dict[str, Any]], api: httpx.AsyncClient
) -> None:
    sc, _ = pv
    excl = await get_report(api, sc.key, include_automated="false")
    incl = await get_report(api, sc.key, include_automated="true")
    assert excl["include_automated"] is False and incl["include_automated"] is True

    for rep in (excl, incl):
        send = step(rep, "thanks")["send"]
        assert send["templates"] == [sc.template("thanks")]
        assert (send["sent"], send["delivered"], send["bounced"]) == (22, 21, 1)
        assert (send["complained"], send["unsubscribed"]) == (1, 1)
        assert send["blocked"] == {"total": 2, "by_reason": [{"reason": "no_consent", "count": 2}]}
        opens, clicks = send["opens"], send["clicks"]
        # The verdict split is the same in both modes.
        assert opens["human"] == {"total": 15, "unique": 10}
        assert opens["automated"] == {"total": 15, "unique": 15}
        assert opens["unknown"] == {"total": 2, "unique": 2}
        assert clicks["human"] == {"total": 8, "unique": 7}
        assert clicks["automated"] == {"total": 24, "unique": 12}
        assert clicks["unknown"] == {"total": 0, "unique": 0}
        assert opens["including_automated"] == {"total": 32, "unique": 17}
        assert opens["excluding_automated"] == {"total": 17, "unique": 12}
        assert {(e["verdict"], e["reason"]): e["count"] for e in opens["by_reason"]} == {
            ("human", "mail_client"): 10,
            ("human", "browser"): 5,
            ("automated", "apple_mpp"): 15,
            ("unknown", "unrecognised_client"): 2,
        }
        assert opens["machine_by_reason"] == [
            {"reason": "apple_mpp", "count": 15, "share": round(15 / 32, 4)}
        ]
        assert opens["machine_share"] == round(15 / 32, 4)
        assert clicks["machine_by_reason"] == [
            {"reason": "link_scanner", "count": 24, "share": round(24 / 32, 4)}
        ]
        assert send["rates_excluding_automated"]["open_rate"] == round(12 / 21, 4)
        assert send["rates_including_automated"]["open_rate"] == round(17 / 21, 4)
        assert send["rates_excluding_automated"]["click_to_open_rate"] == round(7 / 12, 4)
        assert send["rates_including_automated"]["click_to_open_rate"] == round(12 / 17, 4)
        assert send["rates_including_automated"]["bounce_rate"] == round(1 / 22, 4)

    e_send, i_send = step(excl, "thanks")["send"], step(incl, "thanks")["send"]
    assert (e_send["opens"]["total"], e_send["opens"]["unique"]) == (17, 12)
    assert (i_send["opens"]["total"], i_send["opens"]["unique"]) == (32, 17)
    assert (e_send["clicks"]["total"], e_send["clicks"]["unique"]) == (8, 7)
    assert (i_send["clicks"]["total"], i_send["clicks"]["unique"]) == (32, 12)
    assert e_send["rates"] == e_send["rates_excluding_automated"]
    assert i_send["rates"] == i_send["rates_including_automated"]
    assert e_send["rates"]["click_rate"] == round(7 / 21, 4)
    assert i_send["rates"]["click_rate"] == round(12 / 21, 4)

    links = {ln["link"]: ln for ln in e_send["clicks"]["by_link"]}
    assert set(links) == {"book", "info"}
    assert (links["book"]["total"], links["book"]["unique"]) == (7, 6)
    assert (links["info"]["total"], links["info"]["unique"]) == (1, 1)
    assert links["book"]["automated"] == {"total": 12, "unique": 12}
    links = {ln["link"]: ln for ln in i_send["clicks"]["by_link"]}
    assert (links["book"]["total"], links["book"]["unique"]) == (19, 12)
    assert (links["info"]["total"], links["info"]["unique"]) == (13, 12)

    nudge = step(excl, "nudge")["send"]
    assert (nudge["sent"], nudge["delivered"]) == (16, 16)
    assert nudge["opens"]["automated"] == {"total": 9, "unique": 9}
    assert (nudge["opens"]["total"], nudge["opens"]["unique"]) == (3, 3)
    assert step(incl, "nudge")["send"]["opens"]["unique"] == 12


async def test_default_mode_follows_the_account_setting(
    pv: tuple[Scenario, dict[str, Any]], api: httpx.AsyncClient, db: Database
) -> None:
    sc, _ = pv
    rep = await get_report(api, sc.key)
    assert rep["include_automated"] is False and rep["include_automated_source"] == "setting"
    async with db.session() as s:
        s.add(Setting(key="exclude_automated_events", value=False))
        await s.commit()
    try:
        rep = await get_report(api, sc.key)
        assert rep["include_automated"] is True
        assert step(rep, "thanks")["send"]["opens"]["unique"] == 17
        rep = await get_report(api, sc.key, include_automated="false")
        assert rep["include_automated_source"] == "query"
        assert step(rep, "thanks")["send"]["opens"]["unique"] == 12
    finally:
        async with db.session() as s:
            row = await s.get(Setting, "exclude_automated_events")
            if row is not None:
                await s.delete(row)
                await s.commit()


async def test_time_range_and_version(
    pv: tuple[Scenario, dict[str, Any]], api: httpx.AsyncClient
) -> None:
    sc, _ = pv
    day1, day2 = DAY1.date().isoformat(), DAY2.date().isoformat()
    first = step(await get_report(api, sc.key, **{"from": day1, "to": day1}), "thanks")["send"]
    second = step(await get_report(api, sc.key, **{"from": day2, "to": day2}), "thanks")["send"]
    # Human opens: 10 on day 1, 5 repeats on day 2; unique opens count on the first day.
    assert first["opens"]["human"] == {"total": 10, "unique": 10}
    assert second["opens"]["human"] == {"total": 5, "unique": 0}
    assert first["sent"] == 22 and second["sent"] == 0
    assert second["clicks"]["human"] == {"total": 1, "unique": 0}
    assert step(await get_report(api, sc.key, version=1), "thanks")["entered"] == 24
    r = await api.get(f"/v1/journeys/{sc.key}/report", params={"version": 7})
    assert r.status_code == 404 and r.json()["error"]["details"] == {
        "journey": sc.key,
        "version": 7,
    }
    r = await api.get(f"/v1/journeys/{sc.key}/report", params={"from": "yesterday"})
    assert r.status_code == 422 and r.json()["error"]["details"] == {"field": "from"}
    r = await api.get(f"/v1/journeys/{sc.key}/report", params={"from": day2, "to": day1})
    assert r.status_code == 422
    r = await api.get("/v1/journeys/no-such-journey/report")
    assert r.status_code == 404


async def test_engagement_by_day(
    pv: tuple[Scenario, dict[str, Any]], api: httpx.AsyncClient
) -> None:
    sc, _ = pv
    day1, day2 = DAY1.date().isoformat(), DAY2.date().isoformat()
    r = await api.get(
        "/v1/reports/engagement",
        params={"from": day1, "to": day2, "journey": sc.key, "include_automated": "true"},
    )
    assert r.status_code == 200, r.text
    rep = r.json()
    assert [d["day"] for d in rep["days"]] == [day1, day2]
    d1, d2 = rep["days"]
    assert d1["sent"] == 22 + 16 and d1["delivered"] == 21 + 16 and d1["bounced"] == 1
    # Day 1 opens: thanks 15 MPP + 10 human + 2 unknown; nudge 9 MPP.
    assert d1["opens"]["total"] == 36 and d1["opens"]["automated"]["total"] == 24
    assert d1["opens"]["machine_share"] == round(24 / 36, 4)
    assert d1["opens"]["machine_by_reason"] == [
        {"reason": "apple_mpp", "count": 24, "share": round(24 / 36, 4)}
    ]
    assert d2["opens"]["human"]["total"] == 8 and d2["opens"]["machine_share"] == 0.0
    assert d1["clicks"]["machine_by_reason"][0]["reason"] == "link_scanner"
    assert rep["totals"]["opens"]["total"] == 44
    assert rep["totals"]["opens"]["unique"] == 17 + 12

    r = await api.get(
        "/v1/reports/engagement",
        params={"from": day1, "to": day2, "template": sc.template("nudge"), "group_by": "template"},
    )
    rep = r.json()
    assert [(d["day"], d["template"]) for d in rep["days"]] == [
        (day1, sc.template("nudge")),
        (day2, sc.template("nudge")),
    ]
    assert rep["totals"]["sent"] == 16 and rep["include_automated"] is False
    assert rep["totals"]["opens"]["total"] == 3  # human only
    r = await api.get("/v1/reports/engagement", params={"from": "2020-01-01", "to": "2026-01-01"})
    assert r.status_code == 422


async def test_marketer_gets_suppressed_aggregates(
    pv: tuple[Scenario, dict[str, Any]], app_client: httpx.AsyncClient, key_for: Any
) -> None:
    sc, data = pv
    headers = {"Authorization": f"Bearer {await key_for('marketer')}"}
    r = await app_client.get(f"/v1/journeys/{sc.key}/report", headers=headers)
    assert r.status_code == 200, r.text
    rep = r.json()
    assert rep["suppressed"] is True and rep["suppression_threshold"] == 11
    send = step(rep, "thanks")["send"]
    assert send["sent"] == 22 and send["delivered"] == 21  # 11 and more are shown
    assert send["bounced"] is None and send["complained"] is None and send["suppressed"] is True
    assert send["blocked"]["total"] is None and send["blocked"]["by_reason"][0]["count"] is None
    assert send["opens"]["unique"] == 12 and send["opens"]["unknown"]["total"] is None
    assert send["opens"]["unknown"]["suppressed"] is True
    assert send["rates"]["open_rate"] == round(12 / 21, 4)
    assert send["rates"]["click_rate"] is None  # 7 clickers: suppressed, so is its rate
    assert send["rates"]["bounce_rate"] is None
    assert step(rep, "tag")["entered"] is None
    assert rep["runs"]["goal"]["conversions"] is None
    assert rep["runs"]["goal"]["conversion_rate"] is None
    zero = {e["reason"]: e["count"] for e in rep["runs"]["exits"]}
    assert zero["loop_guard"] == 0 and zero["completed"] == 18  # zero discloses nobody

    r = await app_client.get(
        f"/v1/journeys/{sc.key}/report/steps/thanks/contacts",
        params={"metric": "opened"},
        headers=headers,
    )
    assert r.status_code == 403
    r = await app_client.get(
        "/v1/reports/engagement",
        params={"from": DAY1.date().isoformat(), "to": DAY2.date().isoformat(), "journey": sc.key},
        headers=headers,
    )
    assert r.status_code == 200
    d2 = r.json()["days"][1]
    assert d2["opens"]["total"] is None and "suppressed" not in d2
    assert d2["opens"]["suppressed"] is True
    # The journey report never names a contact, whoever reads it.
    assert all(c not in r.text for c in data["contacts"])

    integration = {"Authorization": f"Bearer {await key_for('integration')}"}
    r = await app_client.get(f"/v1/journeys/{sc.key}/report", headers=integration)
    assert r.status_code == 403


async def test_csv_exports(pv: tuple[Scenario, dict[str, Any]], api: httpx.AsyncClient) -> None:
    sc, _ = pv
    r = await api.get(f"/v1/journeys/{sc.key}/report", params={"format": "csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    assert f'filename="journey-{sc.key}-report.csv"' in r.headers["content-disposition"]
    rows = {row["step"] or row["section"]: row for row in csv.DictReader(io.StringIO(r.text))}
    assert rows["runs"]["runs.started"] == "24"
    assert rows["runs"]["runs.exits.completed.count"] == "18"
    thanks = rows["thanks"]
    assert thanks["send.opens.unique"] == "12" and thanks["send.opens.human.total"] == "15"
    assert thanks["send.blocked.by_reason.no_consent.count"] == "2"
    assert thanks["send.clicks.by_link.book.automated.unique"] == "12"
    assert thanks["send.rates.open_rate"] == str(round(12 / 21, 4))
    assert thanks["went_to.engaged?.count"] == "24"
    assert rows["engaged?"]["send.sent"] == ""  # not a send step

    r = await api.get(
        "/v1/reports/engagement",
        params={
            "from": DAY1.date().isoformat(),
            "to": DAY2.date().isoformat(),
            "journey": sc.key,
            "include_automated": "true",
        },
        headers={"Accept": "text/csv"},
    )
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    days = list(csv.DictReader(io.StringIO(r.text)))
    assert [d["day"] for d in days] == [DAY1.date().isoformat(), DAY2.date().isoformat(), "total"]
    assert days[0]["opens.machine_by_reason.apple_mpp.count"] == "24"
    assert days[2]["opens.total"] == "44"


async def test_drill_down_pages_and_audits(
    pv: tuple[Scenario, dict[str, Any]], api: httpx.AsyncClient, db: Database
) -> None:
    sc, data = pv
    url = f"/v1/journeys/{sc.key}/report/steps/thanks/contacts"
    seen: list[str] = []
    cursor = None
    pages = 0
    while True:
        params: dict[str, Any] = {"metric": "opened", "limit": 5}
        if cursor:
            params["cursor"] = cursor
        r = await api.get(url, params=params)
        assert r.status_code == 200, r.text
        body = r.json()
        seen += [c["contact_id"] for c in body["contacts"]]
        pages += 1
        cursor = body["next_cursor"]
        if cursor is None:
            break
    contacts = data["contacts"]
    assert pages == 3 and sorted(seen) == sorted([contacts[i] for i in [*range(10), 15, 16]])

    r = await api.get(url, params={"metric": "clicked", "link": "book", "verdict": "human"})
    got = {c["contact_id"]: c for c in r.json()["contacts"]}
    assert set(got) == {contacts[i] for i in range(6)}
    assert got[contacts[0]]["external_id"] == f"{sc.key}-mrn-0"
    r = await api.get(url, params={"metric": "received", "limit": 1000})
    assert len(r.json()["contacts"]) == 21  # 22 sent, one bounced
    r = await api.get(url, params={"metric": "opened", "include_automated": "true", "limit": 1000})
    assert len(r.json()["contacts"]) == 17
    r = await api.get(url, params={"metric": "sneezed"})
    assert r.status_code == 422

    async with db.session() as s:
        audits = (
            await s.exec(
                select(AuditLog).where(
                    AuditLog.resource == f"journey/{sc.key}/report/steps/thanks/contacts"
                )
            )
        ).all()
    assert len(audits) >= pages + 3
    assert all(a.fields == ["contact.id", "contact.external_id"] for a in audits)


async def test_revised_verdict_moves_counts(db: Database, api: httpx.AsyncClient) -> None:
    sc = Scenario(db)
    await sc.journey(
        {
            "hello": {"type": "send_email", "template": "hello", "next": "done"},
            "done": {"type": "exit"},
        }
    )
    cid = await sc.contact(0)
    run = await sc.run(
        cid,
        [("hello", "entered", None), ("hello", "left", "done")],
        status="running",
        exit_reason=None,
    )
    send = await sc.send(run, cid, "hello")
    human = await sc.track(send, "open", "human", "mail_client", at=DAY1 + timedelta(hours=2))
    await sc.track(send, "open", "automated", "apple_mpp", at=DAY1)

    async def opens() -> dict[str, Any]:
        rep = await get_report(api, sc.key, include_automated="false")
        return step(rep, "hello")["send"]["opens"]

    before = await opens()
    assert before["human"] == {"total": 1, "unique": 1}
    assert before["automated"] == {"total": 1, "unique": 1}
    assert (before["total"], before["unique"]) == (1, 1)

    # A trap-link hit later shows the "human" open came from a scanner.
    await sc.rejudge(human, "automated", "trap_link")
    await sc.rejudge(human, "automated", "trap_link")  # a repeated callback changes nothing
    after = await opens()
    assert after["human"] == {"total": 0, "unique": 0}
    assert after["automated"] == {"total": 2, "unique": 1}
    assert (after["total"], after["unique"]) == (0, 0)
    assert {(e["verdict"], e["reason"]): e["count"] for e in after["by_reason"]} == {
        ("automated", "apple_mpp"): 1,
        ("automated", "trap_link"): 1,
    }

    # And back: the unique open returns on its own day.
    await sc.rejudge(human, "human", "mail_client")
    again = await opens()
    assert again == before
    # Nothing was left negative or double counted along the way.
    async with db.session() as s:
        rows = (
            await s.exec(
                select(ReportCounter).where(
                    ReportCounter.journey_key == sc.key, col(ReportCounter.count) < 0
                )
            )
        ).all()
    assert rows == []


async def test_send_status_changes_move_counts(db: Database, api: httpx.AsyncClient) -> None:
    sc = Scenario(db)
    await sc.journey(
        {
            "hello": {"type": "send_email", "template": "hello", "next": "done"},
            "done": {"type": "exit"},
        }
    )
    cid = await sc.contact(0)
    run = await sc.run(cid, [("hello", "entered", None)], status="running", exit_reason=None)
    send = await sc.send(run, cid, "hello", status="sending")
    rep = step(await get_report(api, sc.key), "hello")["send"]
    assert (rep["sent"], rep["delivered"]) == (0, 0)
    await sc.update_send(send, status="sent", sent_at=DAY1)
    await sc.update_send(send, status="sent")  # again: no change
    rep = step(await get_report(api, sc.key), "hello")["send"]
    assert (rep["sent"], rep["delivered"], rep["bounced"]) == (1, 1, 0)
    await sc.update_send(send, delivery="bounced")
    rep = step(await get_report(api, sc.key), "hello")["send"]
    assert (rep["sent"], rep["delivered"], rep["bounced"]) == (1, 0, 1)


async def test_cli_backfill_catches_up_and_show_prints(
    db: Database, settings: Settings, api: httpx.AsyncClient
) -> None:
    sc = Scenario(db)
    await sc.journey(
        {
            "hello": {"type": "send_email", "template": "hello", "next": "done"},
            "done": {"type": "exit"},
        }
    )
    cid = await sc.contact(0)
    run = await sc.run(cid, [("hello", "entered", None)], status="running", exit_reason=None)
    send = await sc.send(run, cid, "hello")
    # A click stored and judged by code that did not call the rollup hook.
    async with db.session() as s:
        s.add(
            TrackingEvent(
                send_id=send, kind="click", link="book", at=DAY1, verdict="human", reason="browser"
            )
        )
        await s.commit()
    before = step(await get_report(api, sc.key), "hello")["send"]["clicks"]
    assert before["human"] == {"total": 0, "unique": 0}

    env = {
        **os.environ,
        "DATABASE_URL": str(settings.database_url),
        "JOURNEYS_HOME": str(settings.journeys_home),
        "PYTHONPATH": ROOT,
    }

    async def cli(*args: str) -> str:
        proc = await asyncio.create_subprocess_exec(
            sys.executable,
            "-m",
            "cli.main",
            "reports",
            *args,
            env=env,
            stdout=asyncio.subprocess.PIPE,
            stderr=asyncio.subprocess.PIPE,
        )
        out, errs = await asyncio.wait_for(proc.communicate(), timeout=60)
        assert proc.returncode == 0, errs.decode()
        return out.decode()

    for _ in range(2):  # a second run finds nothing new
        assert (await cli("backfill", "--journey", sc.key)).strip() == f"counted {sc.key}"
        after = step(await get_report(api, sc.key), "hello")["send"]["clicks"]
        assert after["human"] == {"total": 1, "unique": 1}
        assert after["by_link"][0]["link"] == "book"
    shown = json.loads(await cli("show", sc.key, "--include-automated"))
    assert shown["include_automated"] is True and shown["journey"] == sc.key
    rows = list(csv.DictReader(io.StringIO(await cli("show", sc.key, "--csv"))))
    assert rows[1]["step"] == "hello" and rows[1]["send.clicks.unique"] == "1"
