"""The authors' published checkpoint (PyTorch Lightning 1.5.8, R50 / 3×CoAM / scSE) loads as it is.

The real file cannot be downloaded here, so the tests write files in its layout (OFFICIAL_CHECKPOINT.md;
`helpers.models`) from a random-weight model of ours, through the pure key mapping, and check the loaded
model against `reference_forward`: an independent re-implementation of the reference network written
with `torch.nn.functional` on the published-layout state_dict (no module of ours), and
`reference_boxes`, mmdet's `get_bboxes` decode.
"""

from __future__ import annotations

import json
import zipfile
from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from helpers.images import write_image_pair
from helpers.models import lightning_checkpoint, random_reference_model, write_published
from spotdiff.models import official
from spotdiff.models.checkpoint import load_model

SIZE = 128  # test input (R50 at 256 costs ~1 s a forward on the CPU; the wiring is the same)


@pytest.fixture(scope="module")
def published(tmp_path_factory):
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # R50 on a shared CPU: one thread is faster than oversubscribed ones
    model = random_reference_model()
    state = official.to_published(model.state_dict())
    folder = tmp_path_factory.mktemp("published")
    yield {"model": model, "state": state, "file": write_published(folder / official.PUBLISHED_FILE_NAME, state),
           "folder": folder}
    torch.set_num_threads(threads)


# ---------------------------------------------------------------- the reference, independently


def _conv(x, sd, p, stride=1, padding=0):
    return F.conv2d(x, sd[p + ".weight"], sd.get(p + ".bias"), stride=stride, padding=padding)


def _bn(x, sd, p):
    return F.batch_norm(x, sd[p + ".running_mean"], sd[p + ".running_var"], sd[p + ".weight"],
                        sd[p + ".bias"], training=False, eps=1e-5)


def _resnet(x, sd, e="unet_model.encoder."):
    """smp's ResNet encoder: [input, stem, layer1..4] (torchvision Bottleneck: stride on conv2)."""
    feats = [x]
    x = F.relu(_bn(_conv(x, sd, e + "conv1", 2, 3), sd, e + "bn1"))
    feats.append(x)
    x = F.max_pool2d(x, 3, 2, 1)
    for layer in range(1, 5):
        i = 0
        while f"{e}layer{layer}.{i}.conv1.weight" in sd:
            p = f"{e}layer{layer}.{i}."
            stride = 2 if layer > 1 and i == 0 else 1
            out = F.relu(_bn(_conv(x, sd, p + "conv1"), sd, p + "bn1"))
            out = F.relu(_bn(_conv(out, sd, p + "conv2", stride, 1), sd, p + "bn2"))
            out = _bn(_conv(out, sd, p + "conv3"), sd, p + "bn3")
            if p + "downsample.0.weight" in sd:
                x = _bn(_conv(x, sd, p + "downsample.0", stride), sd, p + "downsample.1")
            x = F.relu(out + x)
            i += 1
        feats.append(x)
    return feats


def _coattention(query, reference, sd, p):
    """CYWS CoAttentionLayer: softmax over the reference's positions of Σ_c Q·K, times raw V."""
    q = _conv(query, sd, p + "query_dimensionality_reduction")
    k = _conv(reference, sd, p + "reference_dimensionality_reduction")
    logits = torch.einsum("bcij,bckl->bijkl", q, k)
    b, h, w = logits.shape[:3]
    attention = logits.reshape(b, h, w, -1).softmax(dim=3)
    return torch.einsum("bijp,bcp->bcij", attention, reference.flatten(2))


def _scse(x, sd, p):
    cse = torch.sigmoid(_conv(F.relu(_conv(x.mean(dim=(2, 3), keepdim=True), sd, p + "cSE.1")), sd, p + "cSE.3"))
    return x * cse + x * torch.sigmoid(_conv(x, sd, p + "sSE.0"))


def _decoder(feats, sd, d="unet_model.decoder.blocks."):
    feats = feats[1:][::-1]  # smp UnetDecoder: drop the input, deepest first
    x, skips = feats[0], feats[1:]
    n = 0
    while f"{d}{n}.conv1.0.weight" in sd:
        p = f"{d}{n}."
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if n < len(skips):
            x = torch.cat([x, skips[n]], dim=1)
            if p + "attention1.attention.sSE.0.weight" in sd:
                x = _scse(x, sd, p + "attention1.attention.")
        x = F.relu(_bn(_conv(x, sd, p + "conv1.0", 1, 1), sd, p + "conv1.1"))
        x = F.relu(_bn(_conv(x, sd, p + "conv2.0", 1, 1), sd, p + "conv2.1"))
        if p + "attention2.attention.sSE.0.weight" in sd:
            x = _scse(x, sd, p + "attention2.attention.")
        n += 1
    return x


