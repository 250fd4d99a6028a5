"""params.yaml's typed view (`spotdiff.params`): the built-in defaults are the repository's params.yaml,
every profile loads, and a bad value, type, choice or key is refused with one line naming the dotted
key and the fix: from a file, the CLI, a dict, keywords or `model_validate`, never a pydantic traceback."""

from __future__ import annotations

import json
import pickle
import subprocess
from pathlib import Path

import pydantic
import pytest
import yaml

from spotdiff.cli import main
from spotdiff.errors import SpotdiffError
from spotdiff.params import (
    AugmentParams,
    DataParams,
    EvaluateParams,
    ModelParams,
    Params,
    SsimParams,
    TrainParams,
    load_params,
    params_from_dict,
    to_flat_dict,
)

ROOT = Path(__file__).resolve().parents[1]


def _write_params(path, raw: dict):
    path.write_text(yaml.safe_dump(raw))
    return path


def _error(raw) -> str:
    with pytest.raises(SpotdiffError) as info:
        params_from_dict(raw)
    message = str(info.value)
    assert len(message.splitlines()) == 1, message
    return message


# ---------------------------------------------------------------- defaults and profiles


def test_builtin_defaults_are_the_repositorys_params_yaml(repo_root):
    """`spotdiff` run where there is no params.yaml gets the same recipe as inside the repository."""
    assert to_flat_dict(Params()) == to_flat_dict(load_params(repo_root / "params.yaml"))
    assert Params() == load_params(repo_root / "params.yaml")


def _unspelled_keys(section: type[pydantic.BaseModel], raw: dict, prefix: str = "") -> list[str]:
    """Dotted keys of the schema `section` that the mapping `raw` does not spell out, at every depth."""
    missing = []
    for name, info in section.model_fields.items():
        sub = info.annotation if isinstance(info.annotation, type) else None
        if name not in raw:
            missing.append(prefix + name)
        elif sub is not None and issubclass(sub, pydantic.BaseModel):
            missing += _unspelled_keys(sub, raw[name] or {}, f"{prefix}{name}.")
    return missing


PARAMS_FILES = ["params.yaml"] + sorted(
    p.relative_to(ROOT).as_posix() for p in (ROOT / "profiles").glob("*.yaml"))


@pytest.mark.parametrize("path", PARAMS_FILES)
def test_every_schema_key_is_spelled_in_the_params_files(repo_root, path):
    """DVC tracks only the keys a params file spells: a default that lives in code alone would change
    what a stage does while `dvc repro` calls it up to date. So every field of the schema is written
    in params.yaml and in each profile (which is copied over it); a new field must be added there too."""
    raw = yaml.safe_load((repo_root / path).read_text())
    assert _unspelled_keys(Params, raw) == [], f"{path} leaves these schema keys to code defaults"


def test_ssim_defaults_equal_params_yaml(repo_root):
    from_file = load_params(repo_root / "params.yaml").ssim
    assert SsimParams().model_dump() == from_file.model_dump()


def test_registration_is_on_by_default():
    assert SsimParams().align == "auto"
    assert Params().ssim.min_threshold == 0.3 and Params().ssim.normalize is True


def test_repository_profiles_are_valid(repo_root):
    load_params(repo_root / "params.yaml")
    for profile in sorted((repo_root / "profiles").glob("*.yaml")):
        params_from_dict(yaml.safe_load(profile.read_text()))


def test_paper_profile_keeps_the_papers_recipe(repo_root):
    """profiles/paper.yaml is copied over params.yaml as is; a key it leaves out takes the built-in
    (embedded) default, so the paper's model and schedule are spelled out in it."""
    paper = params_from_dict(yaml.safe_load((repo_root / "profiles/paper.yaml").read_text()))
    assert paper.model.backbone == "resnet50" and paper.model.image_size == 256
    assert paper.model.decoder_channels == (256, 256, 128, 128, 64)
    assert paper.model.attention_scale == "none" and paper.model.attention_init == "independent"
    assert paper.model.attention_fusion == "concat"
    t = paper.train
    assert (t.lr, t.lr_schedule, t.max_steps, t.max_epochs, t.monitor) == (1e-4, "constant", -1, 200, "val/loss")
    assert (t.warmup_steps, t.val_every_n_steps, t.affine_start_step, t.affine_ramp_steps) == (0, 0, 0, 0)
    pairs = paper.pairs  # the paper's COCO recipe: inpainted and pasted pairs only
    assert (pairs.text_fraction, pairs.parallax_fraction, pairs.relight_fraction) == (0, 0, 0)


