"""int8 graders at run time: rebuilt from the activation ranges stored in a model's model.json.

The graders are most of a study's CPU time after the landmark nets. With int8 weights *and* activations (torch.ao
FX post-training quantization, x86 kernels) a grader's 11 crops take about a third of the time, and on held-out
folds its probabilities are as good (model card). The ranges need real images, which a hospital's node does not
have, so they are measured once on the training slices (`ai.training.quantize`, a training tool) and stored in
the member's model.json (`int8_activation_ranges`); here they rebuild the int8 grader without any data."""

from __future__ import annotations

import warnings
from typing import Any

import torch
import torch.nn as nn

RANGES_KEY = "int8_activation_ranges"
ENGINE = "x86"  # fbgemm + oneDNN kernels; "qnnpack" is the ARM choice


def available() -> bool:
    """The x86 int8 kernels and the torch.ao FX API (deprecated in torch 2.14 in favour of torchao; where a later
    torch drops it, the graders run fp32 and tests/test_quantize.py says so)."""
    try:
        import torch.ao.quantization.quantize_fx  # noqa: F401
    except ImportError:
        return False
    return ENGINE in torch.backends.quantized.supported_engines


def is_int8(net: nn.Module) -> bool:
    return any(type(m).__module__.startswith("torch.ao.nn.quantized") for m in net.modules())


def prepare_observed(net: nn.Module, observer: Any, example: tuple[torch.Tensor, ...]) -> torch.fx.GraphModule:
    with warnings.catch_warnings():  # the torch.ao FX API warns that it is moving to torchao
        warnings.simplefilter("ignore")
        from torch.ao.quantization import QConfig, QConfigMapping
        from torch.ao.quantization.observer import default_per_channel_weight_observer
        from torch.ao.quantization.quantize_fx import prepare_fx

        torch.backends.quantized.engine = ENGINE
        qconfig = QConfig(activation=observer.with_args(reduce_range=True), weight=default_per_channel_weight_observer)
        return prepare_fx(net.eval(), QConfigMapping().set_global(qconfig), example)


def forget_traced_networks() -> None:
    """torch 2.14's FX quantization memoises `assert_and_get_unique_device` with an unbounded functools.cache keyed
    by the module, so every network it traces would stay in memory (a float grader, 43 MB, per int8 grader)."""
    from torch.ao.quantization.fx import utils

    clear = getattr(getattr(utils, "assert_and_get_unique_device", None), "cache_clear", None)
    if clear is not None:
        clear()


def example_inputs(crop_size: int, levels: int = 11) -> tuple[torch.Tensor, torch.Tensor]:
    return torch.zeros(levels, 1, crop_size, crop_size), torch.arange(levels)


def quantized(grader: nn.Module, ranges: dict[str, list[float]], example: tuple[torch.Tensor, ...]) -> nn.Module:
    """The int8 grader from stored ranges; ValueError when they were measured on another network."""
    from torch.ao.quantization.observer import MinMaxObserver
    from torch.ao.quantization.quantize_fx import convert_fx

    try:
        prepared = prepare_observed(grader, MinMaxObserver, example)
        observers = {name: obs for name, obs in prepared.named_modules() if type(obs) is MinMaxObserver}
        if set(observers) != set(ranges):
            raise ValueError(f"stored int8 ranges name {len(ranges)} activations, this network has {len(observers)}")
        for name, obs in observers.items():
            low, high = ranges[name]
            obs.min_val, obs.max_val = torch.tensor(float(low)), torch.tensor(float(high))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = convert_fx(prepared)
        for node in model.graph.nodes:  # observer factories there close over the float modules (43 MB a grader)
            node.meta.pop("target_dtype_info", None)
        return model
    finally:
        forget_traced_networks()
