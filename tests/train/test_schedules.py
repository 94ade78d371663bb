"""The learning-rate schedules of train/loop.py: their values, and how a resumed run continues them."""
import pytest
import torch

from reidfast.train.loop import LinearDecaySchedule, WarmupStepSchedule, load_scheduler_state


def test_linear_decay_is_flat_then_reaches_zero_at_the_end():
    f = LinearDecaySchedule(start=4, total=8)
    assert [f(i) for i in range(10)] == pytest.approx([1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0])


def test_warmup_then_steps():
    f = WarmupStepSchedule(warmup=2, milestones=[3, 5], gamma=0.1)
    assert [f(i) for i in range(6)] == pytest.approx([0.5, 1, 1, 0.1, 0.1, 0.01])


@pytest.mark.parametrize("make", [lambda n: LinearDecaySchedule(n // 2, n),
                                  lambda n: WarmupStepSchedule(1, [n // 2], 0.1)])
def test_a_resumed_scheduler_continues_its_position_under_the_configured_schedule(make):
    # Every method alike (FD-GAN and SA-GAN once differed here): the step count comes from the checkpoint, the
    # schedule's shape from the resumed run's configuration. Same configuration: exactly the uninterrupted run.
    def scheduler(total):
        opt = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
        return opt, torch.optim.lr_scheduler.LambdaLR(opt, make(total))

    def lrs(opt, sched, steps):
        out = []
        for _ in range(steps):
            opt.step()
            sched.step()
            out.append(opt.param_groups[0]["lr"])
        return out

    opt, sched = scheduler(10)
    lrs(opt, sched, 3)
    saved = sched.state_dict()
    same_opt, same = scheduler(10)
    load_scheduler_state(same, saved)
    longer_opt, longer = scheduler(100)  # resumed with a larger --iters
    load_scheduler_state(longer, saved)
    assert lrs(same_opt, same, 7) == lrs(opt, sched, 7)
    reference_opt, reference = scheduler(100)  # the longer run from the start, at the same position
    lrs(reference_opt, reference, 3)
    assert lrs(longer_opt, longer, 60) == lrs(reference_opt, reference, 60)
