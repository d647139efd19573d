"""Training batches built ahead in a DataLoader worker are the batches the loop would build, in the same order."""
import pytest

from jrm_engine.data.step_batches import step_batches
from jrm_engine.train import StepSampler


def pair_indices(pairs):
    return list(pairs)


class Records:
    """Stands in for a data set whose record 7 is bad."""

    def __len__(self):
        return 20

    def __getitem__(self, i):
        if i == 7:
            raise ValueError("record 'pair-7': source image is not an image")
        return i


@pytest.mark.parametrize("workers", [0, 1, 2])
def test_batches_come_in_step_order_from_the_resume_step_on(workers):
    sampler = StepSampler(20, batch=4, grad_accum=2, seed=3)
    expected = [sampler.indices(step, micro) for step in range(2, 7) for micro in range(2)]
    assert len({tuple(b) for b in expected}) == len(expected)  # the check below can tell batches apart
    got = list(step_batches(list(range(20)), pair_indices, StepSampler(20, 4, 2, seed=3), start=2, max_steps=7,
                            workers=workers))
    assert got == expected


def test_a_bad_record_in_a_worker_stops_training_with_its_name():
    batches = step_batches(Records(), pair_indices, StepSampler(20, 4, 1, seed=0), start=0, max_steps=5, workers=1)
    with pytest.raises(ValueError, match="record 'pair-7'"):
        list(batches)


def test_negative_worker_count_is_refused():
    with pytest.raises(ValueError, match="train.data_workers"):
        step_batches([], pair_indices, StepSampler(4, 4, 1, seed=0), 0, 1, workers=-1)
