"""Golden files: the exact bytes of ``weights.safetensors`` for small fixed models, checked in under tests/golden/.

Any change to the packed format (bit order, code offsets, grid dtypes, mask encodings, entropy coding,
header layout, the format or manifest version) fails here until it is made on purpose: then bump
``FORMAT_VERSION`` / ``MANIFEST_VERSION`` as the change needs, and rewrite the files with
``VAE_AUTOML_REGENERATE_GOLDEN=1 python -m pytest tests/test_golden_format.py``.

The models are built from integer formulas and hand-written grids, not from a seeded initializer or the
quantizers, so the golden bytes depend on the storage code alone.
"""

from __future__ import annotations

import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
import torch

from vae_automl.errors import ExportError
from vae_automl.export import MANIFEST_FORMAT, MANIFEST_VERSION
from vae_automl.registry import get_registry
from vae_automl.storage.format import deserialize_model, serialize_model, size_bytes, theoretical_bits
from vae_automl.storage.header import FORMAT_VERSION, HEADER_KEY, read_header
from vae_automl.vae import VAE

GOLDEN = Path(__file__).parent / "golden"
REGENERATE = os.environ.get("VAE_AUTOML_REGENERATE_GOLDEN") == "1"


def ints(shape: tuple[int, ...], k: int, low: int, high: int) -> torch.Tensor:
    """A fixed integer pattern in [low, high] of ``shape`` (no random generator involved)."""
    n = 1
    for d in shape:
        n *= d
    return ((torch.arange(n) * k + 3) % (high - low + 1) + low).reshape(shape)


def mlp(width: int, side: int) -> VAE:
    arch = get_registry().architectures.get("mlp")
    params = {"hidden_layers": 1, "hidden_width": width, "width_decay": 1.0, "latent_dim": 2,
              "activation": "relu", "likelihood": "bernoulli"}
    return arch.build(arch.config_from_params(params, (1, side, side)))


def set_tensor(model: VAE, name: str, values: torch.Tensor, spec: dict[str, Any] | None = None) -> None:
    with torch.no_grad():
        model.state_dict()[name].copy_(values.float())
    if spec is not None:
        model.encodings[name] = spec


def dense_model() -> VAE:
    """Every tensor float32 (no encoding): values k/8 of small integers."""
    model = mlp(6, 4)
    for i, (name, tensor) in enumerate(model.state_dict().items()):
        set_tensor(model, name, ints(tuple(tensor.shape), 5 + 2 * i, -8, 8) / 8)
    return model


def codecs_model() -> VAE:
    """One tensor per codec and option: uniform symmetric/asymmetric/1-bit, codebook, float16, sparse masks."""
    model = mlp(6, 4)
    for name, tensor in model.state_dict().items():
        set_tensor(model, name, ints(tuple(tensor.shape), 3, -4, 4) / 4)
    # 4-bit symmetric, one float16 scale per output row: w = q * scale, q in [-7, 7] stored as q + 7
    scale = [0.125, 0.25, 0.5, 0.0625, 1.0, 0.375]
    q = ints((6, 16), 7, -7, 7)
    set_tensor(model, "encoder.0.weight", q * torch.tensor(scale)[:, None],
               {"codec": "uniform", "bits": 4, "symmetric": True, "axis": 0, "scale_dtype": "float16", "scale": scale})
    set_tensor(model, "encoder.0.bias", ints((6,), 5, -6, 6) / 16, {"codec": "dense", "dtype": "float16"})
    # 3-bit asymmetric per tensor: w = (c - zero_point) * scale, c in [0, 7]
    c = ints((2, 6), 3, 0, 7)
    set_tensor(model, "mu.weight", (c - 2) * 0.5,
               {"codec": "uniform", "bits": 3, "symmetric": False, "axis": None, "scale_dtype": "float32",
                "scale": [0.5], "zero_point": [2]})
    # 1-bit symmetric: w = (2c - 1) * scale
    set_tensor(model, "logvar.weight", (2 * ints((2, 6), 5, 0, 1) - 1) * 0.75,
               {"codec": "uniform", "bits": 1, "symmetric": True, "axis": None, "scale": [0.75]})
    # 2-bit codebook
    book = [-0.5, -0.125, 0.25, 1.0]
    set_tensor(model, "decoder.0.weight", torch.tensor(book)[ints((6, 2), 3, 0, 3)],
               {"codec": "codebook", "bits": 2, "codebook": book})
    # sparse: about half zeros, 8-bit uniform values; and two float32 values of 16 (bitmasks both)
    w = ints((16, 6), 5, -127, 127) * (ints((16, 6), 1, 0, 1))
    set_tensor(model, "decoder.2.weight", w / 64,
               {"codec": "uniform", "bits": 8, "symmetric": True, "axis": None, "scale": [1 / 64], "sparse": True})
    bias = torch.zeros(16)
    bias[[1, 9]] = torch.tensor([0.5, -2.0])
    set_tensor(model, "decoder.2.bias", bias, {"sparse": True})
    return model


