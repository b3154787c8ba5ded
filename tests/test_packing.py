"""The packed storage format: bit packing, codecs, sparse masks, exact sizes and byte-identical round trips."""

from __future__ import annotations

import json
import math
from typing import Any, Callable

import pytest
import torch

from vae_automl import hookimpl, packing
from vae_automl.builtin.quantization_impl import uniform_grid
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


@pytest.mark.parametrize("bits", [0, 9, -1])
def test_pack_bits_refuses_widths_outside_1_to_8(bits: int) -> None:
    with pytest.raises(ValueError, match=f"bits must be in 1..8, but got {bits}"):
        packing.pack_bits(torch.tensor([0]), bits)


@pytest.mark.parametrize("bits", [1, 3, 8])
def test_pack_bits_takes_the_largest_code_and_refuses_one_more_or_a_negative(bits: int) -> None:
    top = (1 << bits) - 1
    assert packing.unpack_bits(packing.pack_bits(torch.tensor([top, 0, top]), bits), bits, 3).tolist() == [top, 0, top]
    with pytest.raises(ValueError, match=rf"codes must be in \[0, {top}\] for {bits} bits, got \[0, {top + 1}\]"):
        packing.pack_bits(torch.tensor([0, top + 1]), bits)
    with pytest.raises(ValueError, match=r"got \[-1, 0\]"):
        packing.pack_bits(torch.tensor([-1, 0]), bits)
    assert packing.pack_bits(torch.tensor([], dtype=torch.int64), bits).numel() == 0


def test_unpack_bits_reads_only_count_codes() -> None:
    packed = packing.pack_bits(torch.tensor([3, 1, 2, 0, 3]), 2)  # 10 bits in 2 bytes; the padding reads as a 0 code
    assert packing.unpack_bits(packed, 2, 5).tolist() == [3, 1, 2, 0, 3]
    assert packing.unpack_bits(packed, 2, 3).tolist() == [3, 1, 2]
    assert packing.unpack_bits(packing.pack_bits(torch.tensor([7, 200, 255]), 8), 8, 2).tolist() == [7, 200]


def mask_of(numel: int, positions: list[int]) -> torch.Tensor:
    mask = torch.zeros(numel, dtype=torch.bool)
    mask[positions] = True
    return mask


def test_mask_encodings_at_the_16_bit_boundaries() -> None:
    # 2**16 positions: absolute 16-bit indices still reach every one
    assert packing.mask_encodings(mask_of(1 << 16, [0, 65535])) == {"bitmask": 8192, "index16": 4}
    # one more position: 32-bit indices, and 16-bit deltas while no gap reaches 2**16
    assert packing.mask_encodings(mask_of((1 << 16) + 1, [1, 65536])) == {"bitmask": 8193, "index32": 8, "delta16": 4}
    assert packing.mask_encodings(mask_of((1 << 16) + 1, [0, 65536])) == {"bitmask": 8193, "index32": 8}  # gap 2**16
    assert "delta16" not in packing.mask_encodings(mask_of((1 << 16) + 1, [65536]))  # the first gap counts from 0
    assert packing.mask_encodings(mask_of((1 << 16) + 1, [])) == {"bitmask": 8193, "index32": 0, "delta16": 0}


@pytest.mark.parametrize(("numel", "positions", "kind"), [
    (16, [3], "bitmask"),  # 2 bytes either way: the tie goes to the bitmask
    (24, [3], "index16"),  # 3 bytes against 2
    (1 << 16, [0, 32767, 32768, 65535], "index16"),  # indices past 2**15 go through int16's bit pattern
    ((1 << 16) + 1, [5, 40000, 65536], "delta16"),
    (200_000, [0, 70_000, 199_999], "index32"),  # a gap of 2**16 or more: no 16-bit deltas
])
def test_encode_mask_picks_the_smallest_and_decodes_back(numel: int, positions: list[int], kind: str) -> None:
    mask = mask_of(numel, positions)
    data, got = packing.encode_mask(mask)
    assert got == kind
    assert torch.equal(packing.decode_mask(data, got, numel), mask)
    bits = packing.mask_bits(mask)
    assert bits == (numel if kind == "bitmask" else 8 * data.numel() * data.element_size())


