"""Training CYWS with PyTorch Lightning: the module (`lit`), the data (`datamodule`), keeping the best
model (`callbacks`), thread settings (`threads`) and the preview picture (`preview`).

The `train` stage (`spotdiff.stages.train`) builds these from the params and calls `fit`.
"""