def entropy_model() -> VAE:
    """Entropy-coded codebook codes, mask and codebook (``entropy: true``) on a skewed 2048-value tensor."""
    model = mlp(32, 8)
    for name, tensor in model.state_dict().items():
        set_tensor(model, name, ints(tuple(tensor.shape), 3, -4, 4) / 4)
    book = [-0.25, 0.5, 0.75, 1.5]
    idx = torch.where(ints((64, 32), 7, 0, 9) < 7, 1, ints((64, 32), 11, 0, 3))  # mostly entry 1: skewed codes
    keep = ints((64, 32), 13, 0, 3) != 0  # a quarter pruned
    set_tensor(model, "decoder.2.weight", torch.tensor(book)[idx] * keep,
               {"codec": "codebook", "bits": 2, "codebook": book, "sparse": True, "entropy": True})
    return model


MODELS: dict[str, Callable[[], VAE]] = {"mlp_float32": dense_model, "mlp_codecs": codecs_model, "mlp_entropy": entropy_model}


@pytest.mark.parametrize("name", sorted(MODELS))
def test_packed_bytes_equal_the_golden_file(name: str) -> None:
    model = MODELS[name]()
    data = serialize_model(model)
    path = GOLDEN / f"{name}.safetensors"
    if REGENERATE:
        path.write_bytes(data)
    golden = path.read_bytes()
    assert data == golden, f"{path.name}: the packed format changed; if on purpose, bump FORMAT_VERSION and regenerate"
    assert size_bytes(model) == len(golden) == os.path.getsize(path)


@pytest.mark.parametrize("name", sorted(MODELS))
def test_golden_file_loads_to_the_fixed_model(name: str) -> None:
    golden = (GOLDEN / f"{name}.safetensors").read_bytes()
    model = MODELS[name]()
    back = deserialize_model(golden, get_registry())
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
    assert back.encodings == model.encodings
    assert back.config == model.config


def test_golden_headers_state_the_format_version_and_each_codec() -> None:
    assert FORMAT_VERSION == 1 and HEADER_KEY == "vae_automl"
    header = read_header((GOLDEN / "mlp_codecs.safetensors").read_bytes())
    assert header["format"] == 1
    tensors = header["tensors"]
    assert tensors["encoder.0.weight"]["spec"] == {"codec": "uniform", "bits": 4, "symmetric": True, "axis": 0,
                                                   "scale_dtype": "float16"}  # the scales live in a tensor
    assert tensors["decoder.2.weight"]["meta"] == {"mask": "bitmask"}
    assert tensors["decoder.2.bias"]["meta"] == {"mask": "bitmask"}  # 2 bytes, against 4 for two 16-bit indices
    entropy = read_header((GOLDEN / "mlp_entropy.safetensors").read_bytes())["tensors"]["decoder.2.weight"]["meta"]
    assert set(entropy["entropy"]) == {"", "mask"}, "the golden entropy file must exercise coded codes and mask"


