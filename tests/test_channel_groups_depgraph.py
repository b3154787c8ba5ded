"""The built-in architectures' hand-declared channel groups against Torch-Pruning's DepGraph, an independent tracer.

For every unit group we declare (producer layer and every tensor it indexes),
DepGraph, traced through encode (both heads) and decode, must couple exactly
the same layers in the same direction (output or input channels).
"""

from __future__ import annotations

from typing import Any

import pytest
import torch
from torch import nn

from vae_automl.builtin.architectures import ConvArchitecture, MLPArchitecture
from vae_automl.layers import LAYER_TYPES

tp = pytest.importorskip("torch_pruning")


def _vae_forward(model: Any, x: torch.Tensor) -> torch.Tensor:
    mu, logvar = model.encode(x)  # both heads must be in the traced graph
    return model.decode(mu + torch.exp(0.5 * logvar))


def _ours(model: Any, group: Any) -> set[tuple[str, str]]:
    modules = dict(model.named_modules())
    out = set()
    for tensor, dim, _ in group.slices:
        name = tensor.rsplit(".", 1)[0]
        if tensor.endswith(".bias"):
            continue
        transposed = isinstance(modules[name], nn.ConvTranspose2d)
        out.add((name, "out" if (dim == 0) != transposed else "in"))
    return out


def _depgraph(model: Any, graph: Any, producer: str) -> set[tuple[str, str]]:
    modules = dict(model.named_modules())
    names = {id(m): n for n, m in modules.items()}
    layer = modules[producer]
    # Torch-Pruning's conv pruner handles transposed convs too (it knows their in x out weight layout).
    fn = tp.prune_conv_out_channels if isinstance(layer, (nn.Conv2d, nn.ConvTranspose2d)) else tp.prune_linear_out_channels
    group = graph.get_pruning_group(layer, fn, idxs=[0])
    out = set()
    for item in group:
        module = item.dep.target.module
        if isinstance(module, LAYER_TYPES):
            out.add((names[id(module)], "out" if "out" in item.dep.handler.__name__ else "in"))
    return out


@pytest.mark.parametrize(("arch", "params"), [
    (MLPArchitecture(), {"hidden_layers": 2, "hidden_width": 16, "latent_dim": 3}),
    (ConvArchitecture(), {"blocks": 2, "base_channels": 4, "latent_dim": 3}),
    (ConvArchitecture(), {"blocks": 3, "base_channels": 2, "latent_dim": 2}),
], ids=["mlp", "conv2", "conv3"])
def test_declared_groups_match_depgraph(arch: Any, params: dict[str, Any]) -> None:
    model = arch.build(arch.config_from_params(arch.resolve_params(params), (1, 8, 8))).eval()
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.rand(2, 1, 8, 8), forward_fn=_vae_forward)
    groups = arch.channel_groups(model, include_latent=True)
    assert groups, "no channel group declared: nothing below would be compared"
    for group in groups:
        producer = group.producer[0].rsplit(".", 1)[0]
        ours = _ours(model, group)
        assert (producer, "out") in ours
        assert _depgraph(model, graph, producer) == ours, f"{arch.name}: group of {producer}"