def _head(f, sd, name):
    p = f"centernet_head.{name}_head."
    return _conv(F.relu(_conv(f, sd, p + "0", 1, 1)), sd, p + "2")


@torch.no_grad()
def reference_forward(sd: dict, image_a: torch.Tensor, image_b: torch.Tensor) -> list[dict]:
    """The reference model's outputs for both images: heatmap (after sigmoid), wh, offset."""
    fa, fb = _resnet(image_a, sd), _resnet(image_b, sd)
    i = 0
    while f"coattention_modules.{i}.attention_layer.query_dimensionality_reduction.weight" in sd:
        level = len(fa) - 1 - i  # module i on the (i+1)-th deepest map
        p = f"coattention_modules.{i}.attention_layer."
        left, right = fa[level], fb[level]
        fa[level] = torch.cat([left, _coattention(left, right, sd, p)], dim=1)
        fb[level] = torch.cat([right, _coattention(right, left, sd, p)], dim=1)
        i += 1
    outs = []
    for feats in (fa, fb):
        f = _decoder(feats, sd)
        outs.append({"heatmap": torch.sigmoid(_head(f, sd, "heatmap")), "wh": _head(f, sd, "wh"),
                     "offset": _head(f, sd, "offset")})
    return outs


def reference_boxes(heatmap, wh, offset, k: int = 100):
    """mmdet CenterNetHead.get_bboxes (rescale=False, with_nms=False): (B×k×4 boxes, B×k scores)."""
    hmax = F.max_pool2d(heatmap, 3, stride=1, padding=1)
    heat = heatmap * (hmax == heatmap).float()
    b, _, h, w = heat.shape
    scores, inds = torch.topk(heat.view(b, -1), k)
    inds = inds % (h * w)
    ys, xs = (inds // w).float(), (inds % w).int().float()
    def gather(t):
        return t.permute(0, 2, 3, 1).reshape(b, -1, 2).gather(1, inds[..., None].expand(-1, -1, 2))
    wh_k, off_k = gather(wh), gather(offset)
    cx, cy = xs + off_k[..., 0], ys + off_k[..., 1]
    boxes = torch.stack([cx - wh_k[..., 0] / 2, cy - wh_k[..., 1] / 2,
                         cx + wh_k[..., 0] / 2, cy + wh_k[..., 1] / 2], dim=-1)
    return boxes, scores, inds


# ---------------------------------------------------------------- the mapping


def test_key_mapping_is_the_published_layout_and_inverts(published):
    ours = published["model"].state_dict()
    theirs = official.to_published(ours)
    assert len(theirs) == 450 and list(official.from_published(theirs)) == list(ours)
    assert all(official.from_published(theirs)[k] is ours[k] for k in ours)
    buffers = ("running_mean", "running_var", "num_batches_tracked")
    params = {k: v for k, v in theirs.items() if not k.endswith(buffers)}
    assert len(params) == 261 and len(theirs) - len(params) == 189
    assert sum(v.numel() for v in params.values()) == 49_500_281
    for prefix, keys, numel in (("unet_model.encoder.", 318, 23_508_032),
                                ("unet_model.decoder.blocks.", 108, 24_503_988),
                                ("coattention_modules.", 12, 1_377_152), ("centernet_head.", 12, 111_109)):
        assert sum(k.startswith(prefix) for k in theirs) == keys, prefix
        assert sum(v.numel() for k, v in params.items() if k.startswith(prefix)) == numel, prefix
    shapes = {k: tuple(v.shape) for k, v in theirs.items()}
    assert shapes["unet_model.decoder.blocks.0.conv1.0.weight"] == (256, 6144, 3, 3)
    assert shapes["unet_model.decoder.blocks.3.attention1.attention.cSE.1.weight"] == (12, 192, 1, 1)
    assert shapes["unet_model.decoder.blocks.3.attention2.attention.sSE.0.weight"] == (1, 128, 1, 1)
    assert shapes["coattention_modules.2.attention_layer.reference_dimensionality_reduction.weight"] == (64, 512, 1, 1)
    assert shapes["centernet_head.wh_head.2.weight"] == (2, 64, 1, 1)
    assert shapes["unet_model.encoder.layer4.0.downsample.1.running_var"] == (2048,)
    assert not any(k.startswith("unet_model.decoder.blocks.4.attention") for k in theirs)
    assert official.spotdiff_key("coattention_modules.1.attention_layer.query_dimensionality_reduction.bias") \
        == "attention.1.query_conv.bias"
    with pytest.raises(KeyError):
        official.spotdiff_key("model.fc.weight")
    with pytest.raises(KeyError):
        official.published_key("head.heatmap_extra.0.weight")


# ---------------------------------------------------------------- the forward


def test_published_file_loads_strictly_and_computes_the_reference_forward(published):
    model = load_model(published["file"])
    assert model.config == {"backbone": "resnet50", "attention": "coam", "attention_layers": 3, "scse": True,
                            "image_size": 256, "pretrained_weights": "", "max_boxes": 100,
                            "attention_scale": "none", "attention_init": "independent",
                            "attention_fusion": "concat", "decoder_channels": [256, 256, 128, 128, 64],
                            "output_stride": 1}
    assert model.normalize_input is False and not model.training
    file_state = torch.load(published["file"], map_location="cpu", weights_only=True)["state_dict"]
    gen = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, SIZE, SIZE, generator=gen)
    b = a.clone()
    b[:, :, 40:80, 50:100] = torch.rand(1, 3, 40, 50, generator=gen)  # a pasted patch
    with torch.no_grad():
        out_a, out_b = model(a, b)
    ref_a, ref_b = reference_forward(file_state, a, b)
    dets = model.predict(a, b, reference=True)
    for ours, ref, [(boxes, scores)] in ((out_a, ref_a, dets[0]), (out_b, ref_b, dets[1])):
        heat = ours["heatmap"].sigmoid()
        assert heat.std() > 1e-3  # not a constant map: the comparison means something
        assert (heat - ref["heatmap"]).abs().max() < 1e-4
        assert (ours["size"] - ref["wh"]).abs().max() < 1e-3
        assert (ours["offset"] - ref["offset"]).abs().max() < 1e-3
        ref_boxes, ref_scores, ref_inds = reference_boxes(ref["heatmap"], ref["wh"], ref["offset"])
        assert boxes.shape == (100, 4) and scores.shape == (100,)
        peaks = (heat * (F.max_pool2d(heat, 3, 1, 1) == heat)).flatten(1).topk(100).indices
        # The same 100 peaks, in the same order except where two scores tie within the forwards'
        # agreement (1e-4): float sums differ by CPU, and such a tie may fall either way.
        assert sorted(peaks[0].tolist()) == sorted(ref_inds[0].tolist())
        where_in_ref = {int(i): k for k, i in enumerate(ref_inds[0])}
        perm = torch.tensor([where_in_ref[int(i)] for i in peaks[0]])
        moved = (perm != torch.arange(len(perm))).nonzero().flatten()
        assert all((ref_scores[0][k] - ref_scores[0][perm[k]]).abs() < 1e-4 for k in moved)
        assert (boxes - ref_boxes[0][perm]).abs().max() < 1e-3
        assert (scores - ref_scores[0]).abs().max() < 1e-4


