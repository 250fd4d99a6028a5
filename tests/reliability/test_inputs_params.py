"""Hostile params: every numeric key of params.yaml (walked from the params model, so a new key is
covered without editing this file) at inf, nan and huge values is refused with one line naming it;
0 and -1 are accepted only where they mean something; what validates also runs; the train stage's
Lightning settings are checked against this machine; the params file itself may be hostile."""

from __future__ import annotations

import math
import os

import pytest
import yaml
from pydantic import BaseModel

from helpers import hostile
from reliability.inputs_common import assert_user_error
from spotdiff.cli import main
from spotdiff.errors import SpotdiffError
from spotdiff.params import Params, params_from_dict
from spotdiff.training.hardware import cpu_count


def _numeric_keys(cls: type[BaseModel] = Params, prefix: tuple = ()) -> list[tuple[str, ...]]:
    keys = []
    for name, info in cls.model_fields.items():
        ann = info.annotation
        if isinstance(ann, type) and issubclass(ann, BaseModel):
            keys += _numeric_keys(ann, prefix + (name,))
            continue
        default = info.get_default(call_default_factory=True)
        if isinstance(default, (int, float)) and not isinstance(default, bool):
            keys.append(prefix + (name,))
    return keys


NUMERIC = _numeric_keys() + [("ssim", "threshold")]  # threshold: "otsu" or a number
HOSTILE = [math.inf, -math.inf, math.nan, 10**12, 1e12, 2**63, -(10**12)]

# Where 0 or -1 is a documented setting (params.py says what it means); every other key refuses them.
ZERO_OK = {
    "data.seed", "inpaint.seed", "pairs.seed", "train.seed", "testsets.seed",  # seeds
    "data.coco.min_object_area", "inpaint.dilate_px", "pairs.p_inpainted", "pairs.preview_count",
    "pairs.augment.jitter", "pairs.augment.rotation_deg", "pairs.augment.translate",
    "pairs.augment.work_scale", "train.weight_decay", "train.num_workers", "train.preview_pairs",
    "train.warmup_steps", "train.min_lr_factor", "train.val_every_n_steps", "train.num_threads",
    "train.affine_start_step", "train.affine_ramp_steps", "ssim.morph_kernel", "ssim.group_gap",
    "ssim.seed_delta", "ssim.min_area_fraction", "ssim.map_side", "ssim.min_threshold",
    "ssim.colour_scale", "evaluate.samples_to_draw", "evaluate.num_workers", "register.promote_margin",
    "register.ap_floor",
    "pairs.text_fraction", "pairs.parallax_fraction", "pairs.relight_fraction",  # 0 = the paper's pairs
    "ssim.match_tolerance", "testsets.no_change_fraction",  # 0 = off / none
}
MINUS_ONE_OK = {"train.max_steps"}


def _nest(key: tuple[str, ...], value) -> dict:
    for part in reversed(key):
        value = {part: value}
    return value


def _accepts(key: tuple[str, ...], value) -> bool:
    try:
        params_from_dict(_nest(key, value))
        return True
    except SpotdiffError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith("params.yaml: ")
        assert ".".join(key) in text or key[-1] in text, text  # names the key
        return False


@pytest.mark.parametrize("key", NUMERIC, ids=".".join)
def test_inf_nan_and_huge_values_are_refused(key):
    for value in HOSTILE:
        assert not _accepts(key, value), f"{'.'.join(key)} accepted {value!r}"


@pytest.mark.parametrize("key", NUMERIC, ids=".".join)
def test_zero_and_minus_one_only_where_they_mean_something(key):
    dotted = ".".join(key)
    assert _accepts(key, 0) == (dotted in ZERO_OK)
    assert _accepts(key, -1) == (dotted in MINUS_ONE_OK)


def test_every_numeric_key_has_an_upper_bound_or_a_rule():
    """The walk found the keys (a refactor that hid them would make the tests above vacuous)."""
    assert len(NUMERIC) >= 60
    assert ("train", "lr") in NUMERIC and ("data", "coco", "max_images") in NUMERIC


# ---------------------------------------------------------------- what validates also runs

SSIM_EDGES = {"sigma": [50.0, 1e-3], "morph_kernel": [0, 255], "max_side": [64, 4096], "map_side": [0, 4096],
              "colour_scale": [0, 10.0], "min_threshold": [0, 2.0], "group_gap": [0, 0.49],
              "seed_delta": [0, 1.0], "min_area_fraction": [0, 0.99], "hysteresis": [1e-3, 1.0],
              "threshold": [1e-6, 2]}