def test_golden_codes_sit_where_the_format_says() -> None:
    """Read one packed tensor by hand: 4-bit codes q + 7, least significant nibble first, after the header."""
    data = (GOLDEN / "mlp_codecs.safetensors").read_bytes()
    n = int.from_bytes(data[:8], "little")
    layout = json.loads(data[8 : 8 + n])
    start, end = layout["encoder.0.weight"]["data_offsets"]
    raw = data[8 + n + start : 8 + n + end]
    assert layout["encoder.0.weight"]["dtype"] == "U8" and len(raw) == 6 * 16 // 2
    codes = [nibble for byte in raw for nibble in (byte & 0xF, byte >> 4)]
    assert codes == (ints((6, 16), 7, -7, 7) + 7).flatten().tolist()
    scale_start, scale_end = layout["encoder.0.weight::scale"]["data_offsets"]
    assert layout["encoder.0.weight::scale"]["dtype"] == "F16"
    scales = torch.frombuffer(bytearray(data[8 + n + scale_start : 8 + n + scale_end]), dtype=torch.float16)
    assert scales.tolist() == [0.125, 0.25, 0.5, 0.0625, 1.0, 0.375]


def test_theoretical_bits_of_the_codecs_model_by_hand() -> None:
    model = codecs_model()
    expected = (
        6 * 16 * 4 + 6 * 16  # encoder.0.weight: 4-bit codes, six float16 scales
        + 6 * 16  # encoder.0.bias: float16
        + 2 * 6 * 3 + 32 + 3  # mu.weight: 3-bit codes, one float32 scale, one 3-bit zero point
        + 2 * 32  # mu.bias
        + 2 * 6 * 1 + 16  # logvar.weight: 1-bit codes, one float16 scale
        + 2 * 32  # logvar.bias
        + 6 * 2 * 2 + 4 * 16  # decoder.0.weight: 2-bit indices, four float16 entries
        + 6 * 32  # decoder.0.bias
        + int((model.state_dict()["decoder.2.weight"] != 0).sum()) * 8 + 16 + 16 * 6  # nnz codes, scale, bitmask
        + 2 * 32 + 16  # decoder.2.bias: two float32 values, a 16-bit bitmask
    )
    assert theoretical_bits(model, None) == expected


def test_manifest_schema_version() -> None:
    """The export manifest's schema: a change to its keys or meaning bumps MANIFEST_VERSION (loading refuses others)."""
    assert (MANIFEST_FORMAT, MANIFEST_VERSION) == ("vae-automl-export", 2)


def test_a_file_of_another_format_version_is_refused() -> None:
    golden = (GOLDEN / "mlp_float32.safetensors").read_bytes()
    assert golden.count(b'\\"format\\":1,') == 1
    for version in (b"2", b"0"):
        other = golden.replace(b'\\"format\\":1,', b'\\"format\\":' + version + b",")
        with pytest.raises(ExportError, match=f"weights format {version.decode()} is not the supported 1"):
            deserialize_model(other, get_registry())


@pytest.mark.parametrize(("data", "message"), [
    (b"", "shorter than its 8-byte length prefix"),
    (b"\0" * 7, "shorter than its 8-byte length prefix"),
    (b"\0" * 8, "not a vae-automl weights file"),  # exactly the prefix: an empty header
    ((2).to_bytes(8, "little") + b"{}", "not a vae-automl weights file"),  # no __metadata__
    ((16).to_bytes(8, "little") + b'{"__metadata__":', "not a vae-automl weights file"),  # cut short
])
def test_bytes_that_are_no_weights_file_are_refused(data: bytes, message: str) -> None:
    with pytest.raises(ExportError, match=message):
        read_header(data)


def test_a_header_without_our_key_is_refused() -> None:
    meta = json.dumps({"__metadata__": {"other": "{}"}}).encode()
    with pytest.raises(ExportError, match="not a vae-automl weights file"):
        read_header(len(meta).to_bytes(8, "little") + meta)


def test_an_unknown_codec_is_named_with_the_known_ones() -> None:
    model = dense_model()
    model.encodings["mu.bias"] = {"codec": "zstd"}
    with pytest.raises(ExportError, match="tensor 'mu.bias' asks for unknown codec 'zstd'; known: codebook, dense, uniform"):
        serialize_model(model)


# --- the compact container's own boundaries (vae_automl.storage.compact) ---