def test_decode_default_clips_and_drops_zero_scores_reference_does_not():
    from spotdiff.models.centernet import decode

    ys, xs = torch.meshgrid(torch.arange(8.0), torch.arange(8.0), indexing="ij")
    bumps = torch.maximum(3 - 0.5 * ((ys - 1) ** 2 + (xs - 1) ** 2), 1 - 0.5 * ((ys - 6) ** 2 + (xs - 5) ** 2))
    heat = bumps[None, None]  # two strict local maxima: (1, 1) and (6, 5)
    size = torch.full((1, 2, 8, 8), 6.0)
    size[0, :, 6, 5] = -2.0  # a negative size prediction
    out = {"heatmap": heat, "size": size, "offset": torch.zeros(1, 2, 8, 8)}
    (boxes, scores), = decode(out, max_boxes=10, reference=True)
    assert boxes.shape == (10, 4) and scores[:2].gt(0.5).all()
    assert boxes[0].tolist() == [-2.0, -2.0, 4.0, 4.0] and boxes[1].tolist() == [6.0, 7.0, 4.0, 5.0]
    (clipped, kept), = decode(out, max_boxes=10)
    assert scores[2:].eq(0).all() and len(kept) == 2  # only the local maxima
    assert clipped[0].tolist() == [0.0, 0.0, 4.0, 4.0] and clipped[1].tolist() == [5.0, 6.0, 5.0, 6.0]


# ---------------------------------------------------------------- files as found


