"""The step graph of a journey: edges, reachability and cycles that take no time.

Functions take the steps mapping so they also work on a partly valid definition. Orders
follow the steps' declaration order, which keeps every result deterministic.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Iterable, Mapping

from dsl.model import (
    WAIT_STEP_TYPES,
    BranchStep,
    GotoStep,
    SplitStep,
    StartJourneyStep,
    StepUnion,
    WaitForEngagementStep,
    WaitForEventStep,
)


def references(step: StepUnion) -> list[tuple[str, str]]:
    """(field, target step) for every step this one can go to, in field order."""
    if isinstance(step, WaitForEngagementStep | WaitForEventStep):
        return [("yes", step.yes), ("no", step.no)]
    if isinstance(step, BranchStep):
        cases = [(f"cases[{i}].next", case.next) for i, case in enumerate(step.cases)]
        return [*cases, ("default", step.default)]
    if isinstance(step, SplitStep):
        return [(f"paths[{i}].next", path.next) for i, path in enumerate(step.paths)]
    if isinstance(step, GotoStep):
        return [("step", step.step)]
    if isinstance(step, StartJourneyStep):
        return [("next", step.next)] if step.next is not None else []
    next_step: str | None = getattr(step, "next", None)
    return [("next", next_step)] if next_step is not None else []


def successors(step: StepUnion) -> list[str]:
    """Distinct steps this one can go to, in field order."""
    return list(dict.fromkeys(target for _, target in references(step)))


def reachable(steps: Mapping[str, StepUnion], start: str) -> list[str]:
    """Steps reachable from start (start included if it exists), in breadth-first order.
    References to missing steps are ignored."""
    if start not in steps:
        return []
    seen = {start}
    order = [start]
    queue = deque([start])
    while queue:
        for target in successors(steps[queue.popleft()]):
            if target in steps and target not in seen:
                seen.add(target)
                order.append(target)
                queue.append(target)
    return order


def reaches(steps: Mapping[str, StepUnion], source: str, target: str) -> bool:
    """True if target can run after source (a path of one or more edges)."""
    if source not in steps:
        return False
    firsts = [s for s in successors(steps[source]) if s in steps]
    return any(target in reachable(steps, first) for first in firsts)


def zero_time_cycles(steps: Mapping[str, StepUnion]) -> list[list[str]]:
    """One cycle (first step repeated at the end) for every group of steps that can loop
    without passing a wait/wait_for_* step. Each cycle starts at its earliest declared step.
    """
    instant = [key for key, step in steps.items() if step.type not in WAIT_STEP_TYPES]
    instant_set = set(instant)
    edges = {key: [t for t in successors(steps[key]) if t in instant_set] for key in instant}
    position = {key: i for i, key in enumerate(steps)}
    cycles = []
    for component in _strongly_connected(instant, edges):
        first = min(component, key=position.__getitem__)
        if len(component) > 1 or first in edges[first]:
            cycles.append(_cycle_through(first, set(component), edges))
    return sorted(cycles, key=lambda cycle: position[cycle[0]])


def _cycle_through(first: str, members: set[str], edges: Mapping[str, list[str]]) -> list[str]:
    """Shortest path first -> ... -> first inside one strongly connected component."""
    if first in edges[first]:
        return [first, first]
    parent: dict[str, str] = {}
    queue = deque([first])
    while queue:
        node = queue.popleft()
        for target in edges[node]:
            if target not in members:
                continue
            if target == first:
                path = [node]
                while path[-1] != first:
                    path.append(parent[path[-1]])
                return [*reversed(path), first]
            if target not in parent:
                parent[target] = node
                queue.append(target)
    raise AssertionError("a strongly connected component always has a cycle")


def _strongly_connected(nodes: Iterable[str], edges: Mapping[str, list[str]]) -> list[list[str]]:
    """Tarjan's algorithm, iterative so that long step chains cannot hit the recursion limit."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    components: list[list[str]] = []
    counter = 0
    for root in nodes:
        if root in index:
            continue
        work: list[tuple[str, int]] = [(root, 0)]
        while work:
            node, child = work.pop()
            if child == 0:
                index[node] = low[node] = counter
                counter += 1
                stack.append(node)
                on_stack.add(node)
            targets = edges[node]
            if child < len(targets):
                work.append((node, child + 1))
                target = targets[child]
                if target not in index:
                    work.append((target, 0))
                elif target in on_stack:
                    low[node] = min(low[node], index[target])
                continue
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                components.append(component)
            if work:
                parent = work[-1][0]
                low[parent] = min(low[parent], low[node])
    return components
