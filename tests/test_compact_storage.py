"""The compact container: bit-exact, its length is size_bytes, old safetensors files still load, bad files are refused."""

from __future__ import annotations

import hashlib
import json
import zlib
from pathlib import Path

import pytest
import torch

from vae_automl.builtin.entropy_coding import EntropyCode
from vae_automl.errors import ExportError
from vae_automl.registry import get_registry
from vae_automl.storage import compact
from vae_automl.storage.format import deserialize_model, serialize_model, size_bytes

GOLDEN_V1 = Path(__file__).parent / "data" / "zoo_cnn_compact.bin"
"""Version 1 of the format (written before the preset dictionary grew): it must keep loading, and saving a model
loaded from it must give its bytes again."""
GOLDEN_V2 = Path(__file__).parent / "data" / "zoo_cnn_compact_v2.bin"
"""Version 2 (a larger preset dictionary, still a JSON listing of every tensor): it must keep loading and saving too."""
GOLDEN = Path(__file__).parent / "data" / "zoo_cnn_compact_v3.bin"
"""The current version, 3: the bytes :func:`zoo_model` serializes to."""
ZOO = {
    "activation": "tanh",
    "architecture": "zoo_cnn",
    "conv_channels": [8, 6, 4],
    "conv_kernels": [5, 5, 2],
    "conv_pool": [True, True, False],
    "hidden_widths": [20],
    "input_shape": [1, 28, 28],
    "num_classes": 10,
    "task": "classifier",
}
CODEBOOK = [-0.5, -0.25, -0.125, 0.0625, 0.125, 0.25, 0.5, 1.0]  # exact in float16


def zoo_model(container: str = "compact") -> torch.nn.Module:
    """A zoo CNN as prune + 3-bit k-means + entropy_code leave it, built without randomness (the golden file's model).

    Every third weight is zero (sparse), the rest cycle through a float16
    codebook with a skewed frequency (so entropy coding has work); biases
    stay dense float32.
    """
    model = get_registry().build_model(ZOO)
    with torch.no_grad():
        for name, p in model.named_parameters():
            i = torch.arange(p.numel())
            if name.endswith("weight"):
                idx = (i * i + 3 * i) % 11 % len(CODEBOOK)
                values = torch.where(i % 3 != 0, torch.tensor(CODEBOOK)[idx], 0.0)
                model.encodings[name] = {"codec": "codebook", "bits": 3, "codebook": CODEBOOK, "codebook_dtype": "float16",
                                         "sparse": True}
            else:
                values = (i.float() - 3.0) / 7.0
            p.copy_(values.reshape(p.shape))
    return EntropyCode().apply(model, {"container": container}, None)  # type: ignore[arg-type]  # the stage reads no ctx