@pytest.fixture()
def pair(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a.png").write_bytes(hostile.real_png(seed=0))
    (tmp_path / "b.png").write_bytes(hostile.real_png(seed=1))
    return tmp_path / "a.png", tmp_path / "b.png"


@pytest.mark.parametrize("key,value", [(k, v) for k, vs in SSIM_EDGES.items() for v in vs])
@pytest.mark.parametrize("grouping", ["objects", "components"])
def test_ssim_values_at_their_bounds_run(pair, tmp_path, capfd, key, value, grouping):
    (tmp_path / "p.yaml").write_text(yaml.safe_dump({"ssim": {key: value, "grouping": grouping}}))
    rc = main(["detect", *map(str, pair), "--params", str(tmp_path / "p.yaml"), "--out", str(tmp_path / "o")])
    out, err = capfd.readouterr()
    assert rc == 0 and "Traceback" not in err, err[-2000:]
    assert len(list((tmp_path / "o").iterdir())) == 4


# ---------------------------------------------------------------- the reported cases, end to end

STAGE_CASES = {
    # key: (params, command) — each was a traceback or a hang before
    "ssim_sigma_inf": ({"ssim": {"sigma": math.inf}}, "detect"),
    "ssim_sigma_1e6": ({"ssim": {"sigma": 1e6}}, "detect"),
    "ssim_morph_kernel_100000": ({"ssim": {"morph_kernel": 100000}}, "detect"),
    "ssim_max_side_1e6": ({"ssim": {"max_side": 1_000_000}}, "detect"),
    "data_seed_minus_1": ({"data": {"seed": -1}}, "data"),
    "data_image_width_1e6": ({"data": {"image_width": 1_000_000}}, "data"),
    "augment_scale_max_inf": ({"pairs": {"augment": {"scale_max": math.inf}}}, "pairs"),
    "train_lr_inf": ({"train": {"lr": math.inf}}, "train"),
    "train_strategy_bogus": ({"train": {"strategy": "bogus"}}, "train"),
    "train_devices_more_than_cpus": ({"train": {"devices": min(1024, cpu_count() + 1)}}, "train"),
    "train_num_nodes_2": ({"train": {"num_nodes": 2}}, "train"),
    "train_accelerator_gpu": ({"train": {"accelerator": "gpu"}}, "train"),
    "model_image_size_16384": ({"model": {"image_size": 16384}}, "train"),
}


def _argv(command: str, params, tmp_path, pair) -> list[str]:
    out = str(tmp_path / "out")
    return {"detect": ["detect", *map(str, pair), "--params", params, "--out", out],
            "data": ["data", "--params", params, "--out", out],
            "pairs": ["pairs", "--params", params, "--inpainted", str(tmp_path / "nope"), "--out", out],
            "train": ["train", "--params", params, "--pairs", str(tmp_path / "nope.json"), "--out", out,
                      "--no-tracking"]}[command]


@pytest.mark.parametrize("case", sorted(STAGE_CASES))
def test_reported_params_are_one_line_before_any_work(pair, tmp_path, capfd, monkeypatch, case):
    raw, command = STAGE_CASES[case]
    if case == "train_accelerator_gpu":
        import torch

        if torch.cuda.is_available():
            pytest.skip("this machine has a GPU: train.accelerator gpu is valid here")
    if "WORLD_SIZE" in os.environ and case == "train_num_nodes_2":
        pytest.skip("launched by a multi-node launcher")
    (tmp_path / "p.yaml").write_text(yaml.safe_dump(raw))
    rc = main(_argv(command, str(tmp_path / "p.yaml"), tmp_path, pair))
    out, err = capfd.readouterr()
    line = assert_user_error(rc, out, err, tmp_path / "out")
    assert "p.yaml" in line  # the file given by --params, not params.yaml
    assert not (tmp_path / "out").exists()


HOSTILE_FILES = {
    "duplicate_key": ("ssim:\n  sigma: 1.5\n  sigma: 1e6\n", "appears twice"),
    "duplicate_section": ("ssim:\n  sigma: 1.5\nssim:\n  max_side: 64\n", "appears twice"),
    "top_level_list": ("- ssim\n- sigma\n", "mapping"),
    "not_yaml": ("ssim: [1, 2\n", "not valid YAML"),
    "binary": (b"\x89PNG\r\n\x1a\n\x00\xff\xfe", "not"),
    "python_tag": ("ssim: !!python/object/apply:os.system ['touch PWNED']\n", "not valid YAML"),
    "huge_alias_bomb": ("a: &a [1,1,1,1,1,1,1,1]\nb: &b [*a,*a,*a,*a,*a,*a,*a,*a]\nc: &c [*b,*b,*b,*b,*b,*b,*b,*b]\n"
                        "d: [*c,*c,*c,*c,*c,*c,*c,*c]\n", "unknown key"),
    "section_is_a_number": ("ssim: 3\n", "ssim must be a mapping"),
    "string_for_number": ("ssim:\n  sigma: lots\n", "ssim.sigma must be a number"),
    "bool_for_int": ("ssim:\n  max_side: true\n", "ssim.max_side must be an integer"),
}


@pytest.mark.parametrize("case", sorted(HOSTILE_FILES))
def test_hostile_params_files_are_one_line(pair, tmp_path, capfd, case):
    text, words = HOSTILE_FILES[case]
    path = tmp_path / "p.yaml"
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    rc = main(["detect", *map(str, pair), "--params", str(path), "--out", str(tmp_path / "out")])
    out, err = capfd.readouterr()
    line = assert_user_error(rc, out, err, tmp_path / "out")
    assert words in line and "p.yaml" in line
    assert not (tmp_path / "PWNED").exists()
