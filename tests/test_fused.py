"""The networks as inference runs them (BatchNorm folded, channels-last) compute what the trained ones do."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
import torch.nn as nn

from ai.infer import Member, for_inference
from ai.models import Grader, LandmarkNet


def _trained_looking(net: nn.Module) -> nn.Module:
    """Fresh BatchNorm layers are the identity (mean 0, variance 1), which would fold to nothing: give them the
    kind of statistics training leaves."""
    g = torch.Generator().manual_seed(0)
    for m in net.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g) * 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) * 2 + 0.1)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.randn(n, generator=g) * 0.2)
    return net.eval()


@torch.inference_mode()
def test_landmark_net_folded_gives_the_same_heatmaps_at_any_input_size():
    net = _trained_looking(LandmarkNet(8))
    ref = {s: net(torch.rand(1, 1, s, s, generator=torch.Generator().manual_seed(s))) for s in (128, 192)}
    fast = for_inference(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    for s, want in ref.items():
        got = fast(torch.rand(1, 1, s, s, generator=torch.Generator().manual_seed(s)))
        assert got.shape == want.shape
        assert torch.allclose(got, want, atol=1e-4, rtol=1e-4)


@torch.inference_mode()
def test_grader_folded_gives_the_same_logits():
    net = _trained_looking(Grader())
    crops, level = torch.rand(11, 1, 64, 64, generator=torch.Generator().manual_seed(1)), torch.arange(11)
    want = net(crops, level)
    fast = for_inference(net)
    assert not any(isinstance(m, nn.BatchNorm2d) for m in fast.modules())
    assert torch.allclose(fast(crops, level), want, atol=1e-4, rtol=1e-4)


def test_a_model_loaded_unfused_saves_again_to_the_same_files(tmp_path: Path):
    meta = {"width": 8, "grader_arch": "resnet18"}
    Member(_trained_looking(LandmarkNet(8)), _trained_looking(Grader()), meta, torch.device("cpu")).save(tmp_path / "a")
    Member.load(tmp_path / "a", "cpu", fused=False).save(tmp_path / "b")
    for name in ("landmarks.safetensors", "grader.safetensors"):
        assert (tmp_path / "a" / name).read_bytes() == (tmp_path / "b" / name).read_bytes()
    img = np.random.default_rng(0).random((200, 160), dtype=np.float32)
    fused, plain = Member.load(tmp_path / "b", "cpu"), Member.load(tmp_path / "b", "cpu", fused=False)
    assert np.allclose(fused.locate(img)[0], plain.locate(img)[0], atol=1e-3)
    with pytest.raises(ValueError, match="fused=False"):  # its state dict would not load into the nets again
        fused.save(tmp_path / "c")
    assert not (tmp_path / "c").exists()
