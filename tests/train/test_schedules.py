"""The learning-rate schedules of train/loop.py: their values, and that a resumed run keeps the one it began with."""
import pytest
import torch

from reidfast.train.loop import LinearDecaySchedule, WarmupStepSchedule


def test_linear_decay_is_flat_then_reaches_zero_at_the_end():
    f = LinearDecaySchedule(start=4, total=8)
    assert [f(i) for i in range(10)] == pytest.approx([1, 1, 1, 1, 1, 0.75, 0.5, 0.25, 0, 0])


def test_warmup_then_steps():
    f = WarmupStepSchedule(warmup=2, milestones=[3, 5], gamma=0.1)
    assert [f(i) for i in range(6)] == pytest.approx([0.5, 1, 1, 0.1, 0.1, 0.01])


@pytest.mark.parametrize("make", [lambda n: LinearDecaySchedule(n // 2, n),
                                  lambda n: WarmupStepSchedule(1, [n // 2], 0.1)])
def test_a_resumed_scheduler_follows_the_schedule_it_was_saved_with(make):
    # Resuming is exact: the schedule's length is checkpointed with the scheduler, whatever the resumed run's
    # configuration says (FD-GAN and SA-GAN alike, which once differed here).
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
    opt2, resumed = scheduler(100)  # a run resumed with a different length in its configuration
    resumed.load_state_dict(sched.state_dict())
    assert lrs(opt2, resumed, 7) == lrs(opt, sched, 7)
