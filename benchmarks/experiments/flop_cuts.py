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
(1.33×): 8 % for 20 % of the FLOPs — the full-resolution maps (64 channels at 256²) are
memory-bound. Too little to justify a second exported graph and a second decoder; kept here so the
figure can be re-measured.

    PYTHONPATH=src .venv/bin/python benchmarks/experiments/flop_cuts.py
"""
from __future__ import annotations

import os
import statistics
import time

import onnxruntime as ort
import torch
import torch.nn.functional as F
from torch import nn

from spotdiff.methods.engines import detections_agree, make_engine, run_decoded, spread_head_outputs
from spotdiff.models.cyws import CYWS

torch.set_num_threads(2)

def fold_bn(conv, bn):
    s = bn.weight / torch.sqrt(bn.running_var + bn.eps)
    w = conv.weight * s.view(-1,1,1,1)
    b = bn.bias - bn.running_mean * s
    return w, b

class PolyUpConv(nn.Module):
    """nearest x2 upsample then conv3x3(pad 1)+BN+ReLU == 4 phase 2x2 convs at low res + pixel shuffle"""
    def __init__(self, seq):
        super().__init__()
        w, b = fold_bn(seq[0], seq[1])
        O = w.shape[0]
        ks = []
        for ry in (0,1):
            for rx in (0,1):
                # rows: ry=0 -> taps (i-1: W0), (i: W1+W2); ry=1 -> (i: W0+W1), (i+1: W2)
                def comb(wt, r, dim):
                    a = wt.narrow(dim,0,1); m = wt.narrow(dim,1,1); c = wt.narrow(dim,2,1)
                    return torch.cat([a, m + c], dim) if r == 0 else torch.cat([a + m, c], dim)
                k = comb(comb(w, ry, 2), rx, 3)  # O x C x 2 x 2
                ks.append(k)
        # channel order for pixel_shuffle: o*4 + ry*2 + rx
        self.weights = nn.ParameterList([nn.Parameter(k.detach().clone(), requires_grad=False) for k in ks])
        self.bias = nn.Parameter(b.detach().clone(), requires_grad=False)
    def forward(self, x):
        H, W = x.shape[2:]
        xp = F.pad(x, (1,1,1,1))
        outs = []
        i = 0
        for ry in (0,1):
            for rx in (0,1):
                outs.append(F.conv2d(xp[:, :, ry:ry+H+1, rx:rx+W+1], self.weights[i], self.bias))
                i += 1
        y = torch.stack(outs, 2)  # B O 4 H W
        B, O = y.shape[:2]
        y = y.view(B, O*4, H, W)
        return F.relu(F.pixel_shuffle(y, 2))

class Fast(nn.Module):
    def __init__(self, m):
        super().__init__()
        self.m = m
        last = m.decoder.blocks[-1]
        self.poly = PolyUpConv(last.conv1)
    def forward(self, a, b):
        m = self.m
        bsz = a.shape[0]
        x = torch.cat([a, b], 0)
        if m.normalize_input:
            x = (x - m.mean) / m.std
        feats = m.encoder(x)
        for lvl, mod in zip(m.attention_levels, m.attention):
            oa, ob, _, _ = mod(feats[lvl][:bsz], feats[lvl][bsz:], return_attention=True)
            feats[lvl] = torch.cat([oa, ob], 0)
        fs = list(feats)[::-1]
        y = fs[0]
        blocks = m.decoder.blocks
        for blk, skip in zip(blocks[:-1], fs[1:]):
            y = blk(y, skip)
        last = blocks[-1]
        y = last.conv2(self.poly(y))
        heat = m.head.heatmap(y)
        return heat, y

def sparse_decode(model, heat_logits, feat, k=100):
    heat = heat_logits.float().sigmoid()
    bsz, _, h, w = heat.shape
    peaks = F.max_pool2d(heat, 3, stride=1, padding=1)
    heat = heat * (peaks == heat)
    scores, idx = heat.flatten(1).topk(k, dim=1)
    ys = torch.div(idx, w, rounding_mode="floor"); xs = idx % w
    fp = F.pad(feat, (1,1,1,1))
    C = feat.shape[1]
    # gather 3x3 patches: B x k x C x 3 x 3
    dy = torch.arange(3).view(1,1,3,1); dx = torch.arange(3).view(1,1,1,3)
    rows = ys.view(bsz,k,1,1) + dy; cols = xs.view(bsz,k,1,1) + dx
    flat = (rows * (w+2) + cols).view(bsz, 1, k*9).expand(-1, C, -1)
    patches = fp.flatten(2).gather(2, flat).view(bsz, C, k, 3, 3).permute(0,2,1,3,4).reshape(bsz*k, C, 3, 3)
    res = {}
    for key in ("size", "offset"):
        br = getattr(model.head, key)
        hdn = F.relu(F.conv2d(patches, br[0].weight, br[0].bias))  # (B*k) x hidden x1x1
        o = F.conv2d(hdn, br[2].weight, br[2].bias).view(bsz, k, -1).permute(0,2,1)
        res[key] = o
    size = res["size"].clamp(min=0); off = res["offset"]
    cx, cy = xs.float() + off[:,0], ys.float() + off[:,1]
    boxes = torch.stack([cx - size[:,0]/2, cy - size[:,1]/2, cx + size[:,0]/2, cy + size[:,1]/2], 2)
    boxes[...,0::2] = boxes[...,0::2].clamp(0,w); boxes[...,1::2] = boxes[...,1::2].clamp(0,h)
    keep = scores > 0
    return [(boxes[i][keep[i]], scores[i][keep[i]]) for i in range(bsz)]


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
    fast = Fast(m).eval()
    from torch.utils.flop_counter import FlopCounterMode

    for name, net in (("model", m), ("with both cuts", fast)):
        fc = FlopCounterMode(display=False)
        with torch.no_grad(), fc:
            net(a, b)
        print(f"GFLOP per pair, {name}: {fc.get_total_flops() / 1e9:.1f}")
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "fast.onnx")
        torch.onnx.export(fast, (torch.rand(2, 3, 256, 256), torch.rand(2, 3, 256, 256)), path, dynamo=False,
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
