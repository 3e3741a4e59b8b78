"""What the race-free frequency cap costs a send.

    .venv/bin/python bench/send_cap.py [--sends 200]

On a throwaway stack (embedded PostgreSQL, SMTP sink), for --sends contacts that each
already had a send in the period, it times (medians, same run):

- baseline (half the contacts): the cap's former check, a plain count of the contact's
  counted sends, then send_email (which reserves the ledger row, renders, sends);
- now (the other half): send_cap as it is now (advisory lock on the contact, count
  including in-flight sends, the ledger row reserved in the same transaction), then
  send_email (which finds the row reserved).

The two alternate, so load on the machine hits both alike. It prints the medians of the
check alone and of check + send, and the ratio now / baseline.
"""

from __future__ import annotations

import argparse
import asyncio
import statistics
import sys
import time
import uuid
from collections.abc import Awaitable, Callable
from datetime import timedelta
from functools import partial
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from sqlalchemy import func, or_  # noqa: E402
from sqlmodel import col, select  # noqa: E402
from temporalio.testing import ActivityEnvironment  # noqa: E402

from activities.lookups import (  # noqa: E402
    COUNTED_SEND_STATUSES,
    NON_MARKETING_CATEGORIES,
    LookupActivities,
)
from activities.sending import SendActivities  # noqa: E402
from activities.smtp import SmtpTransport, parse_smtp_url  # noqa: E402
from bench.stack import bench_stack  # noqa: E402
from core.db import Database  # noqa: E402
from core.models import Consent, Contact, Send, Template, utcnow  # noqa: E402
from workflows.types import SendCapInput, SendInput  # noqa: E402

CATEGORY = "care_reminders"


async def _timed(fn: Callable[[], Awaitable[object]]) -> float:
    t0 = time.perf_counter()
    await fn()
    return (time.perf_counter() - t0) * 1000


async def _old_count(db: Database, inp: SendCapInput) -> int:
    """The check as it was: one unlocked count, nothing reserved."""
    start = inp.now - timedelta(days=1)
    at = func.coalesce(Send.sent_at, Send.created_at)
    q = select(at).where(
        Send.contact_id == inp.contact_id,
        col(Send.status).in_(COUNTED_SEND_STATUSES),
        or_(col(Send.category).is_(None), col(Send.category).notin_(NON_MARKETING_CATEGORIES)),
        at > start,
    )
    async with db.session() as s:
        return len((await s.exec(q)).all())


async def main(sends: int) -> None:
    async with bench_stack() as st:
        db, settings = st.db, st.settings
        assert settings.smtp_url
        transport = SmtpTransport(parse_smtp_url(settings.smtp_url, settings.smtp_allow_plaintext))
        sender = SendActivities(db, settings, transport)
        lookups = LookupActivities(db, settings)
        env = ActivityEnvironment()
        tpl = f"tpl-{uuid.uuid4().hex[:8]}"
        now = utcnow()
        cases: list[tuple[SendCapInput, SendInput]] = []
        async with db.session() as s:
            s.add(Template(key=tpl, subject="Hello", html="<p>Hello</p>",
                           track_opens=False, track_clicks=False))
            cids = [f"c_bench{i:06d}{uuid.uuid4().hex[:6]}" for i in range(sends)]
            for cid in cids:
                s.add(Contact(id=cid, external_id=f"mrn-{cid}", email=f"{cid}@example.com"))
            await s.flush()  # consent rows refer to the contacts
            for cid in cids:
                s.add(Consent(contact_id=cid, category=CATEGORY, granted=True, source="bench"))
                key = f"earlier-{cid}/s/1"
                s.add(Send(send_key=key, run_id=f"earlier-{cid}", journey_key="earlier",
                           version=1, step="s", visit=1, contact_id=cid, template_key=tpl,
                           category=CATEGORY, message_id=f"<{key}@bench>", status="sent",
                           sent_at=now - timedelta(hours=2)))
                send = SendInput(run_id=f"r-{cid}", journey_key="bench", journey_name="Bench",
                                 version=1, contact_id=cid, step="promo", visit=1,
                                 template_key=tpl, category=CATEGORY)
                cap = SendCapInput(contact_id=cid, now=now, period="P1D", max_sends=3,
                                   run_id=send.run_id, step="promo", visit=1, send=send)
                cases.append((cap, send))
            await s.commit()

        for cap, _ in cases[:10]:  # warm-up: connections, caches
            await _old_count(db, cap)
        # Alternate the two ways (contacts are split between them) so load noise hits both.
        old_check: list[float] = []
        old_total: list[float] = []
        new_check: list[float] = []
        new_total: list[float] = []
        for i, (cap, send) in enumerate(cases):
            if i % 2 == 0:
                check = await _timed(partial(_old_count, db, cap))
                old_check.append(check)
                old_total.append(check + await _timed(partial(env.run, sender.send_email, send)))
            else:
                check = await _timed(partial(env.run, lookups.send_cap, cap))
                new_check.append(check)
                new_total.append(check + await _timed(partial(env.run, sender.send_email, send)))

    med = statistics.median
    print(f"sends: {sends} (half each way)")
    print(f"cap check   former unlocked count {med(old_check):.2f} ms | "
          f"now lock + count + reserve {med(new_check):.2f} ms")
    print(f"check + send_email: former {med(old_total):.2f} ms | now {med(new_total):.2f} ms | "
          f"ratio {med(new_total) / med(old_total):.2f}x")

if __name__ == "__main__":
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--sends", type=int, default=200)
    args = p.parse_args()
    asyncio.run(main(args.sends))
