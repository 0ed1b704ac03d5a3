"""The two networks: a heatmap landmark detector (permissively licensed, no ultralytics) and a torchvision
ResNet that grades each level's crop."""

from __future__ import annotations

import torch
import torch.nn as nn
import torch.nn.functional as F
import torchvision

from ai.labels import LEVELS

N_LEVELS = len(LEVELS)
HEATMAP_STRIDE = 4
CROP_SIZE = 64
CROP_SPACINGS = 4.0  # crop side, in local level spacings
# Grader logits: vertebra (v1, v2) | disc main (v1..v4) | Schmorl's node (v5, one logit)
VERT = slice(0, 2)
DISC = slice(2, 6)
V5 = 6
N_GRADES = 7
# A grader trained on SPIDER too has these after the Tianchi ones (discs only): herniation, bulging (one logit
# each), Pfirrmann grade 1..5 (softmax), then one logit per finding in SPIDER_FINDINGS.
HERNIATION = 7
BULGING = 8
PFIRRMANN = slice(9, 14)
SPIDER_FINDINGS = ("modic", "up_endplate", "low_endplate", "narrowing", "spondylolisthesis")
FINDINGS = slice(14, 14 + len(SPIDER_FINDINGS))
N_GRADES_BOTH = FINDINGS.stop


def _conv(cin: int, cout: int, stride: int = 1) -> nn.Sequential:
    return nn.Sequential(nn.Conv2d(cin, cout, 3, stride, 1, bias=False), nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class _Block(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.a = _conv(cin, cout, stride)
        self.b = nn.Sequential(nn.Conv2d(cout, cout, 3, 1, 1, bias=False), nn.BatchNorm2d(cout))
        self.skip = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.b(self.a(x)) + self.skip(x))


class LandmarkNet(nn.Module):
    """Encoder to stride 32 (the whole lumbar spine in view, so it can count levels) and an FPN decoder back to
    stride 4; one spatial-softmax heatmap per level."""

    def __init__(self, width: int = 24) -> None:
        super().__init__()
        w = width
        chans = [w, 2 * w, 4 * w, 6 * w, 8 * w]
        self.stem = nn.Sequential(_conv(1, w, 2), _conv(w, w))  # /2
        self.s1 = nn.Sequential(_Block(chans[0], chans[1], 2), _Block(chans[1], chans[1], 1))  # /4
        self.s2 = nn.Sequential(_Block(chans[1], chans[2], 2), _Block(chans[2], chans[2], 1))  # /8
        self.s3 = nn.Sequential(_Block(chans[2], chans[3], 2), _Block(chans[3], chans[3], 1))  # /16
        self.s4 = nn.Sequential(_Block(chans[3], chans[4], 2), _Block(chans[4], chans[4], 1))  # /32
        d = 4 * w
        self.lat = nn.ModuleList([nn.Conv2d(c, d, 1) for c in chans[1:]])
        self.smooth = nn.ModuleList([_conv(d, d) for _ in range(3)])
        self.head = nn.Sequential(_conv(d, d), nn.Conv2d(d, N_LEVELS, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        f1 = self.s1(self.stem(x))
        f2 = self.s2(f1)
        f3 = self.s3(f2)
        f4 = self.s4(f3)
        p = self.lat[3](f4)
        for lat, smooth, f in zip(self.lat[2::-1], self.smooth, (f3, f2, f1), strict=True):
            p = smooth(lat(f) + F.interpolate(p, size=f.shape[-2:], mode="nearest"))
        return self.head(p)  # (N, 11, H/4, W/4) logits


def decode_heatmaps(logits: torch.Tensor, window: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    """(N, 11, h, w) logits -> (N, 11, 2) xy in input pixels and (N, 11) confidence.

    Sub-cell position: probability-weighted centroid in a small window around the peak."""
    n, k, h, w = logits.shape
    prob = logits.flatten(2).softmax(-1).view(n, k, h, w)
    flat = prob.flatten(2).argmax(-1)
    py, px = (flat // w).float(), (flat % w).float()
    ys = torch.arange(h, dtype=prob.dtype).view(1, 1, h, 1)
    xs = torch.arange(w, dtype=prob.dtype).view(1, 1, 1, w)
    near = ((ys - py[..., None, None]).abs() <= window) & ((xs - px[..., None, None]).abs() <= window)
    local = prob * near
    mass = local.flatten(2).sum(-1).clamp_min(1e-9)
    cx = (local * xs).flatten(2).sum(-1) / mass
    cy = (local * ys).flatten(2).sum(-1) / mass
    xy = torch.stack([cx, cy], -1) * HEATMAP_STRIDE + (HEATMAP_STRIDE - 1) / 2
    return xy, mass


class Grader(nn.Module):
    """torchvision ResNet (weights=None, one input channel) on a level crop, plus which level it is.
    resnet18 for the default model; resnet50 is the seed report's choice. outputs: N_GRADES (Tianchi heads) or
    N_GRADES_BOTH (Tianchi and SPIDER heads on one backbone)."""

    def __init__(self, arch: str = "resnet18", outputs: int = N_GRADES) -> None:
        super().__init__()
        if outputs not in (N_GRADES, N_GRADES_BOTH):
            raise ValueError(f"a grader has {N_GRADES} or {N_GRADES_BOTH} outputs, not {outputs}")
        if arch not in ("resnet18", "resnet50"):
            raise ValueError(f"unknown grader architecture {arch!r}")
        net = getattr(torchvision.models, arch)(weights=None)
        net.conv1 = nn.Conv2d(1, 64, 7, 2, 3, bias=False)
        feats = net.fc.in_features
        net.fc = nn.Identity()
        self.backbone = net
        self.head = nn.Sequential(nn.Dropout(0.3), nn.Linear(feats + N_LEVELS, outputs))

    def forward(self, crops: torch.Tensor, level: torch.Tensor) -> torch.Tensor:
        feats = self.backbone(crops)
        return self.head(torch.cat([feats, F.one_hot(level, N_LEVELS).float()], 1))