@pytest.mark.parametrize(("bits", "symmetric", "levels"), [
    (1, True, (0, 1)), (2, True, (1, 2)), (3, True, (3, 6)), (8, True, (127, 254)),
    (1, False, (0, 1)), (2, False, (0, 3)), (8, False, (0, 255)),
])
def test_uniform_levels_offset_and_top_code(bits: int, symmetric: bool, levels: tuple[int, int]) -> None:
    assert packing.UniformCodec._levels({"bits": bits, "symmetric": symmetric}) == levels


@pytest.mark.parametrize("bits", [0, 9])
def test_uniform_codec_refuses_widths_outside_1_to_8(bits: int) -> None:
    with pytest.raises(ExportError, match=f"uniform codec: bits must be in 1..8, but got bits={bits}"):
        packing.UniformCodec._levels({"bits": bits})


def test_uniform_codes_at_the_ends_of_the_range_and_a_zero_scale_channel() -> None:
    codec = packing.UniformCodec()
    # 2-bit symmetric per row: q in {-1, 0, 1} stored as q + 1; row 1 has scale 0 (an all-zero channel)
    spec = {"bits": 2, "symmetric": True, "axis": 0, "scale": [0.5, 0.0], "scale_dtype": "float32"}
    w = torch.tensor([[-0.5, 0.0, 0.5], [0.0, 0.0, 0.0]])
    codes, bits = codec.codes(w, spec)
    assert bits == 2 and codes.tolist() == [[0, 1, 2], [1, 1, 1]]
    assert torch.equal(codec.decode(codes, spec), w)
    # values past the range clamp to the end codes (pack then refuses them as off the grid)
    assert codec.codes(torch.tensor([[-3.0, 3.0], [0.0, 0.0]]), spec)[0].tolist() == [[0, 2], [1, 1]]
    # asymmetric 3-bit: c = round(w / scale) + zero_point, clamped to [0, 7]
    asym = {"bits": 3, "symmetric": False, "axis": None, "scale": [0.25], "zero_point": [3], "scale_dtype": "float32"}
    assert codec.codes(torch.tensor([-0.75, 0.0, 1.0, 2.0, -2.0]), asym)[0].tolist() == [0, 3, 7, 7, 0]
    assert codec.decode(torch.tensor([0, 3, 7]), asym).tolist() == [-0.75, 0.0, 1.0]
    # 1-bit symmetric: +scale for w >= 0, -scale below
    one = {"bits": 1, "symmetric": True, "axis": None, "scale": [0.5], "scale_dtype": "float32"}
    assert codec.codes(torch.tensor([-0.5, 0.5]), one)[0].tolist() == [0, 1]
    assert codec.decode(torch.tensor([0, 1]), one).tolist() == [-0.5, 0.5]


def test_uniform_scales_per_axis_and_their_count() -> None:
    codec = packing.UniformCodec()
    w = torch.tensor([[1.0, 2.0], [3.0, 6.0]])
    last = {"bits": 4, "axis": -1, "scale": [1.0, 2.0], "scale_dtype": "float32"}  # one scale per column
    assert codec.codes(w, last)[0].tolist() == [[8, 8], [10, 10]]
    with pytest.raises(ExportError, match="axis 0 has 2 channels but the spec gives 3 scales"):
        codec.codes(w, {"bits": 4, "axis": 0, "scale": [1.0, 1.0, 1.0]})
    with pytest.raises(ExportError, match="a per-tensor spec needs one scale, got 2"):
        codec.codes(w, {"bits": 4, "axis": None, "scale": [1.0, 1.0]})


