"""Upstream choice: round-robin, passive health, nothing left untried."""

from __future__ import annotations

import pytest

from wsgate.gateway.upstreams import UpstreamPool


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def test_round_robin_over_healthy_upstreams() -> None:
    pool = UpstreamPool(["a", "b", "c"])
    assert [pool.candidates()[0] for _ in range(6)] == ["a", "b", "c", "a", "b", "c"]
    assert pool.candidates() == ["a", "b", "c"]
    assert pool.candidates() == ["b", "c", "a"]


def test_a_failed_upstream_is_tried_last_until_its_bench_ends() -> None:
    clock = Clock()
    pool = UpstreamPool(["a", "b", "c"], bench_seconds=10, clock=clock)
    pool.failed("a")
    assert [pool.candidates() for _ in range(3)] == [["b", "c", "a"], ["b", "c", "a"], ["c", "b", "a"]]
    clock.now += 10.5
    assert not pool.is_benched("a")
    assert pool.candidates() == ["a", "b", "c"]  # back in the rotation


def test_when_all_are_benched_all_are_still_tried_soonest_back_first() -> None:
    clock = Clock()
    pool = UpstreamPool(["a", "b"], bench_seconds=10, clock=clock)
    pool.failed("b")
    clock.now += 1
    pool.failed("a")
    assert pool.candidates() == ["b", "a"]


def test_success_lifts_the_bench() -> None:
    pool = UpstreamPool(["a", "b"])
    pool.failed("a")
    pool.succeeded("a")
    assert not pool.is_benched("a")


def test_a_route_needs_an_upstream() -> None:
    with pytest.raises(ValueError, match="at least one"):
        UpstreamPool([])
