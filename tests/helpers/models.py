"""Small CYWS models for the tests, and files in the authors' published checkpoint layout.

`tiny_cyws` / `save_tiny_cyws`: an untrained ResNet-18 model at 64 px (seeded), the size every test
that only needs *a* model uses. `random_reference_model`, `lightning_checkpoint`, `write_published`:
our R50 / 3×CoAM / scSE model with plausible random weights, saved the way PyTorch Lightning 1.5.8
saved the authors' file (OFFICIAL_CHECKPOINT.md).
"""

from __future__ import annotations

import io
from pathlib import Path

import torch

from spotdiff.models.checkpoint import save_model
from spotdiff.models.cyws import CYWS


def tiny_cyws(seed: int | None = 0, **config) -> CYWS:
    """CYWS(backbone="resnet18", image_size=64, **config) built after `torch.manual_seed(seed)`
    (`seed=None`: the global generator as it is)."""
    if seed is not None:
        torch.manual_seed(seed)
    return CYWS(**{"backbone": "resnet18", "image_size": 64, **config})


def save_tiny_cyws(path: Path, seed: int | None = 0, **config) -> Path:
    """`tiny_cyws(seed, **config)` saved with `save_model` at `path` (folders created); returns path."""
    path = Path(path)
    save_model(tiny_cyws(seed, **config), path)
    return path


# ---------------------------------------------------------------- files in the published layout


def random_reference_model(seed: int = 0) -> CYWS:
    """Our R50 / 3×CoAM / scSE model with random weights whose BatchNorms hold plausible, distinct
    statistics (random affine, running stats from a forward pass), so activations stay O(1) and a
    swapped weight/bias/mean/var would show."""
    torch.manual_seed(seed)
    model = CYWS(backbone="resnet50", attention="coam", attention_layers=3, scse=True, image_size=256)
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    with torch.no_grad():
        for bn in bns:
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.normal_(0, 0.2)
            bn.reset_running_stats()
            bn.momentum = None  # cumulative: running stats = this batch's statistics
        model.train()
        gen = torch.Generator().manual_seed(seed)
        model(torch.rand(2, 3, 64, 64, generator=gen), torch.rand(2, 3, 64, 64, generator=gen))
        for bn in bns:
            bn.momentum = 0.1
            bn.num_batches_tracked.fill_(1234)
    return model.eval()


def lightning_checkpoint(state: dict, epoch: int = 41, global_step: int = 12_345) -> dict:
    """The dict PyTorch Lightning 1.5.8 writes (no hyper_parameters), around a published state_dict."""
    return {
        "epoch": epoch,
        "global_step": global_step,
        "pytorch-lightning_version": "1.5.8",
        "state_dict": state,
        "callbacks": {"ModelCheckpoint{'monitor': 'val/loss', 'mode': 'min', 'every_n_train_steps': 0, "
                      "'every_n_epochs': 1, 'train_time_interval': None, 'save_on_train_epoch_end': True}": {
                          "monitor": "val/loss", "best_model_score": torch.tensor(0.4321),
                          "best_model_path": "/scratch/cyws/epoch=41.ckpt", "current_score": torch.tensor(0.4321),
                          "dirpath": "/scratch/cyws", "best_k_models": {"/scratch/cyws/epoch=41.ckpt": torch.tensor(0.4321)},
                          "kth_best_model_path": "/scratch/cyws/epoch=41.ckpt", "kth_value": torch.tensor(0.4321),
                          "last_model_path": ""}},
        "optimizer_states": [{"state": {0: {"step": global_step, "exp_avg": torch.zeros(3),
                                            "exp_avg_sq": torch.zeros(3)}},
                              "param_groups": [{"lr": 1e-4, "betas": (0.9, 0.999), "eps": 1e-8,
                                                "weight_decay": 5e-4, "amsgrad": False,
                                                "params": list(range(261))}]}],
        "lr_schedulers": [],
    }


def write_published(path: Path, state: dict, cuda_tagged: bool = False, **kw) -> Path:
    """torch.save a Lightning checkpoint; `cuda_tagged` tags every storage 'cuda:0' as the authors'
    GPU-saved file has (torch writes `location_tag(storage)` into data.pkl's persistent ids)."""
    buf = io.BytesIO()
    if cuda_tagged:
        real = torch.serialization.location_tag
        torch.serialization.location_tag = lambda storage: "cuda:0"
        try:
            torch.save(lightning_checkpoint(state, **kw), buf)
        finally:
            torch.serialization.location_tag = real
    else:
        torch.save(lightning_checkpoint(state, **kw), buf)
    path.write_bytes(buf.getvalue())
    return path