@pytest.mark.parametrize(("value", "encoded"), [
    (0, b"\x00"), (1, b"\x01"), (127, b"\x7f"), (128, b"\x80\x01"), (300, b"\xac\x02"),
    (16383, b"\xff\x7f"), (16384, b"\x80\x80\x01"),
])
def test_varints_are_leb128(value: int, encoded: bytes) -> None:
    from vae_automl.storage import compact

    assert compact._varint(value) == encoded
    assert compact._read_varint(b"\x00" + encoded + b"\x05", 1) == (value, 1 + len(encoded))
    with pytest.raises(ExportError, match="truncated inside its header"):
        compact._read_varint(encoded[:-1], 0)


def compact_file() -> bytes:
    from vae_automl.storage import compact

    parts = {"": torch.tensor([1, 2, 3], dtype=torch.uint8), "scale": torch.tensor([[0.5, 1.0]], dtype=torch.float16)}
    empty = {"": torch.zeros(0, dtype=torch.uint8)}  # an empty part keeps its dtype
    return compact.write({"architecture": "x"}, [({"bits": 2}, {"m": 1}, parts), ({}, {}, empty)])


def test_compact_container_round_trips_and_states_its_layout() -> None:
    from vae_automl.storage import compact

    data = compact_file()
    assert data[:4] == b"VAC\x03" and compact.is_compact(data) and not compact.is_compact(data[1:])
    config, entries = compact.read(data)
    assert config == {"architecture": "x"}
    (spec, meta, parts), (_, _, empty) = entries
    assert (spec, meta) == ({"bits": 2}, {"m": 1})
    assert parts[""].tolist() == [1, 2, 3] and parts["scale"].shape == (1, 2) and parts["scale"].tolist() == [[0.5, 1.0]]
    assert empty[""].numel() == 0 and empty[""].dtype == torch.uint8
    assert data.endswith(bytes([1, 2, 3]) + torch.tensor([0.5, 1.0], dtype=torch.float16).view(torch.uint8).numpy().tobytes())


def test_a_truncated_or_padded_compact_file_is_refused() -> None:
    from vae_automl.storage import compact

    data = compact_file()
    payload = 3 + 4  # three uint8 codes and two float16 scales
    with pytest.raises(ExportError, match="1 bytes after the last part"):
        compact.read(data + b"\0")
    with pytest.raises(ExportError, match=r"truncated in part 'scale' \(4 bytes, 3 left\)"):
        compact.read(data[:-1])
    with pytest.raises(ExportError, match=r"truncated in part '' \(3 bytes, 2 left\)"):
        compact.read(data[: len(data) - payload + 2])
    length, pos = compact._read_varint(data, 4)
    compact.read(data)  # the header ending exactly where the parts begin is fine
    header_only = compact.write({"architecture": "x"}, [])  # no parts: the header ends exactly at the end of the file
    assert compact.read(header_only) == ({"architecture": "x"}, [])
    with pytest.raises(ExportError, match=f"its header claims {length} bytes, but the file ends first"):
        compact.read(data[: pos + length - 1])
    with pytest.raises(ExportError, match=r"not a compact weights file of a version this one reads \(1, 2, 3\): version byte 4"):
        compact.read(b"VAC\x04" + data[4:])
    with pytest.raises(ExportError, match=r"version byte None"):
        compact.read(b"XYZ\x01" + data[4:])
    with pytest.raises(ExportError, match=r"version byte None"):
        compact.read(b"VAC")  # the magic alone: no version byte to name


