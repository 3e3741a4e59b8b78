"""Property-based API fuzzing: for any input the OpenAPI schema allows (and many it
does not), no route answers 5xx. Runs in-process through ASGI against the real
PostgreSQL and Temporal of the test session."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, given, settings
from schemathesis.python import asgi

from core.config import Settings

pytestmark = pytest.mark.xdist_group("schemathesis")


@pytest.fixture(scope="module")
def asgi_client(settings: Settings, admin_key: str) -> Iterator[Any]:
    from api.main import create_app

    # Its own app: the client runs the lifespan (DB pool, Temporal client) in its own loop.
    app = create_app(settings)
    with asgi.get_client(app) as client:  # type: ignore[arg-type]
        client.headers["Authorization"] = f"Bearer {admin_key}"
        yield client


def test_no_server_errors(asgi_client: Any) -> None:
    schema = schemathesis.openapi.from_asgi("/openapi.json", asgi_client.app)
    operations = [result.ok() for result in schema.get_all_operations()]  # type: ignore[union-attr]
    assert len(operations) > 10, "the schema lists the API's operations"
    failures: list[str] = []
    for operation in operations:

        @given(case=operation.as_strategy())
        @settings(
            max_examples=15,
            deadline=None,
            suppress_health_check=list(HealthCheck),
            derandomize=True,
            database=None,
        )
        def check(case: Any) -> None:
            try:
                response = case.call(session=asgi_client)
            except Exception as exc:  # the in-process client re-raises what became a 500
                failures.append(f"{case.method} {case.formatted_path} -> {type(exc).__name__}")
                return
            if response.status_code >= 500:
                failures.append(
                    f"{case.method} {case.formatted_path} -> {response.status_code}: "
                    f"{response.text[:200]}"
                )

        check()
    assert not failures, "\n".join(failures[:20])