def test_grid_bits_of_each_codec() -> None:
    uniform = packing.UniformCodec()
    assert uniform.grid_bits({"bits": 4, "scale": [1.0] * 3}) == 3 * 16
    assert uniform.grid_bits({"bits": 4, "scale": [1.0] * 3, "scale_dtype": "float32"}) == 3 * 32
    assert uniform.grid_bits({"bits": 5, "symmetric": False, "scale": [1.0] * 3, "zero_point": [0] * 3}) == 3 * 16 + 3 * 5
    codebook = packing.CodebookCodec()
    assert codebook.grid_bits({"codebook": [0.0, 1.0, 2.0]}) == 3 * 16
    assert codebook.grid_bits({"codebook": [0.0, 1.0], "codebook_dtype": "float32"}) == 2 * 32
    dense = packing.DenseCodec()
    assert dense.theoretical_bits(torch.zeros(5), {}) == 5 * 32
    assert dense.theoretical_bits(torch.zeros(5), {"dtype": "bfloat16"}, mask=torch.tensor([1, 0, 1, 0, 0]).bool()) == 2 * 16


@pytest.mark.parametrize(("bits", "entries", "ok"), [(2, 4, True), (2, 5, False), (1, 2, True), (1, 3, False), (8, 256, True),
                                                (9, 4, False), (0, 1, False)])
def test_codebook_size_against_its_bits(bits: int, entries: int, ok: bool) -> None:
    spec = {"bits": bits, "codebook": [float(i) for i in range(entries)], "codebook_dtype": "float32"}
    codec = packing.CodebookCodec()
    if ok:
        assert codec.decode(torch.tensor([0, entries - 1]), spec).tolist() == [0.0, float(entries - 1)]
    else:
        with pytest.raises(ExportError, match=f"codebook codec: {entries} entries do not fit bits={bits}"):
            codec.decode(torch.tensor([0]), spec)


@pytest.mark.parametrize("book", [[], [1.0, 1.0], [2.0, 1.0], [0.0, 1.0, 1.0004]])  # the last two equal in float16
def test_codebooks_that_are_empty_unsorted_or_duplicated_are_refused(book: list[float]) -> None:
    with pytest.raises(ExportError, match="codebook codec"):
        packing.CodebookCodec().decode(torch.tensor([0]), {"bits": 2, "codebook": book})


def test_codebook_codes_are_the_entries_indices() -> None:
    codec = packing.CodebookCodec()
    spec = {"bits": 2, "codebook": [-1.0, 0.0, 0.5, 2.0], "codebook_dtype": "float32"}
    codes, bits = codec.codes(torch.tensor([2.0, -1.0, 0.5, 0.0, 0.5]), spec)
    assert bits == 2 and codes.tolist() == [3, 0, 2, 1, 2]


def test_a_uniform_spec_without_symmetric_is_symmetric() -> None:
    codec = packing.UniformCodec()
    spec = {"bits": 4, "axis": None, "scale": [0.5], "scale_dtype": "float32"}
    assert codec.decode(torch.tensor([0, 7, 14]), spec).tolist() == [-3.5, 0.0, 3.5]  # q + 7, no zero point
    assert set(codec.grid_parts(spec)) == {"scale"}
    parts, _ = codec.pack(torch.tensor([-3.5, 0.5, 3.5]), spec)
    assert codec.unpack(parts, {}, [3], spec).tolist() == [-3.5, 0.5, 3.5]


@pytest.mark.parametrize(("values", "worst"), [([0.3], "0.05"), ([0.05], "0.05"), ([1.4, 0.5], "0.4"), ([-0.2], "0.2")])
def test_off_grid_codebook_values_are_refused_naming_the_nearest_entry_distance(values: list[float], worst: str) -> None:
    spec = {"bits": 2, "codebook": [0.0, 0.25, 0.5, 1.0], "codebook_dtype": "float32"}
    with pytest.raises(ExportError, match=f"not on the grid of their encoding spec \\(largest difference {worst}\\)"):
        packing.CodebookCodec().pack(torch.tensor(values), spec)


