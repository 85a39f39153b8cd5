"""Fine-tuning progress units: planned from loop bounds, trimmed when a part stops early."""

from __future__ import annotations

import pytest

from worker.engines.finetune_progress import FinetuneProgress, Tracker, batch_count


@pytest.mark.parametrize(("items", "batch"), [(0, 4), (1, 4), (4, 4), (5, 4), (33, 32)])
def test_batch_count_is_what_slicing_in_batches_yields(items, batch):
    order = list(range(items))
    assert batch_count(items, batch) == len([order[i : i + batch] for i in order[::batch]])


def test_an_early_stop_trims_the_total_and_the_end_is_reported():
    seen: list[FinetuneProgress] = []
    tracker = Tracker(seen.append, epochs=5)
    tracker.plan(decode=3, features=2, head=5 * 2)
    for _ in range(3):
        tracker.advance("decode", "decoding images")
    tracker.plan(features=2, head=5 * 2)  # the decoded counts: unchanged here
    for _ in range(2):
        tracker.advance("features", "computing features")
    for epoch in (1, 2):  # stops after two of five epochs
        for _ in range(2):
            tracker.advance("head", "training head", epoch, loss=0.5)
        tracker.advance("head", "training head", epoch, val_accuracy=0.9, units=0)
    assert seen[-1].step == 9 and seen[-1].total == 15
    tracker.finish("head")
    tracker.end()
    assert (seen[-1].step, seen[-1].total) == (9, 9)
    assert all(p.step <= p.total for p in seen)
    assert [p.total for p in seen] == sorted((p.total for p in seen), reverse=True)


def test_more_work_than_planned_grows_the_total_instead_of_passing_it():
    seen: list[FinetuneProgress] = []
    tracker = Tracker(seen.append, epochs=1)
    tracker.plan(decode=1)
    tracker.advance("decode", "decoding images")
    tracker.advance("decode", "decoding images")
    assert (seen[-1].step, seen[-1].total) == (2, 2)
    tracker.end()
    assert len(seen) == 2  # already at the end: no extra report


def test_unknown_parts_are_refused():
    with pytest.raises(ValueError, match="nap"):
        Tracker(None, epochs=1).plan(nap=3)
