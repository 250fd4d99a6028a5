"""The training pieces (issue F7: what makes CPU training worth its minutes): the LR schedule, threads,
the geometry curriculum and its sampler, replayable dataset keys; one paper-size bf16 step on a GPU.
The train stage end to end: test_train_stage.py."""

from __future__ import annotations

import itertools

import numpy as np
import pytest
import torch

from helpers.pipeline import TINY_STEPS
from spotdiff.data.pairs_dataset import AffineCurriculum, CurriculumSampler, PairDataset
from spotdiff.data.transforms import PairAugmenter
from spotdiff.params import AugmentParams, TrainParams
from spotdiff.training.lit import WarmupCosine
from spotdiff.training.threads import apply_threads, physical_cores


@pytest.fixture(scope="module")
def tiny_pairs(tiny_pipeline):
    """A tiny real pairs manifest made by the project's own stages."""
    return tiny_pipeline(TINY_STEPS)


def test_warmup_cosine_shape():
    f = WarmupCosine("cosine", warmup_steps=10, total_steps=110, start_factor=0.01, min_factor=0.05)
    assert f(0) == pytest.approx(0.01)
    values = [f(s) for s in range(111)]
    assert all(b > a for a, b in itertools.pairwise(values[:11]))  # rising warm-up
    assert f(10) == pytest.approx(1.0)
    assert all(b <= a + 1e-12 for a, b in itertools.pairwise(values[10:]))  # then never rising
    assert f(60) == pytest.approx(0.05 + 0.95 * 0.5)  # half-way down the cosine
    assert f(110) == pytest.approx(0.05) and f(500) == pytest.approx(0.05)
    constant = WarmupCosine("constant", warmup_steps=4, total_steps=100)
    assert constant(2) < 1 and constant(4) == 1.0 and constant(99) == 1.0


def test_num_threads_applied(monkeypatch):
    before = torch.get_num_threads()
    try:
        assert apply_threads(TrainParams(num_threads=1)) == 1 and torch.get_num_threads() == 1
        assert apply_threads(TrainParams(num_threads=0, num_workers=0)) == physical_cores() >= 1
        assert torch.get_num_threads() == physical_cores()
        # a loader worker keeps a core of its own: threads + workers never exceed the cores
        assert apply_threads(TrainParams(num_threads=0, num_workers=1)) == max(1, physical_cores() - 1)
    finally:
        torch.set_num_threads(before)


def test_curriculum_strength_and_sampler_steps():
    c = AffineCurriculum(start_step=4, ramp_steps=2)
    assert [c.strength(s) for s in range(7)] == [0, 0, 0, 0, 0.5, 1.0, 1.0]
    assert AffineCurriculum().strength(0) == 1.0
    sampler = CurriculumSampler(10, batch_size=4, seed=3, curriculum=c)  # 3 steps per epoch
    epoch0, epoch1 = list(sampler), list(sampler)
    assert sorted(k[0] for k in epoch0) == list(range(10)) and [k[1] for k in epoch1] == list(range(10, 20))
    assert [k[2] for k in epoch0] == [0.0] * 10
    assert [k[2] for k in epoch1] == [0.0] * 4 + [0.5] * 4 + [1.0] * 2  # steps 3, 4, 5
    sampler.set_epoch(1)
    assert list(sampler) == epoch1  # replayable


def test_curriculum_switches_geometry():
    """Strength 0: identity geometry (boxes where the objects are); strength 1: the configured affine."""
    aug = PairAugmenter(AugmentParams(jitter=0.0, rotation_deg=30, translate=0.2), image_size=64)
    image = np.zeros((64, 64, 3), dtype=np.uint8)
    masks = np.zeros((1, 64, 64), dtype=bool)
    masks[0, 20:40, 10:30] = True
    still = aug(image, image, masks, rng=np.random.default_rng(0), strength=0.0)
    assert still.params_a["aff"]["angle"].item() == 0 and still.params_b["aff"]["scale"].eq(1).all()
    assert still.boxes_a.tolist() == [[10.0, 20.0, 30.0, 40.0]] == still.boxes_b.tolist()
    moved = aug(image, image, masks, rng=np.random.default_rng(0), strength=1.0)
    assert moved.params_a["aff"]["angle"].abs().item() > 0
    half = aug(image, image, masks, rng=np.random.default_rng(0), strength=0.5)
    assert half.params_a["aff"]["angle"].item() == pytest.approx(0.5 * moved.params_a["aff"]["angle"].item())


def test_dataset_keys_are_deterministic(tiny_pairs):
    ds = PairDataset(tiny_pairs / "data/pairs/manifest.json", "train", 64, AugmentParams(), seed=0)
    one, again, other = ds[(0, 5, 1.0)], ds[(0, 5, 1.0)], ds[(0, 6, 1.0)]
    assert torch.equal(one["image_a"], again["image_a"])
    assert not torch.equal(one["image_a"], other["image_a"])


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_paper_size_bf16_training_step_on_gpu():
    """One ResNet-50 / 256² / batch-16 training step in bf16 autocast; prints time and memory."""
    import time

    from spotdiff.models.cyws import CYWS

    model = CYWS(backbone="resnet50", image_size=256).cuda()
    opt = torch.optim.Adam(model.parameters(), lr=1e-4, weight_decay=5e-4)
    a, b = torch.rand(16, 3, 256, 256, device="cuda"), torch.rand(16, 3, 256, 256, device="cuda")
    boxes = [torch.tensor([[40.0, 40.0, 120.0, 100.0]], device="cuda")] * 16
    torch.cuda.reset_peak_memory_stats()
    for step in range(3):
        torch.cuda.synchronize()
        started = time.time()
        with torch.autocast("cuda", dtype=torch.bfloat16):
            out_a, out_b = model(a, b)
            loss = model.loss(out_a, out_b, boxes, boxes)["loss"]
        opt.zero_grad()
        loss.backward()
        opt.step()
        torch.cuda.synchronize()
        print(f"step {step}: {time.time() - started:.3f}s, peak {torch.cuda.max_memory_allocated() / 2**30:.2f} GiB")
    assert torch.isfinite(loss)
