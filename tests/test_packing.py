"""The packed storage format: bit packing, codecs, sparse masks, exact sizes and byte-identical round trips."""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import pytest
import torch

from vae_automl import hookimpl, packing
from vae_automl.builtin.quantization import uniform_grid
from vae_automl.errors import ExportError, PluginError
from vae_automl.registry import get_registry, reset_registry
from vae_automl.storage.codec import Codec
from vae_automl.vae import VAE

SEED_MLP = {"hidden_layers": 1, "hidden_width": 400, "width_decay": 1.0, "latent_dim": 20,
            "activation": "relu", "likelihood": "bernoulli"}


def seed_mlp() -> VAE:
    arch = get_registry().architectures.get("mlp")
    torch.manual_seed(0)
    return arch.build(arch.config_from_params(SEED_MLP, (1, 28, 28)))


def part_sizes(data: bytes) -> tuple[dict[str, int], int]:
    """Bytes of each stored tensor, and the length of the safetensors JSON header."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}, n


def quantize_uniform(model: VAE, name: str, bits: int, symmetric: bool = True, per_channel: bool = True,
                     scale_dtype: str = "float16") -> None:
    w = model.get_parameter(name).detach()
    n_rows = w.shape[0] if per_channel else 1
    deq, scale, zp = uniform_grid(w, bits, symmetric, per_channel, torch.full((n_rows,), 0.8), scale_dtype)
    with torch.no_grad():
        model.get_parameter(name).copy_(deq)
    spec = {"codec": "uniform", "bits": bits, "symmetric": symmetric, "axis": 0 if per_channel else None,
            "scale_dtype": scale_dtype, "scale": scale.double().tolist()}
    if zp is not None:
        spec["zero_point"] = [int(z) for z in zp.tolist()]
    model.encodings[name] = spec


def assert_round_trip(model: VAE) -> bytes:
    data = packing.serialize_model(model)
    assert packing.size_bytes(model) == len(data)
    back = packing.deserialize_model(data)
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert back.encodings == model.encodings
    assert packing.serialize_model(back) == data
    return data


@pytest.mark.parametrize("bits", range(1, 9))
def test_pack_bits_round_trip_and_length(bits: int) -> None:
    codes = torch.randint(0, 1 << bits, (1001,), generator=torch.Generator().manual_seed(bits))
    packed = packing.pack_bits(codes, bits)
    assert packed.dtype == torch.uint8 and packed.numel() == (1001 * bits + 7) // 8
    assert torch.equal(packing.unpack_bits(packed, bits, 1001), codes)


def test_eight_one_bit_codes_fill_one_byte() -> None:
    packed = packing.pack_bits(torch.tensor([1, 0, 1, 1, 0, 0, 0, 1]), 1)
    assert packed.tolist() == [0b10001101]


def test_pack_bits_refuses_codes_out_of_range() -> None:
    with pytest.raises(ValueError, match="codes must be in"):
        packing.pack_bits(torch.tensor([0, 16]), 4)


def test_four_bit_per_channel_size_is_exact() -> None:
    model = seed_mlp()
    dense = packing.size_bytes(model)
    quantize_uniform(model, "encoder.0.weight", 4)
    data = assert_round_trip(model)
    parts, header_len = part_sizes(data)
    assert parts["encoder.0.weight"] == 400 * 784 // 2
    assert parts["encoder.0.weight::scale"] == 400 * 2  # float16 scales
    assert len(data) == 8 + header_len + sum(parts.values())
    # Everything but the packed weight and its scales is unchanged, up to a few hundred bytes of header.
    expected = dense - 400 * 784 * 4 + 400 * 784 // 2 + 400 * 2
    assert abs(len(data) - expected) < 400
    bits_other = packing.theoretical_bits(seed_mlp()) - 400 * 784 * 32
    assert packing.theoretical_bits(model) == bits_other + 400 * 784 * 4 + 400 * 16


@pytest.mark.parametrize("bits", [1, 2, 3, 5, 8])
@pytest.mark.parametrize("symmetric", [True, False])
@pytest.mark.parametrize("per_channel", [True, False])
def test_uniform_round_trip_is_exact(bits: int, symmetric: bool, per_channel: bool) -> None:
    model = seed_mlp()
    quantize_uniform(model, "decoder.0.weight", bits, symmetric, per_channel)
    quantize_uniform(model, "mu.weight", bits, symmetric, per_channel, scale_dtype="float32")
    data = assert_round_trip(model)
    parts, _ = part_sizes(data)
    assert parts["decoder.0.weight"] == (400 * 20 * bits + 7) // 8
    assert parts["mu.weight::scale"] == (20 if per_channel else 1) * 4
    assert ("decoder.0.weight::zero_point" in parts) is (not symmetric)


def test_codebook_round_trip_and_size() -> None:
    model = seed_mlp()
    w = model.decoder[2].weight.detach()
    table = torch.unique(torch.linspace(-0.1, 0.1, 8).half().float())
    idx = torch.bucketize(w, (table[1:] + table[:-1]) / 2)
    with torch.no_grad():
        model.decoder[2].weight.copy_(table[idx])
    model.encodings["decoder.2.weight"] = {"codec": "codebook", "bits": 3, "codebook": table.double().tolist()}
    parts, _ = part_sizes(assert_round_trip(model))
    assert parts["decoder.2.weight"] == 784 * 400 * 3 // 8
    assert parts["decoder.2.weight::codebook"] == 8 * 2


def sparse_model(keep_every: int, name: str = "encoder.0.weight") -> VAE:
    model = seed_mlp()
    w = model.get_parameter(name)
    with torch.no_grad():
        w.mul_((torch.arange(w.numel()).reshape(w.shape) % keep_every == 0).float())
    return model


@pytest.mark.parametrize(("keep_every", "name", "kind"), [
    (2, "encoder.0.weight", "bitmask"),     # half the values: 1 bit per position beats any index
    (100, "encoder.0.weight", "delta16"),   # 1% of 313,600 positions: 16-bit gaps beat 32-bit indices and the bitmask
    (1000, "mu.weight", "index16"),         # 8 of 8,000 positions: absolute 16-bit indices
])
def test_sparse_mask_picks_the_smallest_encoding(keep_every: int, name: str, kind: str) -> None:
    model = sparse_model(keep_every, name)
    w = model.get_parameter(name).detach()
    model.encodings[name] = {"sparse": True}
    data = assert_round_trip(model)
    meta = packing.read_header(data)["tensors"][name]["meta"]
    assert meta["mask"] == kind
    sizes = packing.mask_encodings(w != 0)
    parts, _ = part_sizes(data)
    assert parts[f"{name}::mask"] == min(sizes.values())
    assert parts[name] == int((w != 0).sum()) * 4


def test_sparse_with_quantized_values_keeps_zeros_exact() -> None:
    model = sparse_model(4)
    quantize_uniform(model, "encoder.0.weight", 4)
    model.encodings["encoder.0.weight"]["sparse"] = True
    dense_q = seed_mlp()
    quantize_uniform(dense_q, "encoder.0.weight", 4)
    data = assert_round_trip(model)
    assert len(data) < packing.size_bytes(dense_q)
    restored = packing.deserialize_model(data).encoder[0].weight
    assert torch.equal(restored == 0, model.encoder[0].weight == 0)


def test_dense_float16_with_sparse_flag() -> None:
    model = sparse_model(3)
    with torch.no_grad():
        model.encoder[0].weight.copy_(model.encoder[0].weight.half().float())
    model.encodings["encoder.0.weight"] = {"dtype": "float16", "sparse": True}
    assert_round_trip(model)


def test_weights_off_their_grid_are_refused() -> None:
    model = seed_mlp()
    quantize_uniform(model, "mu.weight", 4)
    with torch.no_grad():
        model.mu.weight.add_(1e-3)
    with pytest.raises(ExportError, match="not on the grid"):
        packing.serialize_model(model)


def test_unknown_codec_is_named() -> None:
    model = seed_mlp()
    model.encodings["mu.weight"] = {"codec": "zstd"}
    with pytest.raises(ExportError, match="unknown codec 'zstd'.*codebook, dense, uniform"):
        packing.serialize_model(model)


class Int8SignCodec:
    """A plugin codec without mask support: each value stored as one int8 (values must be -1, 0 or +1)."""

    name = "sign8"
    supports_mask = False

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return spec

    def full_spec(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        return header_spec

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        assert mask is None
        return {"": tensor.to(torch.int8).contiguous()}, {"n": tensor.numel()}

    def unpack(self, parts: dict[str, torch.Tensor], meta: dict[str, Any], shape: list[int], spec: dict[str, Any],
               mask: torch.Tensor | None = None) -> torch.Tensor:
        assert mask is None and math.prod(shape) == meta["n"]
        return parts[""].float().reshape(shape)

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        return 2 * tensor.numel()


class SignCodecPlugin:
    @hookimpl
    def register_codecs(self, register: Callable[[Codec], None]) -> None:
        register(Int8SignCodec())


def test_every_builtin_codec_implements_the_protocol() -> None:
    codecs = get_registry().codec_map()
    assert sorted(codecs) == ["codebook", "dense", "uniform", "weight_vae"]
    for codec in codecs.values():
        assert isinstance(codec, Codec), codec
    assert get_registry().codecs.plugin_of("uniform") == "vae_automl.builtin.codecs"
    assert get_registry().codecs.plugin_of("weight_vae") == "vae_automl.builtin.weight_vae"


def test_plugin_codec_through_the_hook_round_trips_with_a_sparse_spec(register_plugin: Any) -> None:
    model = seed_mlp()
    w = model.get_parameter("mu.weight")
    with torch.no_grad():
        w.copy_(torch.sign(w) * (torch.arange(w.numel()).reshape(w.shape) % 3 == 0))
    model.encodings["mu.weight"] = {"codec": "sign8", "sparse": True}
    with pytest.raises(ExportError, match="unknown codec 'sign8'"):
        packing.serialize_model(model)
    register_plugin(SignCodecPlugin(), name="sign-codec")
    assert get_registry().codecs.plugin_of("sign8") == "sign-codec"
    data = assert_round_trip(model)
    parts, _ = part_sizes(data)
    assert parts["mu.weight"] == int((w != 0).sum())  # one byte per non-zero value, the zeros in the mask


def test_a_codec_missing_part_of_the_protocol_is_refused_naming_the_plugin(register_plugin: Any) -> None:
    class Broken:
        name = "broken"
        supports_mask = False

    class BrokenPlugin:
        @hookimpl
        def register_codecs(self, register: Callable[[Codec], None]) -> None:
            register(Broken())

    register_plugin(BrokenPlugin(), name="broken-codec")
    with pytest.raises(PluginError, match="broken-codec.*register_codecs.*Codec"):
        get_registry()


def test_deprecated_register_codec_still_registers() -> None:
    try:
        with pytest.warns(DeprecationWarning, match="register_codecs"):
            packing.register_codec(Int8SignCodec())
        assert get_registry().codecs.plugin_of("sign8") == "vae_automl.builtin.codecs"
    finally:
        packing._legacy.clear()
        reset_registry()
    assert "sign8" not in get_registry().codecs