def test_a_float32_codebook_is_stored_as_float32() -> None:
    codec = packing.CodebookCodec()
    spec = {"bits": 2, "codebook": [0.1, 0.2, 0.7, 1.3], "codebook_dtype": "float32"}  # not float16 values
    table = torch.tensor(spec["codebook"], dtype=torch.float32)
    parts, _ = codec.pack(table[torch.tensor([3, 0, 2, 1])], spec)
    assert parts["codebook"].dtype == torch.float32
    assert codec.full_spec(parts, codec.header_spec(spec))["codebook"] == table.double().tolist()


def test_uniform_scales_are_used_as_stored_in_their_dtype() -> None:
    codec = packing.UniformCodec()
    stored = float(torch.tensor(0.1, dtype=torch.float16))  # 0.0999755859375: 0.1 is not a float16
    assert codec.decode(torch.tensor([8]), {"bits": 4, "axis": None, "scale": [0.1]}).item() == pytest.approx(stored, abs=0)
    exact32 = float(torch.tensor(0.1, dtype=torch.float32))
    spec = {"bits": 4, "axis": None, "scale": [0.1], "scale_dtype": "float32"}
    assert codec.decode(torch.tensor([8]), spec).item() == pytest.approx(exact32, abs=0)


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
    registry = get_registry()  # the components are listed without the codecs (since 0.3) ...
    for _ in range(2):  # ... which are refused when first asked for, and every time after
        with pytest.raises(PluginError, match="broken-codec.*register_codecs.*Codec"):
            _ = registry.codecs


def test_deprecated_register_codec_still_registers() -> None:
    try:
        with pytest.warns(DeprecationWarning, match="register_codecs"):
            packing.register_codec(Int8SignCodec())
        assert get_registry().codecs.plugin_of("sign8") == "vae_automl.builtin.codecs"
    finally:
        packing._legacy.clear()
        reset_registry()
    assert "sign8" not in get_registry().codecs


# --- what the format hands a codec: an oracle of the Codec contract, by a plugin codec that records its calls ---


class RecordingCodec:
    """Stores each value plus the spec's ``offset``; the offset goes to the parts' metadata, not to the header.

    It records what the format passes it, so a test can check the arguments the contract promises (the built-in
    codecs happen to ignore some of them: a plugin codec need not).
    """

    name = "recording"

    def __init__(self, supports_mask: bool) -> None:
        self.supports_mask = supports_mask
        self.unpacked: list[dict[str, Any]] = []
        self.counted: list[dict[str, Any]] = []

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        return spec

    def full_spec(self, parts: dict[str, torch.Tensor], header_spec: dict[str, Any]) -> dict[str, Any]:
        return header_spec

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None
             ) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
        values = tensor[mask] if mask is not None else tensor
        return {"": (values + spec["offset"]).contiguous()}, {"offset": spec["offset"]}

    def unpack(self, parts: dict[str, torch.Tensor], meta: dict[str, Any], shape: list[int], spec: dict[str, Any],
               mask: torch.Tensor | None = None) -> torch.Tensor:
        self.unpacked.append({"parts": dict(parts), "meta": meta, "shape": shape, "spec": spec, "mask": mask})
        values = parts[""] - meta["offset"]  # the metadata pack returned, not the spec: the format must pass it
        if mask is None:
            return values.reshape(shape)
        out = torch.zeros(shape)
        out[mask] = values
        return out

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        self.counted.append({"tensor": tensor, "spec": spec, "mask": mask})
        return 7 * (int(mask.sum()) if mask is not None else tensor.numel())


def recording_registry(codec: RecordingCodec) -> Any:
    """The registry deserialize_model needs (builds the model, knows the codecs), with ``codec`` beside the built-ins."""
    from types import SimpleNamespace

    from vae_automl.storage.codecs import builtin_codecs

    return SimpleNamespace(build_model=get_registry().build_model, codec_map=lambda: {**builtin_codecs(), codec.name: codec})


