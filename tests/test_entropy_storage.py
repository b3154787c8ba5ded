"""Entropy-coded storage: ANS primitives, coded parts, and bit-exact files whose size is the file's length."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import torch

from vae_automl import packing
from vae_automl.builtin.entropy_coding import EntropyCode
from vae_automl.builtin.pruning_impl import apply_masks, mark_sparse, masks_from_scores, prunable_weights
from vae_automl.builtin.quantization_impl import fp_codebook, kmeans_1d, snap_to_codebook, uniform_grid
from vae_automl.components import CompressionContext
from vae_automl.registry import get_registry
from vae_automl.storage import ans
from vae_automl.storage.entropy import code_parts, decode_parts
from vae_automl.vae import VAE

SEED_MLP = {"hidden_layers": 1, "hidden_width": 400, "width_decay": 1.0, "latent_dim": 20,
            "activation": "relu", "likelihood": "bernoulli"}


def part_sizes(data: bytes) -> dict[str, int]:
    """Bytes of each stored tensor of a safetensors file."""
    n = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + n])
    return {k: v["data_offsets"][1] - v["data_offsets"][0] for k, v in header.items() if k != "__metadata__"}


def quantize_uniform(model: VAE, name: str, bits: int, symmetric: bool = True, per_channel: bool = True) -> None:
    w = model.get_parameter(name).detach()
    n_rows = w.shape[0] if per_channel else 1
    deq, scale, zp = uniform_grid(w, bits, symmetric, per_channel, torch.full((n_rows,), 0.8), "float16")
    with torch.no_grad():
        model.get_parameter(name).copy_(deq)
    spec = {"codec": "uniform", "bits": bits, "symmetric": symmetric, "axis": 0 if per_channel else None,
            "scale_dtype": "float16", "scale": scale.double().tolist()}
    if zp is not None:
        spec["zero_point"] = [int(z) for z in zp.tolist()]
    model.encodings[name] = spec


def empirical_entropy_bits(symbols: np.ndarray) -> float:
    p = np.bincount(symbols) / len(symbols)
    p = p[p > 0]
    return float(-(p * np.log2(p)).sum() * len(symbols))


@pytest.mark.parametrize("alphabet", [2, 8, 256])
def test_table_coder_round_trip_near_the_entropy(alphabet: int) -> None:
    rng = np.random.default_rng(alphabet)
    symbols = np.minimum(rng.geometric(0.35, 20_000) - 1, alphabet - 1)
    data = ans.encode_with_table(symbols, alphabet)
    assert np.array_equal(ans.decode_with_table(data, alphabet, len(symbols)), symbols)
    ideal_bytes = empirical_entropy_bits(symbols) / 8
    # The table (alphabet bytes), the byte-rounded frequencies and ANS's final words cost a little.
    assert ideal_bytes <= data.size - alphabet + 8 <= 1.03 * ideal_bytes + 16


def test_table_coder_boundaries() -> None:
    assert ans.decode_with_table(ans.encode_with_table(np.zeros(0, np.int64), 4), 4, 0).size == 0
    one = ans.encode_with_table(np.full(1000, 3), 4)
    assert one.size == 4  # a single repeated symbol needs only its table
    assert np.array_equal(ans.decode_with_table(one, 4, 1000), np.full(1000, 3))
    rare = np.zeros(5000, np.int64)
    rare[1234] = 7  # a symbol whose frequency rounds to 0 of 255 must still be codable
    assert np.array_equal(ans.decode_with_table(ans.encode_with_table(rare, 8), 8, 5000), rare)
    with pytest.raises(ValueError, match=r"0\.\.3"):
        ans.encode_with_table(np.array([4]), 4)


def test_signed_and_column_coders_round_trip_at_their_boundaries() -> None:
    rng = np.random.default_rng(0)
    values = np.concatenate([[0, -1, 1, 65535, -65535], np.round(rng.laplace(0, 30, 500)).astype(np.int64)])
    assert np.array_equal(ans.decode_signed(ans.encode_signed(values), len(values)), values)
    with pytest.raises(ValueError, match="2\\*\\*16"):
        ans.encode_signed(np.array([1 << 16]))
    small = np.round(rng.laplace(0, 2, 4000)).astype(np.int64)  # small deltas cost far less than 16 bits each
    assert ans.encode_signed(small).size < 4000 * 4 / 8
    matrix = rng.integers(0, 7, (3000, 4))
    matrix[:, 2] = 5  # a constant column needs no stream
    coded = ans.encode_columns(matrix, 9)
    assert np.array_equal(ans.decode_columns(coded, 9, 3000, 4), matrix)
    assert coded.size < 4 * 9 + 3 * 3000 * np.log2(7) / 8 * 1.03 + 8


def pruned_kmeans_mlp(sparsity: float, bits: int) -> VAE:
    """The seed 784-400-20 MLP, magnitude-pruned and k-means quantized (no training: the format does not care)."""
    arch = get_registry().architectures.get("mlp")
    torch.manual_seed(0)
    model = arch.build(arch.config_from_params(SEED_MLP, (1, 28, 28)))
    masks = masks_from_scores({n: w.detach().abs() for n, w in prunable_weights(model).items()}, sparsity, "layer")
    apply_masks(model, masks)
    mark_sparse(model, masks)
    for name, w in prunable_weights(model).items():
        values = w.detach()
        table = fp_codebook(kmeans_1d(values[values != 0], 1 << bits, "linear", 0), "float16")
        with torch.no_grad():
            w.copy_(snap_to_codebook(values, table) * (values != 0))
        model.encodings[name] = {"codec": "codebook", "bits": bits, "codebook_dtype": "float16",
                                 "codebook": table.double().tolist(), "sparse": True}
    return model


def entropy_coded(model: VAE) -> VAE:
    ctx = CompressionContext(data=None, device=torch.device("cpu"), seed=0, fine_tune=lambda *a, **k: None)  # type: ignore[arg-type]
    return EntropyCode().apply(model, {}, ctx)


def test_entropy_coded_file_is_bit_exact_and_its_size_is_the_file(tmp_path: Path) -> None:
    plain_model = pruned_kmeans_mlp(0.9, 5)
    model = entropy_coded(plain_model)
    assert all(torch.equal(a, b) for a, b in zip(plain_model.state_dict().values(), model.state_dict().values(), strict=True))
    data = packing.serialize_model(model)
    path = tmp_path / "weights.safetensors"
    path.write_bytes(data)
    assert packing.size_bytes(model) == path.stat().st_size == len(data)
    back = packing.deserialize_model(path.read_bytes())
    for name, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert back.encodings == model.encodings
    assert packing.serialize_model(back) == data
    # Coding must pay: 10% density masks and skewed 5-bit codes carry far less than their packed bits.
    plain = packing.serialize_model(plain_model)
    assert len(data) < 0.8 * len(plain)
    sizes = part_sizes(data)
    mask_bytes = sizes["encoder.0.weight::mask"]
    density = 0.1  # pruned per layer
    bernoulli_bits = 784 * 400 * -(density * math.log2(density) + (1 - density) * math.log2(1 - density))
    assert mask_bytes < 1.3 * bernoulli_bits / 8
    assert packing.theoretical_bits(model) < packing.theoretical_bits(plain_model)


def test_coded_parts_come_back_identical_for_every_codec_and_mask_kind() -> None:
    arch = get_registry().architectures.get("mlp")
    torch.manual_seed(1)
    model = arch.build(arch.config_from_params({**SEED_MLP, "hidden_width": 64}, (1, 8, 8)))
    quantize_uniform(model, "encoder.0.weight", 3)
    quantize_uniform(model, "decoder.0.weight", 6, symmetric=False, per_channel=False)
    with torch.no_grad():
        model.mu.weight[:, 1:] = 0  # a nearly empty sparse tensor: index lists beat the bitmask
    model.encodings["mu.weight"] = {"sparse": True}
    model.encodings["logvar.weight"] = {"dtype": "float16"}
    with torch.no_grad():
        model.logvar.weight.copy_(model.logvar.weight.half().float())
    coded = entropy_coded(model)
    data = packing.serialize_model(coded)
    back = packing.deserialize_model(data)
    for name, tensor in coded.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    assert packing.serialize_model(back) == data
    tensors = packing.read_header(data)["tensors"]
    assert tensors["encoder.0.weight"]["meta"]["entropy"][""]["kind"] == "codes"
    assert tensors["mu.weight"]["meta"]["mask"] == "index16"  # coded from the index list it replaces
    assert tensors["mu.weight"]["meta"]["entropy"]["mask"]["kind"] == "mask"


def test_code_parts_keeps_a_part_raw_when_coding_would_not_pay() -> None:
    rng = np.random.default_rng(0)
    codes = torch.from_numpy(rng.integers(0, 16, 64))  # uniform codes: the table alone costs more than it saves
    parts = {"": packing.pack_bits(codes, 4)}
    coded, meta = code_parts(parts, {"bits": 4}, {}, [64])
    assert "entropy" not in meta and torch.equal(coded[""], parts[""])
    skewed = torch.zeros(4096, dtype=torch.int64)
    skewed[::50] = 1
    parts = {"": packing.pack_bits(skewed, 4)}
    coded, meta = code_parts(parts, {"bits": 4}, {}, [4096])
    assert meta["entropy"][""]["kind"] == "codes" and coded[""].numel() < parts[""].numel()
    assert torch.equal(decode_parts(coded, {"bits": 4}, meta, [4096])[""], parts[""])


def test_float16_grids_with_signed_zeros_and_extremes_come_back_bit_exact() -> None:
    # +0.0 orders to 0 and -0.0 to -1: the boundary between the two halves of the ordering
    # consecutive float16 values (subnormal steps of 2**-24) across -0.0 and +0.0: small deltas, so coding pays
    values = [k * 2.0**-24 for k in range(-40, 0)] + [-0.0, 0.0] + [k * 2.0**-24 for k in range(1, 41)]
    grid = torch.tensor(values, dtype=torch.float16)
    assert grid[40].item() == 0.0 and math.copysign(1.0, grid[40].item()) == -1.0
    coded, meta = code_parts({"codebook": grid}, {}, {}, [len(values)])
    assert "codebook" in meta.get("entropy", {}), "the grid must be coded for the test to mean anything"
    # ordered, every delta is 1 and the 164 bytes code to 22; in raw bit order the jump at -0.0 costs 20 more
    assert coded["codebook"].numel() <= 22
    back = decode_parts(coded, {}, meta, [len(values)])["codebook"]
    assert back.dtype == torch.float16
    assert torch.equal(back.view(torch.int16), grid.view(torch.int16))  # bit patterns, so -0.0 stays -0.0


def test_only_float16_grids_go_through_the_float16_coder() -> None:
    # a float32 scale grid and a uint8 zero-point grid stay as they are, in their dtypes
    codes = packing.pack_bits(torch.tensor([1, 2, 3, 1] * 64), 2)
    parts = {"": codes, "scale": torch.linspace(0.1, 0.2, 64), "zero_point": torch.arange(64, dtype=torch.uint8)}
    coded, meta = code_parts(dict(parts), {"bits": 2}, {}, [256])
    assert set(meta.get("entropy", {})) <= {""}
    back = decode_parts(coded, {"bits": 2}, meta, [256])
    for key, part in parts.items():
        assert back[key].dtype == part.dtype and torch.equal(back[key], part), key


def _entropy_bits(keep: np.ndarray) -> float:
    """Ideal bits of a 0/1 array under its own keep frequency."""
    p = float(keep.mean())
    return 0.0 if p in (0.0, 1.0) else -len(keep) * (p * math.log2(p) + (1 - p) * math.log2(1 - p))


@pytest.mark.parametrize("axis", [0, 1])
def test_mask_lines_codes_a_mask_kept_in_some_lines_per_line_bit_exact(axis: int) -> None:
    from vae_automl.storage.bits import encode_mask

    rng = np.random.default_rng(axis)
    live = rng.random(64) < 0.5  # half of the lines keep nothing: a decoder's rows of pixels that are always 0
    matrix = (rng.random((64, 200)) < 0.7) & live[:, None]
    mask = torch.from_numpy(matrix if axis == 0 else np.ascontiguousarray(matrix.T))
    shape = list(mask.shape)
    data, kind = encode_mask(mask.flatten())
    parts, meta = {"mask": data}, {"mask": kind}
    plain, plain_meta = code_parts(parts, {"entropy": True, "sparse": True}, meta, shape)
    lines, lines_meta = code_parts(parts, {"entropy": True, "sparse": True, "mask_lines": True}, meta, shape)
    assert plain_meta["entropy"]["mask"] == {"kind": "mask"}  # without mask_lines: the per-tensor code, as before
    assert lines_meta["entropy"]["mask"] == {"kind": "mask_rows" if axis == 0 else "mask_columns"}
    for coded, how in ((plain, plain_meta), (lines, lines_meta)):
        assert torch.equal(decode_parts(coded, {"sparse": True}, how, shape)["mask"], data)
    # Oracle: each line under its own frequency, 2 frequency bytes a line, plus the coder's last words.
    per_line = sum(_entropy_bits(line) for line in matrix) / 8 + 2 * 64
    assert lines["mask"].numel() <= per_line + 16
    assert lines["mask"].numel() < 0.8 * plain["mask"].numel()