def weights_digest(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, t in model.state_dict().items():
        h.update(name.encode() + t.detach().contiguous().numpy().tobytes())
    return h.hexdigest()


def test_compact_round_trip_is_bit_exact_and_its_length_is_size_bytes() -> None:
    registry = get_registry()
    model = zoo_model()
    data = serialize_model(model, registry.codec_map())
    assert data[:4] == b"VAC\x03"
    assert size_bytes(model, registry.codec_map()) == len(data)
    back = deserialize_model(data, registry)
    assert back.container == "compact"
    assert weights_digest(back) == weights_digest(model)
    assert back.encodings == model.encodings
    assert serialize_model(back, registry.codec_map()) == data


def test_a_state_dict_in_another_order_than_the_built_models_round_trips() -> None:
    """Pruning re-registers weights after their biases; the file must not depend on that order."""
    registry = get_registry()
    model = zoo_model()
    for layer in (model.features[0], model.head[0]):
        weight = layer.weight
        del layer.weight
        layer.weight = weight  # now after the bias in the state dict
    assert list(model.state_dict())[:2] == ["features.0.bias", "features.0.weight"]
    data = serialize_model(model, registry.codec_map())
    back = deserialize_model(data, registry)
    assert weights_digest(back) == weights_digest(zoo_model())
    assert serialize_model(back, registry.codec_map()) == data


def test_compact_holds_the_same_parts_as_safetensors_under_a_far_smaller_header() -> None:
    registry = get_registry()
    compact_bytes = serialize_model(zoo_model("compact"), registry.codec_map())
    st_bytes = serialize_model(zoo_model("safetensors"), registry.codec_map())
    assert st_bytes[:3] != b"VAC"  # the default stays safetensors: old readers read it
    st_model, c_model = deserialize_model(st_bytes, registry), deserialize_model(compact_bytes, registry)
    assert st_model.container == "safetensors"
    assert weights_digest(st_model) == weights_digest(c_model)
    # The parts are the same bytes: the difference is all header. safetensors spends ~60 B per part plus its JSON header.
    config, entries = compact.read(compact_bytes)
    payload = sum(p.numel() * p.element_size() for _, _, parts in entries for p in parts.values())
    header_bytes = len(compact_bytes) - payload
    assert config == ZOO
    assert header_bytes < 130
    assert len(st_bytes) - payload > 2500


@pytest.mark.parametrize(("path", "version"), [(GOLDEN_V1, 1), (GOLDEN_V2, 2)])
def test_golden_older_version_files_still_load_and_save_in_their_version(path: Path, version: int) -> None:
    """Files written before version 3 load to the same weights; a model loaded from one is saved in its version
    (so export's check that the file is the search's saved bytes holds for old runs), and coding it anew writes 3."""
    registry = get_registry()
    golden = path.read_bytes()
    assert golden[:4] == b"VAC" + bytes([version])
    model = deserialize_model(golden, registry)
    assert weights_digest(model) == weights_digest(zoo_model())
    assert serialize_model(model, registry.codec_map()) == golden
    recoded = EntropyCode().apply(model, {"container": "compact"}, None)  # type: ignore[arg-type]  # reads no ctx
    assert serialize_model(recoded, registry.codec_map()) == GOLDEN.read_bytes()
    assert len(GOLDEN.read_bytes()) < len(golden)  # the same parts under a shorter header


def test_golden_compact_file_still_loads_to_the_same_weights_and_bytes() -> None:
    """The file in tests/data pins the format (layout, varints, dtype names, the deflate dictionary)."""
    registry = get_registry()
    golden = GOLDEN.read_bytes()
    model = deserialize_model(golden, registry)
    assert weights_digest(model) == weights_digest(zoo_model())
    assert serialize_model(model, registry.codec_map()) == golden
    assert serialize_model(zoo_model(), registry.codec_map()) == golden


def test_header_is_deflated_against_the_fixed_dictionary() -> None:
    data = serialize_model(zoo_model(), get_registry().codec_map())
    length, pos = data[4], 5  # one varint byte: the header is under 128 bytes
    assert length < 128
    with pytest.raises(zlib.error):  # without the preset dictionary the header does not inflate
        zlib.decompress(data[pos : pos + length], -15)
    assert b'"architecture":"zoo_cnn"' in compact._inflate(data[pos : pos + length])


def test_varints_round_trip_at_their_byte_boundaries() -> None:
    for value in (0, 1, 127, 128, 255, 16383, 16384, 2**21 - 1, 2**21, 2**35 + 5):
        encoded = compact._varint(value)
        assert len(encoded) == max(1, (value.bit_length() + 6) // 7)
        assert compact._read_varint(encoded + b"\xff", 0) == (value, len(encoded))


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        (lambda d: d[:-1], "truncated in part"),
        (lambda d: d + b"\x00", "bytes after the last part"),
        (lambda d: d[:4], "truncated inside its header"),
        (lambda d: d[:5] + d[6:], "unreadable header|truncated|after the last part"),
        (lambda d: b"VAC\x04" + d[4:], "version"),
        (lambda d: b"VAC\x00" + d[4:], "version"),
    ],
)
def test_damaged_compact_files_are_refused_clearly(damage: object, message: str) -> None:
    data = serialize_model(zoo_model(), get_registry().codec_map())
    with pytest.raises(ExportError, match=message):
        deserialize_model(damage(data), get_registry())  # type: ignore[operator]


def test_a_config_that_builds_another_model_is_refused() -> None:
    model = zoo_model()
    model.config = {**ZOO, "hidden_widths": [20, 10]}  # one more Linear layer than the parts stored
    data = serialize_model(model, get_registry().codec_map())
    with pytest.raises(ExportError, match="tensors stored, but its config builds a model of"):
        deserialize_model(data, get_registry())


def test_read_header_points_a_compact_file_to_deserialize_model() -> None:
    from vae_automl.storage.header import read_header

    with pytest.raises(ExportError, match="compact weights file.*deserialize_model"):
        read_header(GOLDEN.read_bytes())


def test_unknown_container_is_refused() -> None:
    model = zoo_model()
    model.container = "zip"
    with pytest.raises(ExportError, match="unknown container 'zip'"):
        serialize_model(model, get_registry().codec_map())


def test_a_spec_index_one_past_the_header_s_specs_is_refused_by_name() -> None:
    """The binary listing's first spec index set to exactly the number of specs (the first index out of range)."""
    data = bytearray(compact.write({"a": 1}, [("dense", {}, {"": torch.zeros(3)})]))
    length, pos = compact._read_varint(bytes(data), len(compact.MAGIC) + 1)
    n_specs = len(json.loads(compact._inflate(bytes(data[pos : pos + length])))["specs"])
    count, index_at = compact._read_varint(bytes(data), pos + length)
    assert (count, data[index_at]) == (1, 0)
    data[index_at] = n_specs
    with pytest.raises(ExportError, match=f"names spec {n_specs}, but the header lists {n_specs}"):
        compact.read(bytes(data))


@pytest.mark.parametrize("version", [1, 2])
def test_an_older_version_file_of_no_tensors_ends_exactly_at_its_header(version: int) -> None:
    """Versions 1 and 2 put nothing after the header when there are no tensors: a header ending exactly at the
    file's end is whole, not truncated."""
    data = compact.write({"a": 1}, [], version=version)
    length, pos = compact._read_varint(data, len(compact.MAGIC) + 1)
    assert pos + length == len(data)
    assert compact.read(data) == ({"a": 1}, [])
