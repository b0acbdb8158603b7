"""When the heap is trimmed (``sidecar.heap``): after bursts and churn, never when quiet."""

from __future__ import annotations

from sidecar import heap
from sidecar.heap import HeapTrimmer


class Ended:
    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> int:
        return self.count


def test_a_quiet_sidecar_is_never_trimmed() -> None:
    ended = Ended()
    trimmer = HeapTrimmer(ended, after=100)
    assert [trimmer.due() for _ in range(5)] == [False] * 5


def test_steady_churn_is_trimmed_once_enough_connections_ended() -> None:
    ended = Ended()
    trimmer = HeapTrimmer(ended, after=100)
    decisions = []
    for _ in range(6):
        ended.count += 40  # never quiet
        decisions.append(trimmer.due())
    assert decisions == [False, False, True, False, False, True]


def test_the_tail_of_a_burst_is_trimmed_once_it_went_quiet() -> None:
    ended = Ended()
    trimmer = HeapTrimmer(ended, after=160)
    ended.count += 30
    assert not trimmer.due()  # still going
    assert trimmer.due()  # nothing ended since: the burst is over, 30 >= 160 // 16
    assert not trimmer.due()  # and only once


def test_a_few_connections_ending_are_not_worth_a_trim() -> None:
    ended = Ended()
    trimmer = HeapTrimmer(ended, after=160)
    ended.count += 3
    assert [trimmer.due() for _ in range(3)] == [False] * 3


def test_trim_runs_here() -> None:
    # glibc on this machine: the call is made (its result says whether pages were returned)
    assert heap._MALLOC_TRIM is not None
    assert isinstance(heap.trim(), bool)