def test_cuda_tagged_file_loads_on_a_cpu_only_machine(published, tmp_path):
    path = write_published(tmp_path / "gpu.ckpt", published["state"], cuda_tagged=True)
    with zipfile.ZipFile(path) as z:
        pickle_bytes = z.read(next(n for n in z.namelist() if n.endswith("data.pkl")))
    assert b"cuda:0" in pickle_bytes and b"X\x03\x00\x00\x00cpu" not in pickle_bytes
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a plain load does without a GPU
    model = load_model(path)
    assert all(t.device.type == "cpu" for t in model.state_dict().values())
    expected = published["model"].state_dict()
    assert all(torch.equal(v, expected[k]) for k, v in model.state_dict().items())


def test_load_model_always_reads_onto_the_cpu_first(published, monkeypatch):
    seen = []
    real = torch.load

    def spy(*args, **kwargs):
        seen.append((kwargs.get("map_location"), kwargs.get("weights_only")))
        return real(*args, **kwargs)

    monkeypatch.setattr(torch, "load", spy)
    load_model(published["file"], map_location="cpu")
    assert seen == [("cpu", True)]


def _bad_file(case: str, published: dict, folder: Path) -> tuple[Path, str]:
    state = dict(published["state"])
    if case == "truncated":
        data = published["file"].read_bytes()
        (folder / "cut.ckpt").write_bytes(data[: len(data) // 3])
        return folder / "cut.ckpt", "not a readable model checkpoint"
    if case == "missing_key":
        del state["coattention_modules.1.attention_layer.reference_dimensionality_reduction.bias"]
        return write_published(folder / "missing.ckpt", state), \
            "keys 1 missing (coattention_modules.1.attention_layer.reference_dimensionality_reduction.bias)"
    if case == "unexpected_key":
        state["unet_model.segmentation_head.0.weight"] = torch.zeros(1)
        return write_published(folder / "extra.ckpt", state), "1 unexpected (unet_model.segmentation_head.0.weight)"
    if case == "wrong_shape":
        state["centernet_head.wh_head.2.weight"] = torch.zeros(3, 64, 1, 1)
        return write_published(folder / "shape.ckpt", state), \
            "centernet_head.wh_head.2.weight has shape (3, 64, 1, 1), the model needs (2, 64, 1, 1)"
    if case == "other_lightning":
        path = folder / "classifier.ckpt"
        torch.save(lightning_checkpoint({"model.backbone.weight": torch.zeros(2, 2), "model.fc.bias": torch.zeros(2)}),
                   path)
        return path, "a PyTorch Lightning checkpoint (version 1.5.8), but not of the CYWS model"
    if case == "pickled_object":
        path = folder / "object.ckpt"
        torch.save({"pytorch-lightning_version": "1.5.8", "state_dict": {}, "hparams": zipfile.ZipInfo("x")}, path)
        return path, "not a readable model checkpoint"
    raise AssertionError(case)


@pytest.mark.parametrize("case", ["truncated", "missing_key", "unexpected_key", "wrong_shape",
                                  "other_lightning", "pickled_object"])
def test_bad_files_are_one_line_exit_2(published, tmp_path, monkeypatch, capsys, case):
    from spotdiff.cli import main

    path, message = _bad_file(case, published, tmp_path)
    pair = _pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    rc = main(["detect", *map(str, pair), "--method", "cyws", "--model", str(path), "--out", "o"])
    err = capsys.readouterr().err
    assert rc == 2 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert err.startswith(f"spotdiff: error: {path}: ") and message in err, err
    assert not (tmp_path / "o").exists()


# ---------------------------------------------------------------- the user's command


def _pair(folder: Path) -> tuple[Path, Path]:
    return write_image_pair(folder, size=(120, 160), change=(30, 70, 60, 120), value=255)


def test_detect_with_the_published_file(published, tmp_path, monkeypatch, capsys):
    from spotdiff.cli import main

    a, b = _pair(tmp_path)
    monkeypatch.chdir(tmp_path)
    rc = main(["detect", str(a), str(b), "--method", "cyws", "--model", str(published["file"]),
               "--json", "r.json", "--out", "o"])
    assert rc == 0, capsys.readouterr().err
    report = json.loads((tmp_path / "r.json").read_text())
    assert report["model"] == str(published["file"])
    image_a = report["images"][0]
    boxes = np.asarray(image_a["boxes"])
    assert 1 <= len(boxes) <= 100 and len(image_a["scores"]) == len(boxes)
    # detect reports boxes clipped to each image (the reference decode is not clipped)
    assert boxes.min() >= 0 and boxes[:, [0, 2]].max() <= 160 and boxes[:, [1, 3]].max() <= 120


def test_evaluate_reads_the_published_file(published):
    from spotdiff.evaluation.runner import build_detectors
    from spotdiff.params import Params

    detector = build_detectors(Params(), str(published["file"]))["cyws"]
    assert detector.size == 256 and detector.model.config["backbone"] == "resnet50"