def test_missing_and_broken_params_files(tmp_path):
    with pytest.raises(SpotdiffError, match="params file not found"):
        load_params(tmp_path / "nope.yaml")
    broken = tmp_path / "broken.yaml"
    broken.write_text("data: [unclosed\n")
    with pytest.raises(SpotdiffError, match="not valid YAML"):
        load_params(broken)


# ---------------------------------------------------------------- one-line errors


def test_unknown_keys_are_named_with_the_known_ones():
    assert _error({"datum": {}}) == (
        "params.yaml: unknown key datum (known: data, evaluate, inpaint, mlflow, model, pairs, register, "
        "ssim, testsets, train); fix the spelling or remove it")
    assert _error({"train": {"lrr": 1}}).startswith("params.yaml: unknown key train.lrr (known: accelerator, ")
    assert _error({"data": {"coco": {"max_image": 3}}}).startswith("params.yaml: unknown key data.coco.max_image")
    # a typo is named before a bad value next to it
    assert "unknown key train.lrr" in _error({"train": {"lr": -1, "lrr": 1}})


def test_out_of_bounds_messages():
    assert _error({"train": {"lr": -1}}) == "params.yaml: train.lr must be in (0, 10] (got -1); fix the value and rerun"
    assert _error({"pairs": {"val_fraction": 1.0}}) == (
        "params.yaml: pairs.val_fraction must be in (0, 1) (got 1.0); fix the value and rerun")
    assert "inpaint.max_versions must be in [1, 8] (got 9)" in _error({"inpaint": {"max_versions": 9}})
    assert "ssim.group_gap must be in [0, 0.5) (got 0.5)" in _error({"ssim": {"group_gap": 0.5}})
    assert "pairs.augment.work_scale must be 0 (off) or >= 1" in _error({"pairs": {"augment": {"work_scale": 0.5}}})
    assert "model.image_size must be a multiple of 32 in [64, 1024] (got 80)" in _error({"model": {"image_size": 80}})
    # cross-field rules name the key to fix, with its section
    assert "data.max_objects must be >= min_objects (got 2)" in _error({"data": {"min_objects": 4, "max_objects": 2}})
    assert "data.coco.max_objects_per_image must be >= min_objects_per_image" in _error(
        {"data": {"coco": {"min_objects_per_image": 4, "max_objects_per_image": 2}}})
    assert "pairs.augment.scale_min must be > 0 and <= scale_max" in _error(
        {"pairs": {"augment": {"scale_min": 2.0}}})
    assert "testsets.official_base_url must be set" in _error({"testsets": {"source": "official"}})


def test_params_reject_unvalidated_last_step():
    with pytest.raises(SpotdiffError, match="train.max_steps must be a multiple of val_every_n_steps"):
        params_from_dict({"train": {"max_steps": 25, "val_every_n_steps": 10}})
    params_from_dict({"train": {"max_steps": 30, "val_every_n_steps": 10}})


def test_params_decoder_channels_are_five_positive_integers():
    assert params_from_dict({"model": {"decoder_channels": [128, 128, 64, 64, 32]}}).model.decoder_channels == (
        128, 128, 64, 64, 32)
    for bad in ([128, 64], [128, 128, 64, 64, 0], [128, 128, 64, 64, 1025], [128, 128, 64, 64, 32.0],
                [128, 128, 64, 64, True]):
        assert "model.decoder_channels must be 5 integers in [1, 1024]" in _error({"model": {"decoder_channels": bad}})
    assert "model.decoder_channels must be a list (got 'wide')" in _error({"model": {"decoder_channels": "wide"}})


def test_ssim_bounds():
    with pytest.raises(SpotdiffError, match="ssim.min_threshold"):
        params_from_dict({"ssim": {"min_threshold": 3.0}})


@pytest.mark.parametrize("raw, rule", [
    ({"data": {"seed": True}}, "data.seed must be an integer (got True)"),
    ({"data": {"num_images": 3.0}}, "data.num_images must be an integer (got 3.0)"),
    ({"data": {"num_images": "12"}}, "data.num_images must be an integer (got '12')"),
    ({"train": {"lr": "1e-3"}}, "train.lr must be a number (got '1e-3')"),
    ({"train": {"lr": True}}, "train.lr must be a number (got True)"),
    ({"model": {"scse": 1}}, "model.scse must be true or false (got 1)"),
    ({"model": {"scse": "yes"}}, "model.scse must be true or false (got 'yes')"),
    ({"mlflow": {"experiment": 5}}, "mlflow.experiment must be a string (got 5)"),
    ({"register": {"model_name": ""}}, "register.model_name must be a non-empty name (got '')"),
    ({"evaluate": {"methods": "cyws"}}, "evaluate.methods must be a list (got 'cyws')"),
    ({"evaluate": {"methods": ["ssim", "ssim"]}}, "evaluate.methods must be without repeats"),
    ({"model": {"backbone": "vgg16"}}, "model.backbone must be one of resnet50, resnet18, mobilenet_v2, efficientnet_lite0 (got 'vgg16')"),
    ({"evaluate": {"engine": "tensorrt"}}, "evaluate.engine must be one of auto, eager, onnxruntime"),
    ({"train": {"devices": True}}, "train.devices must be 'auto' or an integer in [1, 1024] (got True)"),
    ({"ssim": {"threshold": True}}, "ssim.threshold must be 'otsu' or a number in (0, 2] (got True)"),
    ({"train": 5}, "params.yaml: train must be a mapping (got 5)"),
    ({"data": {"coco": [1]}}, "params.yaml: data.coco must be a mapping (got [1])"),
])
def test_wrong_types_are_refused_as_strictly_as_yaml_reads(raw, rule):
    message = _error(raw)
    assert rule in message and message.startswith("params.yaml: ")


