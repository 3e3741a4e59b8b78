"""The dsl modules run inside the Temporal workflow sandbox when passed through, which is
how workflows must import them (zoneinfo is restricted inside the sandbox)."""

import uuid
from pathlib import Path

import pytest
from temporalio import workflow
from temporalio.testing import WorkflowEnvironment
from temporalio.worker import Worker

with workflow.unsafe.imports_passed_through():
    from dsl.conditions import SnapshotContext, evaluate
    from dsl.model import AttrCondition, SendWindow, WaitStep
    from dsl.split import choose_path
    from dsl.timing import next_send_time, wait_until
    from dsl.validate import validate


@workflow.defn(sandboxed=True)
class DslInSandbox:
    @workflow.run
    async def run(self) -> list[str]:
        now = workflow.now()
        step = WaitStep(duration="PT1H", at_local_time="09:00", days=["mon"], next="x")
        until = wait_until(step, now, "America/New_York", None)
        send_at = next_send_time(SendWindow(hours="08:00-20:00"), now, "Europe/Paris")
        ctx = SnapshotContext(attributes={"age": "70"}, segments=frozenset(), now=now)
        result = validate(
            {
                "key": "k",
                "name": "n",
                "category": "c",
                "start": "x",
                "steps": {"x": {"type": "exit"}},
            }
        )
        return [
            until.strftime("%a"),
            str(send_at >= now),
            str(evaluate(AttrCondition(attr="age", op="gte", value=65), ctx)),
            str(result.ok),
            str(choose_path("contact", "k", 1, [1, 1]) in (0, 1)),
        ]


@pytest.fixture
def test_server() -> Path:
    # Resolved here: this module is re-imported inside the sandbox, where file access is barred.
    server = Path(__file__).resolve().parents[2] / ".venv" / "bin" / "temporal-test-server"
    if not server.exists():
        pytest.skip("temporal test server not installed")
    return server


async def test_dsl_runs_in_the_workflow_sandbox(test_server: Path) -> None:
    env = await WorkflowEnvironment.start_time_skipping(test_server_existing_path=str(test_server))
    async with env:
        async with Worker(env.client, task_queue="dsl-sandbox", workflows=[DslInSandbox]):
            result = await env.client.execute_workflow(
                DslInSandbox.run, id=f"dsl-sandbox-{uuid.uuid4()}", task_queue="dsl-sandbox"
            )
    assert result == ["Mon", "True", "True", "True", "True"]
