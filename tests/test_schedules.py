import pytest
import torch
from transformers.optimization import get_scheduler

from varirm.schedules import lr_factor, warmup_schedule


@pytest.mark.parametrize("name, reference", [("constant", "constant_with_warmup"), ("linear", "linear"),
                                              ("cosine", "cosine")])
@pytest.mark.parametrize("warmup, total", [(0, 1), (0, 7), (3, 10), (10, 10)])
def test_every_step_matches_transformers(name, reference, warmup, total):
    ours_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    theirs_opt = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=0.5)
    ours = warmup_schedule(ours_opt, name, warmup, total)
    theirs = get_scheduler(reference, theirs_opt, num_warmup_steps=warmup, num_training_steps=total)
    for _ in range(total + 2):
        assert ours.get_last_lr() == pytest.approx(theirs.get_last_lr(), abs=1e-12)
        ours_opt.step(), theirs_opt.step(), ours.step(), theirs.step()


def test_state_round_trip_and_unknown_name():
    optimizer = torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0)
    schedule = warmup_schedule(optimizer, "cosine", 2, 6)
    for _ in range(3):
        optimizer.step(), schedule.step()
    resumed = warmup_schedule(torch.optim.SGD([torch.nn.Parameter(torch.zeros(1))], lr=1.0), "cosine", 2, 6)
    resumed.load_state_dict(schedule.state_dict())
    assert resumed.last_epoch == 3
    with pytest.raises(ValueError, match="unknown schedule 'step'"):
        lr_factor(5, "step", 2, 6)