def test_top_level_must_be_a_mapping():
    with pytest.raises(SpotdiffError, match="the top level must be a mapping of sections"):
        params_from_dict([{"train": {}}])


def test_numbers_keep_their_yaml_meaning():
    p = params_from_dict({"train": {"lr": 1, "devices": "auto"}, "ssim": {"threshold": 1},
                          "pairs": {"p_inpainted": 1}})
    assert p.train.lr == 1.0 and type(p.train.lr) is float  # an integer for a number key: a float
    assert p.pairs.p_inpainted == 1.0 and type(p.pairs.p_inpainted) is float
    assert p.ssim.threshold == 1 and type(p.ssim.threshold) is int  # kept as given (reports show it)
    assert p.train.devices == "auto"


def test_keywords_and_model_validate_give_the_same_one_line_errors():
    """Building a section in code (keywords, model_validate) is checked and reported like a file."""
    cases = [
        (lambda: TrainParams(lr=-1), "params.yaml: train.lr must be in (0, 10] (got -1); fix the value and rerun"),
        (lambda: SsimParams.model_validate({"align": "affine"}), "ssim.align must be one of none, homography, auto"),
        (lambda: DataParams(min_objects=4, max_objects=2), "data.max_objects must be >= min_objects"),
        (lambda: AugmentParams(jitter=0.9), "pairs.augment.jitter must be in [0, 0.5] (got 0.9)"),
        (lambda: EvaluateParams(engine="tensorrt"), "evaluate.engine must be one of"),
        (lambda: Params(train={"lr": "fast"}), "train.lr must be a number (got 'fast')"),
        (lambda: ModelParams(colour="red"), "unknown key model.colour"),
    ]
    for build, fragment in cases:
        with pytest.raises(SpotdiffError) as info:
            build()
        assert fragment in str(info.value) and len(str(info.value).splitlines()) == 1
        assert not isinstance(info.value, pydantic.ValidationError)


def test_validate_rechecks_a_copy_made_without_validation():
    fine = SsimParams()
    fine.validate("ssim")
    Params().validate()
    bad = fine.model_copy(update={"sigma": -1.0})  # model_copy does not validate
    with pytest.raises(SpotdiffError, match=r"ssim.sigma must be in \(0, 50\] \(got -1.0\)"):
        bad.validate("ssim")


# ---------------------------------------------------------------- frozen values, dumps


def test_sections_are_frozen_hashable_and_picklable():
    p = Params()
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        p.train.lr = 0.5
    with pytest.raises(pydantic.ValidationError, match="frozen"):
        p.train = TrainParams()
    assert hash(p) == hash(Params()) and pickle.loads(pickle.dumps(p)) == p
    assert Params(mlflow={"experiment": "x"}).mlflow.experiment == "x"


def test_dumps_keep_their_key_order_and_types(repo_root):
    """Section dumps go into files DVC hashes (pairs' manifest.json, inpaint's run file) and into detect
    reports: same keys, same order, tuples for list keys, floats for number keys."""
    p = load_params(repo_root / "params.yaml")
    assert json.dumps(p.pairs.model_dump(exclude={"augment"})) == (
        '{"seed": 0, "p_inpainted": 0.5, "val_fraction": 0.1, "pairs_per_image": 4, "preview_count": 8, '
        '"text_fraction": 0.15, "parallax_fraction": 0.15, "relight_fraction": 0.2}')
    assert list(p.inpaint.model_dump()) == ["backend", "seed", "max_versions", "dilate_px", "opencv_method",
                                            "opencv_radius", "lama_checkpoint", "batch_size", "device",
                                            "devices", "num_nodes"]  # the run file leaves out the last four
    assert p.model.model_dump()["decoder_channels"] == (64, 64, 32, 32, 16)
    assert p.evaluate.model_dump()["methods"] == ("cyws", "ssim")
    flat = to_flat_dict(p)
    assert flat["model.decoder_channels"] == (64, 64, 32, 32, 16) and flat["data.coco.max_images"] == 60000
    assert list(flat)[:3] == ["data.source", "data.seed", "data.num_images"]


