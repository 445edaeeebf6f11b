"""The coordinator process's collector settings (`godel_grpc.heap`)."""

from __future__ import annotations

import gc

from godel_grpc import heap


def test_settle_freezes_what_exists_and_raises_the_young_threshold() -> None:
    before = gc.get_threshold()
    try:
        heap.settle()
        assert gc.get_freeze_count() > 0  # start-up's objects are out of the collector's way
        assert gc.get_threshold() == heap.THRESHOLDS
        assert heap.THRESHOLDS[0] > before[0]
    finally:
        gc.unfreeze()
        gc.set_threshold(*before)
