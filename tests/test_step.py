"""The graph check (repro.train.step.check_graph) on CPU tensors: a CUDA graph is trusted only if its step is the
eager step from the same state. Deliberately wrong "graphs" — one that skips BN's update, one that applies the lr
twice — are caught and leave the state of the correct step; a correct one passes bit for bit. Plus the free
invariant checked at every row (BN's counters), and the GPU bench's file names. The graph itself, its fallback and
its check on every Fig. 6 net need CUDA: tests/test_cuda.py."""
import pytest
import torch

from repro.bench.gpu import gpu_model
from repro.models import build_model
from repro.train.run import Trainee
from repro.train.step import bn_counter_check, bn_counts, check_graph, compare_steps, set_lr, step_tensors, train_step


def a_trainee():
    """A small net one real step into training (so the momentum buffers exist, as before any capture), its batch
    and running sums; the same every call."""
    torch.manual_seed(0)
    model = build_model("cifar10", 8, "A", width=4)
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9, weight_decay=1e-4)
    x, y = torch.randn(16, 3, 32, 32), torch.randint(0, 10, (16,))
    sums = torch.zeros(3, dtype=torch.float64)
    train_step(model, opt, x, y, sums)
    return Trainee(model, model, model, opt), x, y, sums


@pytest.fixture
def trainee():
    return a_trainee()


def eager(t, x, y, sums, lr=0.1):
    def step():
        set_lr(t.opt, lr)
        train_step(t.net, t.opt, x, y, sums)
    return step


def skips_bn_update(t, x, y, sums):
    def step():
        kept = {n: b.clone() for n, b in t.model.named_buffers()}
        eager(t, x, y, sums)()
        for n, b in t.model.named_buffers():
            b.copy_(kept[n])
    return step


def test_a_correct_graph_passes_bit_for_bit_and_keeps_its_step(trainee):
    t, x, y, sums = trainee
    state = step_tensors(t, sums, None)
    before = {k: v.clone() for k, v in state.items()}
    assert check_graph(state, eager(t, x, y, sums), eager(t, x, y, sums), exact=True) is None
    assert any(not torch.equal(before[k], v) for k, v in state.items())  # a step was taken, once
    assert int(t.model.stem[0][1].num_batches_tracked) == 2


@pytest.mark.parametrize("wrong,says", [(skips_bn_update, "buffer stem.0.1.running_mean"),
                                        (lambda t, x, y, s: eager(t, x, y, s, lr=0.2), "param stem.0.0.weight")])
@pytest.mark.parametrize("exact", [True, False])
def test_a_wrong_graph_is_caught_and_the_state_is_the_eager_steps(trainee, wrong, says, exact):
    t, x, y, sums = trainee
    state = step_tensors(t, sums, None)
    reason = check_graph(state, eager(t, x, y, sums), wrong(t, x, y, sums), exact=exact)
    assert reason is not None and reason.startswith(says), reason
    after = {k: v.clone() for k, v in state.items()}
    # the same eager step from the same start, done again on a copy, is what the run goes on from
    t2, x2, y2, s2 = a_trainee()
    eager(t2, x2, y2, s2)()
    for k, v in step_tensors(t2, s2, None).items():
        assert torch.equal(after[k], v), k


def test_compare_steps_tolerance_is_on_the_update_and_integers_are_exact():
    before = {"w": torch.tensor([1.0, 1.0]), "n": torch.tensor(3)}
    eager = {"w": torch.tensor([0.9, 1.1]), "n": torch.tensor(4)}
    near = {"w": torch.tensor([0.901, 1.1]), "n": torch.tensor(4)}  # the update off by 0.7% of its size
    assert compare_steps(before, eager, near, exact=False) is None
    assert "differs" in compare_steps(before, eager, near, exact=True)
    assert "n differs (5 vs eager 4)" == compare_steps(before, eager, {**near, "n": torch.tensor(5)}, exact=False)
    assert "update differs" in compare_steps(before, eager, {**near, "w": torch.tensor([0.8, 1.2])}, exact=False)
    assert "update differs" in compare_steps(before, eager, {**near, "w": torch.tensor([float("nan"), 1.1])}, False)


def test_the_bn_counters_say_whether_every_step_updated_bn(trainee):
    t, x, y, sums = trainee  # one step taken already (a checkpoint's count, say)
    start = bn_counts(t.model)
    eager(t, x, y, sums)()
    assert bn_counter_check(t.model, start, steps=1, splits=1) is None
    assert "counted 1 training batches in 1 steps of 2 chunk(s), not 2" in bn_counter_check(t.model, start, 1, 2)
    skips_bn_update(t, x, y, sums)()
    assert bn_counter_check(t.model, start, steps=2, splits=1) is not None  # a step that skipped BN is seen


@pytest.mark.parametrize("name,model", [("NVIDIA H100 80GB HBM3", "h100"), ("NVIDIA H200", "h200"),
                                        ("NVIDIA A100-SXM4-80GB", "a100"), ("NVIDIA GeForce RTX 4090", "rtx4090"),
                                        ("Tesla T4", "t4"), ("NVIDIA L40S", "l40s")])
def test_the_gpu_bench_is_named_for_the_gpu_model(name, model):
    assert gpu_model(name) == model  # not the last word (an H100's is HBM3)