def small_mlp() -> VAE:
    """Every value a multiple of 1/8 below 2 in magnitude: adding and removing the offsets above is exact."""
    arch = get_registry().architectures.get("mlp")
    torch.manual_seed(0)
    model = arch.build(arch.config_from_params({**SEED_MLP, "hidden_width": 8, "latent_dim": 2}, (1, 4, 4)))
    with torch.no_grad():
        for tensor in model.state_dict().values():
            tensor.copy_(torch.round(tensor * 8) / 8)
    return model


def with_codecs(codec: RecordingCodec) -> dict[str, Any]:
    from vae_automl.storage.codecs import builtin_codecs

    return {**builtin_codecs(), codec.name: codec}


@pytest.mark.parametrize("supports_mask", [True, False])
def test_the_format_passes_a_codec_what_the_contract_says(supports_mask: bool) -> None:
    from vae_automl.storage.format import deserialize_model, serialize_model, theoretical_bits

    codec = RecordingCodec(supports_mask)
    model = small_mlp()
    w = model.get_parameter("mu.weight")  # 2 x 8
    with torch.no_grad():
        w.copy_(torch.arange(16.0).reshape(2, 8) % 3)  # zeros at every third position
    mask = w != 0
    model.encodings["mu.weight"] = {"codec": "recording", "offset": 0.5, "sparse": True}
    model.encodings["mu.bias"] = {"codec": "recording", "offset": 0.25}
    bias = model.get_parameter("mu.bias").detach().clone()

    data = serialize_model(model, with_codecs(codec))
    back = deserialize_model(data, recording_registry(codec))
    assert torch.equal(back.get_parameter("mu.weight"), w.detach()) and torch.equal(back.get_parameter("mu.bias"), bias)
    calls = {tuple(call["shape"]): call for call in codec.unpacked}
    assert len(codec.unpacked) == 2 and set(calls) == {(2,), (2, 8) if supports_mask else (int(mask.sum()),)}
    bias_call = calls[(2,)]
    assert bias_call["meta"] == {"offset": 0.25} and bias_call["spec"] == {"codec": "recording", "offset": 0.25}
    assert bias_call["mask"] is None and set(bias_call["parts"]) == {""}
    weight_call = calls[(2, 8) if supports_mask else (int(mask.sum()),)]
    assert weight_call["meta"]["offset"] == 0.5 and weight_call["spec"]["offset"] == 0.5
    assert "mask" not in weight_call["parts"]  # the format decodes its own mask part before the codec sees the rest
    if supports_mask:
        assert torch.equal(weight_call["mask"], mask)
    else:
        assert weight_call["mask"] is None

    bits = theoretical_bits(model, with_codecs(codec))
    sparse = [c for c in codec.counted if c["spec"].get("sparse")]
    assert len(sparse) == 1
    if supports_mask:  # the whole tensor and its mask
        assert torch.equal(sparse[0]["tensor"], w.detach()) and torch.equal(sparse[0]["mask"], mask)
    else:  # the non-zero values alone, and no mask
        assert torch.equal(sparse[0]["tensor"], w.detach()[mask]) and sparse[0]["mask"] is None
    assert sparse[0]["spec"] == model.encodings["mu.weight"]
    dense_bits = sum(32 * t.numel() for n, t in model.state_dict().items() if n not in model.encodings)
    assert bits == dense_bits + 7 * int(mask.sum()) + 7 * 2 + packing.mask_bits(mask)


