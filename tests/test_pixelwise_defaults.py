"""The front door behaves the same inside and outside the repository: the built-in SSIM defaults
(what `spotdiff detect` uses with no params.yaml) are params.yaml's `ssim:` section."""

from __future__ import annotations

import yaml

from spotdiff.params import SsimParams, load_params


def test_ssim_defaults_equal_params_yaml(repo_root):
    from_file = load_params(repo_root / "params.yaml").ssim
    assert SsimParams().model_dump() == from_file.model_dump()
    # and params.yaml spells every key out, so a reader sees the whole method there
    raw = yaml.safe_load((repo_root / "params.yaml").read_text())["ssim"]
    assert set(raw) == set(SsimParams.model_fields)


def test_registration_is_on_by_default():
    assert SsimParams().align == "auto"