# ---------------------------------------------------------------- one set of model limits


def test_model_in_code_has_the_schemas_limits():
    import torch

    from spotdiff.models import coattention, official
    from spotdiff.models.cyws import CYWS
    from spotdiff.models.encoder import STAGE_CHANNELS
    from spotdiff.params import ATTENTION_SCALES, BACKBONES, REFERENCE_DECODER_CHANNELS

    assert set(STAGE_CHANNELS) == set(BACKBONES) and coattention.ATTENTION_SCALES is ATTENTION_SCALES
    for bad in ({"image_size": 32}, {"image_size": 96 + 16}, {"max_boxes": 1001}, {"attention_layers": 4},
                {"decoder_channels": (4097, 256, 128, 128, 64)}):
        with pytest.raises(SpotdiffError, match=f"model.{next(iter(bad))}"):
            ModelParams(**bad)
        with pytest.raises(SpotdiffError, match=f"model.{next(iter(bad))}"):
            CYWS(backbone="resnet18", **{"image_size": 64, **bad})
    # the authors' checkpoint and our older checkpoints are rebuilt with the reference settings, never
    # with ModelParams' (the embedded recipe's) defaults
    assert official.REFERENCE_SETTINGS["decoder_channels"] == REFERENCE_DECODER_CHANNELS
    assert official.REFERENCE_SETTINGS["attention_scale"] == "none"
    assert official.REFERENCE_SETTINGS["attention_init"] == "independent"
    assert official.REFERENCE_SETTINGS["attention_fusion"] == "concat"
    with torch.device("meta"):
        legacy = CYWS.from_params({"backbone": "resnet18"})  # a checkpoint saved before these keys existed
    assert legacy.config["decoder_channels"] == list(REFERENCE_DECODER_CHANNELS)
    assert legacy.config["attention_scale"] == "none" and legacy.config["image_size"] == 256


# ---------------------------------------------------------------- the CLI


@pytest.mark.parametrize("data, fragment", [
    ({"num_images": -3}, "data.num_images must be in (0, 10000000]"),
    ({"source": "flickr"}, "data.source must be one of embedded, coco2017"),
    ({"num_imagez": 3}, "unknown key data.num_imagez"),
    ({"num_images": "many"}, "data.num_images must be an integer"),
    ({"min_objects": 4, "max_objects": 2}, "data.max_objects must be >= min_objects"),
])
def test_bad_params_give_one_clear_line_and_exit_2(tmp_path, capsys, data, fragment):
    params = _write_params(tmp_path / "params.yaml", {"data": data})
    code = main(["data", "--params", str(params), "--out", str(tmp_path / "out")])
    err = capsys.readouterr().err.strip()
    assert code == 2
    assert fragment in err
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize("raw, start", [
    ({"data": {"num_images": -1}}, "spotdiff: error: params.yaml: data.num_images must be in (0, 10000000] (got -1)"),
    ({"data": {"num_imagez": 3}}, "spotdiff: error: params.yaml: unknown key data.num_imagez (known: "),
    ({"train": {"lr": "fast"}}, "spotdiff: error: params.yaml: train.lr must be a number (got 'fast')"),
    ({"model": 3}, "spotdiff: error: params.yaml: model must be a mapping (got 3)"),
])
def test_bad_params_from_the_console_script(tmp_path, spotdiff_bin, raw, start):
    params = _write_params(tmp_path / "bad.yaml", raw)
    proc = subprocess.run([spotdiff_bin, "data", "--params", str(params), "--out", str(tmp_path / "x")],
                          capture_output=True, text=True, check=False, cwd=tmp_path)
    assert proc.returncode == 2
    start = start.replace("params.yaml: ", f"{params}: ")  # the message names the file given
    assert proc.stderr.startswith(start) and len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "pydantic" not in proc.stderr
    assert not (tmp_path / "x").exists()


def test_an_error_names_the_file_it_came_from(tmp_path):
    """`--params other.yaml` with a bad value: the one line names other.yaml, not params.yaml."""
    bad = tmp_path / "other.yaml"
    bad.write_text("train:\n  lr: -1\n")
    with pytest.raises(SpotdiffError) as info:
        load_params(bad)
    assert str(info.value).startswith(f"{bad}: train.lr must be in (0, 10]")
    (tmp_path / "params.yaml").write_text("train:\n  lr: -1\n")
    with pytest.raises(SpotdiffError, match=r"^params\.yaml: train\.lr must be in \(0, 10\]"):
        load_params(tmp_path / "params.yaml")