def test_version_3_lists_each_distinct_spec_once_and_counts_as_varints() -> None:
    """The listing after the header: tensor count, then per tensor its spec's index and its 1-D parts' counts; a part
    of another shape keeps its shape in the spec (by hand, against the bytes)."""
    from vae_automl.storage import compact

    bias = {"": torch.tensor([7, 8], dtype=torch.uint8)}
    codes = {"": torch.arange(200, dtype=torch.uint8), "grid": torch.ones(2, 3, dtype=torch.float16)}
    entries = [({"b": 6}, {}, bias), ({"k": 2}, {}, codes), ({"b": 6}, {}, {"": torch.tensor([9], dtype=torch.uint8)})]
    data = compact.write({"architecture": "x"}, entries)
    length, pos = compact._read_varint(data, 4)
    header = json.loads(compact._inflate(data[pos : pos + length]))
    assert header["specs"] == [[{"b": 6}, {}, [["", "U8"]]], [{"k": 2}, {}, [["", "U8"], ["grid", "F16", [2, 3]]]]]
    # 3 tensors; spec 0 and its count 2; spec 1 and its count 200 (two varint bytes); spec 0 and its count 1
    assert data[pos + length : pos + length + 8] == bytes([3, 0, 2, 1, 0xC8, 0x01, 0, 1])
    assert data[pos + length + 8 :] == b"".join(p.view(torch.uint8).numpy().tobytes()
                                                for _, _, parts in entries for p in parts.values())
    config, back = compact.read(data)
    assert [(s, m) for s, m, _ in back] == [(s, m) for s, m, _ in entries]
    for (_, _, parts), (_, _, want) in zip(back, entries):
        assert {k: (v.dtype, v.tolist()) for k, v in parts.items()} == {k: (v.dtype, v.tolist()) for k, v in want.items()}
    bad = bytearray(data)
    bad[pos + length + 1] = 5  # the first tensor names a spec the header does not list
    with pytest.raises(ExportError, match="a tensor names spec 5, but the header lists 2"):
        compact.read(bytes(bad))
    with pytest.raises(ExportError, match="truncated inside its header"):
        compact.read(data[: pos + length + 5])  # cut inside the varint 200


@pytest.mark.parametrize(("specs", "message"), [
    ([[{}, {}]], "unreadable spec 0"),
    ([[{}, {}, [["", "U8", [1], 4]]]], r"spec 0 lists a part that is not \[suffix, dtype\(, shape\)\]"),
    ([[{}, {}, [["", "U9"]]]], "part '' has unknown dtype 'U9'"),
])
def test_a_version_3_spec_table_that_is_not_one_is_refused(specs: list, message: str) -> None:
    from vae_automl.storage import compact

    header = compact._deflate(json.dumps({"config": {}, "specs": specs}).encode())
    data = b"VAC\x03" + compact._varint(len(header)) + header + bytes([1, 0, 1]) + b"\x00"
    with pytest.raises(ExportError, match=message):
        compact.read(data)


def test_the_older_versions_write_their_own_layout() -> None:
    """A model loaded from a version 1 or 2 file is saved in that version: the per-tensor JSON listing, no varints."""
    from vae_automl.storage import compact

    entries = [({"b": 6}, {}, {"": torch.tensor([7, 8], dtype=torch.uint8)})]
    for version in (1, 2):
        data = compact.write({"architecture": "x"}, entries, version)
        length, pos = compact._read_varint(data, 4)
        assert json.loads(compact._inflate(data[pos : pos + length], version)) == {
            "config": {"architecture": "x"}, "tensors": [[{"b": 6}, {}, [["", "U8", 2]]]]}
        assert data[pos + length :] == bytes([7, 8])
        assert compact.read(data)[0] == {"architecture": "x"}


def test_theoretical_bits_of_an_entropy_coded_tensor_are_its_coded_bytes() -> None:
    golden = (GOLDEN / "mlp_entropy.safetensors").read_bytes()
    n = int.from_bytes(golden[:8], "little")
    layout = json.loads(golden[8 : 8 + n])
    coded = sum(v["data_offsets"][1] - v["data_offsets"][0] for k, v in layout.items() if k.startswith("decoder.2.weight"))
    model = entropy_model()
    plain = sum(t.numel() for k, t in model.state_dict().items() if k != "decoder.2.weight")  # float32, after it too
    assert theoretical_bits(model, None) == 8 * coded + 32 * plain


class CountingCodec:
    """A codec without mask support whose bit count is one per value it is given (to see what the format passes)."""

    name = "counting"
    supports_mask = False

    def __init__(self) -> None:
        from vae_automl.storage.codecs import DenseCodec

        self.dense = DenseCodec()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.dense, attr)

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        assert mask is None, "a codec without mask support gets the non-zero values only"
        return tensor.numel()


