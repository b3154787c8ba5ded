"""A low-rank (truncated SVD) compressor plugin, as the issue's plugin author wrote it: the contract suite's fixture.

``LowRankCodec`` is complete: the factors ``U`` (m x r) and ``V`` (r x n) are
stored as parts, and only ``{"codec", "rank"}`` goes into the JSON header.
``SpeclessLowRankCodec`` is the broken one: it implements no header/full spec
of its own (it keeps the whole spec, factors included, in the JSON header),
so the file is bigger than dense float32. ``CompressorContract`` must fail on
the broken one and pass on the complete one.
"""

from __future__ import annotations

import copy
from typing import Any

import torch
from torch import nn

from vae_automl.components import CompressionContext, Compressor, Param
from vae_automl.vae import VAE


def factor_product(u: torch.Tensor, v: torch.Tensor, shape: list[int] | torch.Size) -> torch.Tensor:
    """The weight the factors stand for; one function, so the model and the unpacked file agree bit for bit."""
    return (u.float() @ v.float()).reshape(shape)


class LowRankCodec:
    name = "lowrank"
    supports_mask = False

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return {k: v for k, v in spec.items() if k not in ("u", "v")}

    def full_spec(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        return {**header_spec, "u": parts["u"].tolist(), "v": parts["v"].tolist()}

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        u, v = torch.tensor(spec["u"]), torch.tensor(spec["v"])
        if not torch.equal(factor_product(u, v, tensor.shape), tensor):
            raise ValueError("the tensor is not the product of its factors")
        return self._parts(u, v), {}

    def _parts(self, u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {"u": u.contiguous(), "v": v.contiguous()}

    def unpack(self, parts: dict[str, torch.Tensor], meta: dict[str, Any], shape: list[int], spec: dict[str, Any],
               mask: torch.Tensor | None = None) -> torch.Tensor:
        return factor_product(torch.tensor(spec["u"]), torch.tensor(spec["v"]), shape)

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        return 32 * self.stored_values(tensor, spec)

    def stored_values(self, tensor: torch.Tensor, spec: dict[str, Any]) -> int:
        rank = int(spec["rank"])
        return rank * (tensor.shape[0] + tensor[0].numel())


class SpeclessLowRankCodec(LowRankCodec):
    """The author's first version: no spec of its own, so the factors ride in the JSON header."""

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return spec

    def full_spec(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        return header_spec

    def _parts(self, u: torch.Tensor, v: torch.Tensor) -> dict[str, torch.Tensor]:
        return {}


class LowRankCompressor(Compressor):
    name = "lowrank"
    stage = "prune"
    gives = "codec:lowrank"
    help = "truncated SVD of each Linear weight (rank_ratio of its full rank), then fine-tuning-free"
    params = (Param("rank_ratio", "float", 0.25, minimum=0.01, maximum=1.0, help="kept rank / full rank"),)

    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        values = self.resolve_params(params)
        out = copy.deepcopy(model)
        with torch.no_grad():
            for name, module in out.named_modules():
                if not isinstance(module, nn.Linear) or min(module.weight.shape) < 4:
                    continue
                w = module.weight.detach().float().cpu()
                rank = max(1, round(min(w.shape) * values["rank_ratio"]))
                u_full, s, vh = torch.linalg.svd(w, full_matrices=False)
                u, v = (u_full[:, :rank] * s[:rank]).contiguous(), vh[:rank].contiguous()
                module.weight.copy_(factor_product(u, v, w.shape))
                out.encodings[f"{name}.weight"] = {"codec": "lowrank", "rank": rank, "u": u.tolist(), "v": v.tolist()}
        return out
