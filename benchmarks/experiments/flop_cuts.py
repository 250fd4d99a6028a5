"""Experiment (not a shipped engine, not run by `make bench`): how much do exact FLOP cuts buy on a CPU?

R50@256 CYWS costs 148.9 GFLOP per pair (torch's flop counter): encoder 21.4, decoder 94.9, head 29.1.
At batch 1 ONNX Runtime runs it at about the machine's fp32 GEMM peak (~180-190 GFLOP/s on the
2-core EPYC; a 2048³ torch matmul measures 182), so an fp32 engine can only go faster by doing less
work. Two cuts keep the outputs (boxes within 0.5 px, scores within 1e-4 of eager):

- the last decoder block's nearest ×2 upsample + 3×3 conv + BN + ReLU computed as four 2×2 "phase"
  convolutions on the low-resolution input and a pixel shuffle (4/9 of that conv's work);
- the size and offset branches of the head evaluated only at the heatmap's top-k peaks (the only
  places the decoder reads them) instead of at every pixel.

Together they remove 20 % of the FLOPs (148.9 → 118.7 GFLOP). Measured on a quiet 2-core machine
(stop 7): eager 0.975 s/pair, ONNX Runtime 0.794 s (1.23×), ONNX Runtime with both cuts 0.731 s
(1.33×); after the review's rewrite onto the model's own forward, again the same boxes and 0.770 vs
0.826 s (7 %): 7-8 % for 20 % of the FLOPs — the full-resolution maps (64 channels at 256²) are
memory-bound. Too little to justify a second exported graph and a second decoder; kept here so the
figure can be re-measured.

    PYTHONPATH=src .venv/bin/python benchmarks/experiments/flop_cuts.py
"""
from __future__ import annotations

import copy
import os
import statistics
import time

import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from spotdiff.methods.engines import detections_agree, make_engine, run_decoded, spread_head_outputs
from spotdiff.models.centernet import decode
from spotdiff.models.cyws import CYWS

torch.set_num_threads(2)

def fold_bn(conv, bn):
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    return conv.weight * s.view(-1, 1, 1, 1), bn.bias - bn.running_mean * s


class PolyUpConv(nn.Module):
    """Nearest ×2 upsample, then conv3x3 (pad 1) + BN + ReLU, as 4 phase 2×2 convs at low res + pixel shuffle."""

    def __init__(self, seq):
        super().__init__()
        w, b = fold_bn(seq[0], seq[1])

        def comb(wt, r, dim):  # rows: r=0 -> taps (i-1: W0), (i: W1+W2); r=1 -> (i: W0+W1), (i+1: W2)
            a, m, c = (wt.narrow(dim, j, 1) for j in range(3))
            return torch.cat([a, m + c], dim) if r == 0 else torch.cat([a + m, c], dim)

        # channel order for pixel_shuffle: o*4 + ry*2 + rx
        self.weights = nn.ParameterList([nn.Parameter(comb(comb(w, ry, 2), rx, 3).detach().clone(), requires_grad=False)
                                         for ry in (0, 1) for rx in (0, 1)])
        self.bias = nn.Parameter(b.detach().clone(), requires_grad=False)

    def forward(self, x):
        h, w = x.shape[2:]
        xp = F.pad(x, (1, 1, 1, 1))
        phases = [F.conv2d(xp[:, :, ry:ry + h + 1, rx:rx + w + 1], self.weights[2 * ry + rx], self.bias)
                  for ry in (0, 1) for rx in (0, 1)]
        y = torch.stack(phases, 2)  # B×O×4×h×w
        return F.relu(F.pixel_shuffle(y.flatten(1, 2), 2))


class PolyLastBlock(nn.Module):
    """The decoder's last block (no skip, no scSE) with its upsample + conv1 as `PolyUpConv`."""

    def __init__(self, block):
        super().__init__()
        self.poly, self.conv2 = PolyUpConv(block.conv1), block.conv2

    def forward(self, x, skip=None):
        return self.conv2(self.poly(x))


class HeatmapAndFeatures(nn.Module):
    """The head's heatmap branch only, plus the features the size/offset branches read at the peaks."""

    def __init__(self, head):
        super().__init__()
        self.heatmap = head.heatmap

    def forward(self, x):
        return {"heatmap": self.heatmap(x), "feat": x}


def with_cuts(model: CYWS) -> CYWS:
    """A copy of `model` whose forward returns {"heatmap", "feat"} per image, with both cuts."""
    fast = copy.deepcopy(model).eval()
    fast.decoder.blocks[-1] = PolyLastBlock(fast.decoder.blocks[-1])
    fast.head = HeatmapAndFeatures(fast.head)
    return fast


