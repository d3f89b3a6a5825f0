"""The Pareto front of points to maximise on every axis (shared by reports and the planner)."""
from __future__ import annotations


def pareto_front(points: list[tuple[float, ...]]) -> list[int]:
    """Indices of the points no other point beats: at least as good on every axis and better on one
    (larger is better on every axis; negate an axis to minimise it)."""
    front = []
    for i, p in enumerate(points):
        beaten = any(all(q[k] >= p[k] for k in range(len(p))) and any(q[k] > p[k] for k in range(len(p)))
                     for j, q in enumerate(points) if j != i)
        if not beaten:
            front.append(i)
    return front