def test_theoretical_bits_use_the_given_codecs_and_give_unmasked_codecs_the_non_zero_values() -> None:
    from vae_automl.storage.codecs import builtin_codecs

    model = dense_model()
    bias = torch.zeros(16)
    bias[[2, 5, 11]] = 1.0
    set_tensor(model, "decoder.2.bias", bias, {"codec": "counting", "sparse": True})
    codecs = {**builtin_codecs(), "counting": CountingCodec()}
    others = sum(t.numel() for k, t in model.state_dict().items() if k != "decoder.2.bias")
    assert theoretical_bits(model, codecs) == 32 * others + 3 + 16  # 3 non-zero values, a 16-position bitmask
    model.encodings["mu.bias"] = {"codec": "zstd"}
    with pytest.raises(ExportError, match="tensor 'mu.bias' asks for unknown codec 'zstd'"):
        theoretical_bits(model, codecs)


def test_mask_bits_count_a_bitmask_without_its_padding() -> None:
    from vae_automl.storage.bits import mask_bits

    ten = torch.zeros(10, dtype=torch.bool)
    ten[3] = True
    assert mask_bits(ten) == 10  # a 2-byte bitmask ties one 16-bit index: the bitmask, counted as 10 bits
    wide = torch.zeros(100, dtype=torch.bool)
    wide[7] = True
    assert mask_bits(wide) == 16  # one 16-bit index beats 13 bytes of bitmask


def test_theoretical_bits_of_a_malformed_entropy_spec_name_the_tensor() -> None:
    model = entropy_model()
    del model.encodings["decoder.2.weight"]["bits"]  # a malformed spec: the codec's KeyError is reported with the name
    with pytest.raises(ExportError, match="tensor 'decoder.2.weight': cannot pack"):
        theoretical_bits(model, None)


class NoMaskDense:
    """A float32 codec without mask support, as a plugin may ship: the format hands it the non-zero values only."""

    name = "nomask"
    supports_mask = False

    def __init__(self) -> None:
        from vae_automl.storage.codecs import DenseCodec

        self.dense = DenseCodec()

    def __getattr__(self, attr: str) -> Any:
        return getattr(self.dense, attr)

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> Any:
        assert mask is None and tensor.dim() == 1, "a codec without mask support gets a 1-D vector of the non-zero values"
        return {"": tensor.contiguous()}, {"n": tensor.numel()}

    def unpack(self, parts: Any, meta: dict[str, Any], shape: list[int], spec: dict[str, Any], mask: Any = None) -> Any:
        assert mask is None and shape == [meta["n"]] and spec == {"codec": "nomask", "sparse": True}
        return parts[""].float().reshape(shape)


class CodecsOnly:
    """A registry stand-in: the given codecs, and the built-in architectures."""

    def __init__(self, codecs: dict[str, Any]) -> None:
        self.codecs = codecs

    def codec_map(self) -> dict[str, Any]:
        return self.codecs

    def build_model(self, config: dict[str, Any]) -> Any:
        return get_registry().build_model(config)


@pytest.mark.parametrize("container", [None, "compact"])
def test_a_codec_without_mask_support_round_trips_a_sparse_tensor_through_the_given_codecs(container: str | None) -> None:
    from vae_automl.storage.codecs import builtin_codecs

    model = dense_model()
    bias = torch.zeros(16)
    bias[[2, 5, 11]] = torch.tensor([0.5, -1.5, 2.0])
    set_tensor(model, "decoder.2.bias", bias, {"codec": "nomask", "sparse": True})
    if container is not None:
        model.container = container
    codecs = {**builtin_codecs(), "nomask": NoMaskDense()}
    data = serialize_model(model, codecs)
    assert data.startswith(b"VAC") == (container == "compact")
    with pytest.raises(ExportError, match="unknown codec 'nomask'"):
        serialize_model(model)  # the built-in codecs alone do not know it
    back = deserialize_model(data, CodecsOnly(codecs))
    for key, tensor in model.state_dict().items():
        assert torch.equal(back.state_dict()[key], tensor), key
    assert back.encodings["decoder.2.bias"] == {"codec": "nomask", "sparse": True}
    assert serialize_model(back, codecs) == data