class Exported(nn.Module):
    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, a, b):
        out_a, out_b = self.model(a, b)
        return torch.cat([out_a["heatmap"], out_b["heatmap"]]), torch.cat([out_a["feat"], out_b["feat"]])


def sparse_decode(model, heat_logits, feat, k=100):
    """`centernet.decode` with the size/offset branches evaluated only at the top-k peaks it reads."""
    heat = heat_logits.float().sigmoid()
    bsz, _, h, w = heat.shape
    heat = heat * (F.max_pool2d(heat, 3, stride=1, padding=1) == heat)
    idx = heat.flatten(1).topk(k, dim=1).indices  # the places decode gathers from (same ops, same order)
    ys, xs = torch.div(idx, w, rounding_mode="floor"), idx % w
    c = feat.shape[1]
    rows = ys.view(bsz, k, 1, 1) + torch.arange(3).view(1, 1, 3, 1)  # 3×3 patches of the padded features
    cols = xs.view(bsz, k, 1, 1) + torch.arange(3).view(1, 1, 1, 3)
    flat = (rows * (w + 2) + cols).view(bsz, 1, k * 9).expand(-1, c, -1)
    patches = F.pad(feat, (1, 1, 1, 1)).flatten(2).gather(2, flat).view(bsz, c, k, 3, 3)
    patches = patches.permute(0, 2, 1, 3, 4).reshape(bsz * k, c, 3, 3)
    out = {"heatmap": heat_logits}
    for key in ("size", "offset"):
        branch = getattr(model.head, key)
        at_peaks = F.conv2d(F.relu(F.conv2d(patches, branch[0].weight, branch[0].bias)),
                            branch[2].weight, branch[2].bias).view(bsz, k, -1).permute(0, 2, 1)
        full = torch.zeros(bsz, at_peaks.shape[1], h * w)
        full.scatter_(2, idx[:, None, :].expand_as(at_peaks), at_peaks)
        out[key] = full.view(bsz, -1, h, w)
    return decode(out, k)


def main() -> None:
    import tempfile

    torch.manual_seed(0)
    m = CYWS(backbone="resnet50").eval()
    g = torch.Generator().manual_seed(1)
    a = torch.rand(1, 3, 256, 256, generator=g)
    b = a.clone()
    b[:, :, 64:128, 64:128] = torch.rand(1, 3, 64, 64, generator=g)
    with torch.no_grad():
        spread_head_outputs(m, a, b)
    fast = with_cuts(m)
    from torch.utils.flop_counter import FlopCounterMode

    for name, net in (("model", m), ("with both cuts", fast)):
        fc = FlopCounterMode(display=False)
        with torch.no_grad(), fc:
            net(a, b)
        print(f"GFLOP per pair, {name}: {fc.get_total_flops() / 1e9:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fast.onnx")
        torch.onnx.export(Exported(fast), (torch.rand(2, 3, 256, 256), torch.rand(2, 3, 256, 256)), path, dynamo=False,
                          opset_version=18, input_names=["a", "b"], output_names=["heat", "feat"],
                          dynamic_axes={n: {0: "n"} for n in ("a", "b", "heat", "feat")})
        o = ort.SessionOptions()
        o.intra_op_num_threads, o.inter_op_num_threads = 2, 1
        o.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        sess = ort.InferenceSession(path, o, providers=["CPUExecutionProvider"])

        def fast_run(a, b):
            heat, feat = sess.run(None, {"a": a.numpy(), "b": b.numpy()})
            with torch.no_grad():
                d = sparse_decode(m, torch.from_numpy(heat), torch.from_numpy(feat))
            n = a.shape[0]
            return d[:n], d[n:]

        eager = make_engine(m, "eager")
        onnx = make_engine(m, "onnxruntime", folder=tmp)
        ref = run_decoded(eager, a, b, 100)
        print("both cuts vs eager:", [detections_agree(r, g_) for r, g_ in zip(ref, fast_run(a, b))])
        fns = {"eager": lambda: run_decoded(eager, a, b, 100), "onnxruntime": lambda: run_decoded(onnx, a, b, 100),
               "onnxruntime + cuts": lambda: fast_run(a, b)}
        for f in fns.values():
            f()
        ts = {k: [] for k in fns}
        for _ in range(7):  # interleaved rounds
            for k, f in fns.items():
                t = time.perf_counter()
                f()
                ts[k].append(time.perf_counter() - t)
    med = {k: statistics.median(v) for k, v in ts.items()}
    for k, v in med.items():
        print(f"{k:<20} {v:.3f} s/pair  {med['eager'] / v:.2f}x eager")


if __name__ == "__main__":
    main()