def test_parts_from_gives_the_codec_the_named_tensors_parts_under_from() -> None:
    from vae_automl.storage.format import SHARED_PREFIX, deserialize_model, serialize_model

    codec = RecordingCodec(supports_mask=False)
    model = small_mlp()
    model.encodings["mu.bias"] = {"codec": "recording", "offset": 1.0}
    model.encodings["logvar.bias"] = {"codec": "recording", "offset": 2.0, "parts_from": "mu.bias"}
    mu_bias = model.get_parameter("mu.bias").detach()
    data = serialize_model(model, with_codecs(codec))
    back = deserialize_model(data, recording_registry(codec))
    assert torch.equal(back.get_parameter("logvar.bias"), model.get_parameter("logvar.bias").detach())
    by_offset = {call["meta"]["offset"]: call["parts"] for call in codec.unpacked}
    assert set(by_offset[1.0]) == {""}  # the source itself gets only its own parts
    assert set(by_offset[2.0]) == {"", SHARED_PREFIX}  # its own main part, and the source's under from/
    assert torch.equal(by_offset[2.0][SHARED_PREFIX], mu_bias + 1.0)  # the source's stored part, as packed
    assert torch.equal(by_offset[2.0][""], model.get_parameter("logvar.bias").detach() + 2.0)


def test_parts_from_a_tensor_the_file_lacks_is_refused_naming_both() -> None:
    from vae_automl.storage.format import deserialize_model, serialize_model

    codec = RecordingCodec(supports_mask=False)
    model = small_mlp()
    model.encodings["logvar.bias"] = {"codec": "recording", "offset": 2.0, "parts_from": "decoder.nowhere"}
    data = serialize_model(model, with_codecs(codec))
    with pytest.raises(ExportError, match=r"tensor 'logvar.bias' takes parts from 'decoder.nowhere', which the file does not"):
        deserialize_model(data, recording_registry(codec))


def test_a_model_without_a_container_attribute_is_stored_as_safetensors() -> None:
    from types import SimpleNamespace

    from vae_automl.storage.format import container_of

    assert container_of(SimpleNamespace()) == "safetensors"
    assert container_of(SimpleNamespace(container="compact")) == "compact"
    with pytest.raises(ExportError, match=r"unknown container 'zip'; known: safetensors, compact"):
        container_of(SimpleNamespace(container="zip"))


def test_the_weights_file_is_named_by_its_container() -> None:
    from types import SimpleNamespace

    from vae_automl.storage.format import weights_filename

    assert weights_filename(SimpleNamespace()) == "weights.safetensors"
    assert weights_filename(SimpleNamespace(container="safetensors")) == "weights.safetensors"
    assert weights_filename(SimpleNamespace(container="compact")) == "weights.vac"  # the compact file is no safetensors


def test_errors_name_the_tensor_wherever_its_codec_is_looked_up() -> None:
    from vae_automl.storage.format import deserialize_model, serialize_model

    model = seed_mlp()
    model.encodings["mu.weight"] = {"codec": "zstd"}
    unknown = r"tensor 'mu.weight' asks for unknown codec 'zstd'; known: codebook, dense, uniform, weight_vae"
    with pytest.raises(ExportError, match=unknown):
        packing.serialize_model(model)
    with pytest.raises(ExportError, match=unknown):
        packing.theoretical_bits(model)
    # on load: a file whose codec this registry does not know (the plugin that wrote it is not loaded)
    codec = RecordingCodec(supports_mask=False)
    small = small_mlp()
    small.encodings["mu.bias"] = {"codec": "recording", "offset": 1.0}
    with pytest.raises(ExportError, match=r"tensor 'mu.bias' asks for unknown codec 'recording'; known: codebook, dense"):
        deserialize_model(serialize_model(small, with_codecs(codec)), get_registry())


@pytest.mark.parametrize("entropy", [False, True])
def test_a_spec_the_codec_cannot_use_is_refused_naming_the_tensor(entropy: bool) -> None:
    model = seed_mlp()
    model.encodings["mu.weight"] = {"codec": "uniform", "symmetric": True, "entropy": entropy}  # no bits, no grid
    with pytest.raises(ExportError, match=r"tensor 'mu.weight': cannot pack with spec"):
        packing.serialize_model(model)
    if entropy:  # theoretical_bits packs an entropy-coded tensor to count its coded bytes
        with pytest.raises(ExportError, match=r"tensor 'mu.weight': cannot pack with spec"):
            packing.theoretical_bits(model)
