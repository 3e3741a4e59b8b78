"""What uvicorn serves (`journeys api`): the FastAPI app behind a thin front for /t/*.

Tracking pixels and click redirects are the product's hottest URLs, so GET/HEAD under
/t/o/ and /t/c/ go straight to the tracking fast path (api.routers.tracking_pipeline
installs it at start-up) without passing through FastAPI's and Starlette's __call__;
everything else, and everything before start-up completes, is the FastAPI app as is.
"""

from __future__ import annotations

from fastapi import FastAPI
from starlette.types import Receive, Scope, Send

from api.main import create_app
from api.tracking_fastpath import Reply, TrackingFastPath, is_tracking_path


class Front:
    def __init__(self, app: FastAPI) -> None:
        self.app = app
        # The app's fast path once its lifespan has installed it (looked up again when
        # that lifespan ends, so a stopped pipeline is never used).
        self._fast: TrackingFastPath | None = None

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] == "http" and is_tracking_path(scope["path"]):
            fast = self._fast
            if fast is None or not fast.active:
                fast = self._fast = getattr(self.app.state, "tracking_fastpath", None)
            if fast is not None:
                # The fast path's steps inline (no coroutine of its own per hit).
                reply = fast.answer(scope)
                if reply is not None:
                    if not isinstance(reply, Reply):
                        reply = await fast.finish(reply, scope)
                    await send(reply.start)
                    await send(reply.end)
                    return
        await self.app(scope, receive, send)


def app_factory() -> Front:
    """For `uvicorn --factory api.serve:app_factory`."""
    return Front(create_app())
