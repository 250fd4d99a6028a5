"""Train / val loaders over the `pairs` stage's manifest, with the identity-then-affine curriculum."""

from __future__ import annotations

from pathlib import Path

import pytorch_lightning as pl
from torch.utils.data import DataLoader

from spotdiff.data.pairs_dataset import AffineCurriculum, CurriculumSampler, PairDataset, collate_pairs
from spotdiff.errors import SpotdiffError
from spotdiff.params import Params


class PairDataModule(pl.LightningDataModule):
    """Train / val loaders over the `pairs` stage's manifest."""

    def __init__(self, manifest: Path, params: Params) -> None:
        super().__init__()
        self.manifest = Path(manifest)
        self.params = params

    def setup(self, stage: str | None = None) -> None:
        size = self.params.model.image_size
        augment = self.params.pairs.augment
        seed = self.params.train.seed
        self.train_set = PairDataset(self.manifest, "train", size, augment, seed=seed)
        self.val_set = PairDataset(self.manifest, "val", size, augment, seed=seed)
        if len(self.train_set) == 0 or len(self.val_set) == 0:
            raise SpotdiffError(f"{self.manifest}: needs both train and val pairs "
                                f"(got {len(self.train_set)} / {len(self.val_set)}); add images or pairs")
        t = self.params.train
        self.sampler = CurriculumSampler(len(self.train_set), t.batch_size, seed,
                                         AffineCurriculum(t.affine_start_step, t.affine_ramp_steps))

    def _loader(self, dataset: PairDataset, sampler: CurriculumSampler | None) -> DataLoader:
        workers = self.params.train.num_workers
        return DataLoader(dataset, batch_size=self.params.train.batch_size, sampler=sampler, shuffle=False,
                          num_workers=workers, collate_fn=collate_pairs, persistent_workers=workers > 0,
                          drop_last=False)

    def train_dataloader(self) -> DataLoader:
        return self._loader(self.train_set, self.sampler)

    def val_dataloader(self) -> DataLoader:
        return self._loader(self.val_set, None)
