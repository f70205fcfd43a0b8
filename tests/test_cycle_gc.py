"""The cycle keeps the heap it starts with out of the garbage collector's way, and gives
the collector back as it was."""

from __future__ import annotations

import gc

from lapsewatch.cycle import run


def test_the_long_lived_heap_is_frozen_during_the_checks_only() -> None:
    before = gc.get_threshold()
    assert gc.get_freeze_count() == 0
    with run._long_lived_out_of_gc():
        assert gc.get_freeze_count() > 0
        assert gc.get_threshold() == run.GC_THRESHOLDS
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_the_collector_is_given_back_when_the_checks_fail() -> None:
    before = gc.get_threshold()
    try:
        with run._long_lived_out_of_gc():
            raise RuntimeError("a check failed")
    except RuntimeError:
        pass
    assert gc.get_freeze_count() == 0
    assert gc.get_threshold() == before


def test_overlapping_runs_restore_the_collector_once_the_last_ends() -> None:
    before = gc.get_threshold()
    first = run._long_lived_out_of_gc()
    second = run._long_lived_out_of_gc()
    first.__enter__()
    second.__enter__()
    first.__exit__(None, None, None)  # the first ends while the second still runs
    assert gc.get_threshold() == run.GC_THRESHOLDS
    assert gc.get_freeze_count() > 0
    second.__exit__(None, None, None)
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0
