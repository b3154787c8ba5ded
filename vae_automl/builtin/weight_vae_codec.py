"""The ``weight_vae`` storage codec: a model's weights as ANS-coded chunk latents and the float16 decoder that makes them.

Its own module, without the compressor, so that the registry can collect it (when a model is stored or
loaded) from :func:`vae_automl.builtin.weight_vae.register_codecs` without a cycle.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from vae_automl.errors import ExportError
from vae_automl.storage import ans
from vae_automl.storage.format import SHARED_PREFIX

FP16 = torch.float16


def make_decoder(latent_dim: int, hidden: int, chunk: int) -> nn.Sequential:
    """The chunk decoder ``latent_dim -> hidden -> chunk`` (tanh), or one linear layer when ``hidden`` is 0."""
    if hidden == 0:
        return nn.Sequential(nn.Linear(latent_dim, chunk))
    return nn.Sequential(nn.Linear(latent_dim, hidden), nn.Tanh(), nn.Linear(hidden, chunk))


def decode_chunks(decoder: nn.Module, latents: torch.Tensor, scale: float, shape: tuple[int, ...] | list[int]) -> torch.Tensor:
    """The weight of ``shape`` that ``decoder`` makes from ``latents`` (``n_chunks x latent_dim``, grid values)."""
    return (decoder(latents) * scale).reshape(-1)[: math.prod(shape)].reshape(shape)


@torch.no_grad()
def decode_weight(
    decoder: nn.Module, codes: torch.Tensor, step: float, scale: float, shape: tuple[int, ...] | list[int]
) -> torch.Tensor:
    """The stored weight: integer ``codes`` times ``step`` through the decoder, on the CPU in float32.

    The compressor and the loader both call this, so they agree bit for bit.
    """
    return decode_chunks(decoder.cpu().float(), codes.cpu().to(torch.float32) * step, scale, shape).contiguous()


class WeightVAECodec:
    """Storage of ``weight_vae`` tensors: ANS-coded latents; the decoder with the first tensor that uses it.

    Header spec keys: ``chunk``, ``latent_dim``, ``hidden``, ``step`` and
    ``scale`` (float16-exact floats), ``chunks`` and ``radius`` (rows of
    latents and their largest magnitude), ``amortize_over``, and, on every
    tensor but the decoder's own, ``parts_from``: the tensor whose parts
    hold the decoder. In memory the spec also holds ``codes`` (the ``chunks x latent_dim`` integer latents,
    row-major, as a list) and ``decoder_state`` (parameter name -> nested
    lists of float16-exact floats), so the spec stays plain JSON data.

    Parts: ``""``, the latents, one column per latent unit under its own
    frequencies (:func:`vae_automl.storage.ans.encode_columns`); on the
    decoder's own tensor also ``decoder.<param>`` (float16).
    """

    name = "weight_vae"
    supports_mask = True
    memory_keys = ("codes", "decoder_state")
    decoder_prefix = "decoder."

    @staticmethod
    def codes(spec: dict[str, Any]) -> torch.Tensor:
        """The latents of a spec as an int64 ``chunks x latent_dim`` tensor."""
        return torch.tensor(spec["codes"], dtype=torch.int64).reshape(-1, int(spec["latent_dim"]))

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        codes = self.codes(spec)
        radius = max(1, int(codes.abs().max())) if codes.numel() else 1
        return {**{k: v for k, v in spec.items() if k not in self.memory_keys}, "chunks": int(codes.shape[0]), "radius": radius}

    def full_spec(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        prefix = (SHARED_PREFIX if "parts_from" in header_spec else "") + self.decoder_prefix
        state = {k[len(prefix) :]: t.float().tolist() for k, t in parts.items() if k.startswith(prefix)}
        if not state:
            raise ExportError(f"weight_vae codec: no decoder parts ({prefix}*) for a tensor with spec {header_spec}")
        radius, rows, columns = int(header_spec["radius"]), int(header_spec["chunks"]), int(header_spec["latent_dim"])
        codes = ans.decode_columns(parts[""].numpy(), 2 * radius + 1, rows, columns) - radius
        spec = {k: v for k, v in header_spec.items() if k not in ("chunks", "radius")}
        return {**spec, "codes": codes.flatten().tolist(), "decoder_state": state}

    @staticmethod
    def _decoder(spec: dict[str, Any]) -> nn.Module:
        decoder = make_decoder(int(spec["latent_dim"]), int(spec["hidden"]), int(spec["chunk"]))
        decoder.load_state_dict({k: torch.tensor(v, dtype=torch.float32) for k, v in spec["decoder_state"].items()})
        return decoder

    def decode(self, spec: dict[str, Any], shape: tuple[int, ...] | list[int]) -> torch.Tensor:
        return decode_weight(self._decoder(spec), self.codes(spec), float(spec["step"]), float(spec["scale"]), shape)

    def decode_masked(self, spec: dict[str, Any], shape: tuple[int, ...] | list[int], mask: torch.Tensor | None) -> torch.Tensor:
        decoded = self.decode(spec, shape)
        return decoded if mask is None else torch.where(mask, decoded, torch.zeros((), dtype=decoded.dtype))

    def pack(
        self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None
    ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        if not torch.equal(self.decode_masked(spec, tensor.shape, mask), tensor):
            raise ExportError(
                "weight_vae codec: the weights are not what the decoder makes of their latents; "
                "a compressor changed them after weight_vae"
            )
        radius = self.header_spec(spec)["radius"]
        coded = ans.encode_columns((self.codes(spec) + radius).numpy(), 2 * radius + 1)
        parts = {"": torch.from_numpy(coded.copy())}
        if "parts_from" not in spec:
            parts.update(
                {self.decoder_prefix + k: torch.tensor(v, dtype=torch.float32).to(FP16) for k, v in spec["decoder_state"].items()}
            )
        return parts, {}

    def unpack(
        self,
        parts: dict[str, torch.Tensor],
        meta: dict[str, Any],
        shape: list[int],
        spec: dict[str, Any],
        mask: torch.Tensor | None = None,
    ) -> torch.Tensor:
        return self.decode_masked(spec, shape, mask)

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        parts, _ = self.pack(tensor, spec, mask)
        return 8 * sum(p.numel() * p.element_size() for p in parts.values())


def decoder_bytes(spec: dict[str, Any]) -> int:
    """Bytes of the float16 decoder a ``weight_vae`` spec owns (0 when it takes the decoder from another tensor)."""
    return 0 if "parts_from" in spec else 2 * sum(torch.tensor(v).numel() for v in spec["decoder_state"].values())
