"""The storage format of a model: safetensors with packed tensors and a JSON header.

The byte length of :func:`serialize_model` is the ``size_bytes`` objective,
and ``export`` writes exactly these bytes as ``weights.safetensors`` (or
``weights.vac`` for the compact container, :func:`weights_filename`): one
piece of code decides both, so they cannot disagree.

Each tensor is stored by the codec named in ``model.encodings[name]["codec"]``
(``dense`` float32 when absent; see :mod:`vae_automl.storage.codecs`). Any
spec may add ``"sparse": true``: the positions of the non-zero values are
stored as a bitmask or as 16/32-bit absolute indices or 16-bit deltas,
whichever takes fewest bytes, and only the non-zero values go through the
codec; zeros come back exactly zero.

Any spec may add ``"entropy": true`` (the ``entropy_code`` compressor sets
it): the codes, the mask and the float16 grids the codec and the mask
encoding made are then ANS-coded where that is smaller
(:mod:`vae_automl.storage.entropy`), and decoded back to the very same
parts before the codec unpacks them.

A spec may name another tensor in ``"parts_from"``: loading then also
gives its codec that tensor's parts, under the prefix ``from/`` (a decoder
stored once and shared by several tensors, as ``weight_vae`` does).

Two guarantees hold for every built-in codec, and :func:`pack_model` checks
the second one rather than silently re-quantizing:

* ``serialize_model(deserialize_model(b)) == b``;
* the unpacked float tensor equals the model's tensor exactly (a quantizer
  leaves the dequantized values in the model, and the grid in the spec).

The codecs are passed in (``registry.codec_map()``); left out, only the
built-in ones are known.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import torch
from safetensors.torch import load as st_load
from safetensors.torch import save as st_save

from vae_automl.errors import ExportError
from vae_automl.storage import compact
from vae_automl.storage.bits import decode_mask, encode_mask, mask_bits
from vae_automl.storage.codec import Codec, Parts
from vae_automl.storage.codecs import builtin_codecs, scatter
from vae_automl.storage.entropy import code_parts, decode_parts
from vae_automl.storage.header import FORMAT_VERSION, PART_SEPARATOR, encode_header, read_header

if TYPE_CHECKING:
    from vae_automl.registry import Registry
    from vae_automl.vae import VAE

Codecs = Mapping[str, Codec]

SAFETENSORS, COMPACT = "safetensors", "compact"
CONTAINERS = (SAFETENSORS, COMPACT)
"""Where a model's packed parts go: a safetensors file (the default) or :mod:`vae_automl.storage.compact`."""
SUFFIXES = {SAFETENSORS: ".safetensors", COMPACT: ".vac"}
"""The file extension of each container: a compact file is no safetensors file, so it is not named like one."""
WEIGHTS_FILES = tuple(f"weights{suffix}" for suffix in SUFFIXES.values())
"""The names an exported weights file may have (``weights.safetensors`` or ``weights.vac``)."""


def codec_for(name: str, spec: dict[str, Any], codecs: Codecs) -> Codec:
    """The codec ``spec`` asks for, or an error naming the tensor and the known codecs."""
    codec_name = spec.get("codec", "dense")
    if codec_name not in codecs:
        raise ExportError(f"tensor {name!r} asks for unknown codec {codec_name!r}; known: {', '.join(sorted(codecs))}")
    return codecs[codec_name]


SHARED_PREFIX = "from/"
"""Prefix of the parts of the tensor a spec's ``parts_from`` names, as its codec gets them on load."""


def _pack_tensor(name: str, tensor: torch.Tensor, spec: dict[str, Any], codec: Codec) -> tuple[Parts, dict[str, Any]]:
    try:
        if not spec.get("sparse"):
            parts, meta = codec.pack(tensor, spec)
        else:
            mask = tensor != 0
            mask_data, kind = encode_mask(mask)
            parts, meta = codec.pack(tensor, spec, mask=mask) if codec.supports_mask else codec.pack(tensor[mask], spec)
            parts, meta = {**parts, "mask": mask_data}, {**meta, "mask": kind}
        if spec.get("entropy"):
            parts, meta = code_parts(parts, spec, meta, list(tensor.shape))
        return parts, meta
    except (KeyError, ValueError, TypeError) as exc:
        raise ExportError(f"tensor {name!r}: cannot pack with spec {codec.header_spec(spec)}: {exc!r}") from exc


def _unpack_tensor(parts: Parts, meta: dict[str, Any], spec: dict[str, Any], shape: list[int], codec: Codec) -> torch.Tensor:
    if not spec.get("sparse"):
        return codec.unpack(parts, meta, shape, spec)
    mask = decode_mask(parts.pop("mask"), meta["mask"], math.prod(shape)).reshape(shape)
    if codec.supports_mask:
        return codec.unpack(parts, meta, shape, spec, mask=mask)
    values = codec.unpack(parts, meta, [int(mask.sum())], spec)
    return scatter(values.flatten(), shape, mask)


Entry = tuple[str, list[int], dict[str, Any], dict[str, Any], Parts]
"""One packed model tensor: name, shape, header spec, codec metadata, parts."""


def _pack_entries(model: VAE, codecs: Codecs) -> list[Entry]:
    entries = []
    for name, tensor in model.state_dict().items():
        spec = model.encodings.get(name, {})
        codec = codec_for(name, spec, codecs)
        parts, meta = _pack_tensor(name, tensor.detach().float().cpu(), spec, codec)
        entries.append((name, list(tensor.shape), codec.header_spec(spec), meta, parts))
    return entries


def pack_model(model: VAE, codecs: Codecs | None = None) -> tuple[dict[str, torch.Tensor], dict[str, str]]:
    """The safetensors tensors and metadata that store ``model``."""
    codecs = builtin_codecs() if codecs is None else codecs
    tensors: dict[str, torch.Tensor] = {}
    layout: dict[str, Any] = {}
    for name, shape, header_spec, meta, parts in _pack_entries(model, codecs):
        for suffix, part in parts.items():
            tensors[name + (PART_SEPARATOR + suffix if suffix else "")] = part
        layout[name] = {"spec": header_spec, "meta": meta, "shape": shape}
    return tensors, encode_header(model.config, layout)


def container_of(model: Any) -> str:
    """The container ``model`` is stored in: ``model.container`` (``"safetensors"`` when it has none)."""
    container = getattr(model, "container", SAFETENSORS)
    if container not in CONTAINERS:
        raise ExportError(f"unknown container {container!r}; known: {', '.join(CONTAINERS)}")
    return str(container)


def weights_filename(model: Any) -> str:
    """The exported weights file's name for ``model``'s container: ``weights.safetensors`` or ``weights.vac``."""
    return "weights" + SUFFIXES[container_of(model)]


def serialize_model(model: VAE, codecs: Codecs | None = None) -> bytes:
    """The bytes of the weights file for ``model``, in the container ``model.container`` names
    (:func:`weights_filename` names the file)."""
    if container_of(model) == COMPACT:
        # In name order: a state dict's order is not the built model's after a parameter is re-registered (pruning does).
        entries = sorted(_pack_entries(model, builtin_codecs() if codecs is None else codecs), key=lambda e: e[0])
        # A model loaded from an older compact file is written in that file's version: loading and saving give its bytes.
        version = getattr(model, "compact_version", None) or compact.VERSION
        return compact.write(model.config, [(spec, meta, parts) for _, _, spec, meta, parts in entries], version)
    tensors, metadata = pack_model(model, codecs)
    return st_save(tensors, metadata=metadata)


def size_bytes(model: VAE, codecs: Codecs | None = None) -> int:
    """Exactly ``len(serialize_model(model))``: the size objective and the exported file's length."""
    return len(serialize_model(model, codecs))


def theoretical_bits(model: VAE, codecs: Codecs | None = None) -> int:
    """Information bits of the encodings: codes, scales, zero points, codebooks and sparse masks.

    Headers, shapes, alignment and the padding of the last byte of a packed
    tensor are left out; an entropy-coded tensor counts its coded bytes.
    """
    codecs = builtin_codecs() if codecs is None else codecs
    total = 0
    for name, tensor in model.state_dict().items():
        spec = model.encodings.get(name, {})
        codec = codec_for(name, spec, codecs)
        t = tensor.detach().float().cpu()
        if spec.get("entropy"):
            # Coded parts have no fixed bits per value: their length is the information they carry.
            parts, _ = _pack_tensor(name, t, spec, codec)
            total += 8 * sum(p.numel() * p.element_size() for p in parts.values())
            continue
        if not spec.get("sparse"):
            total += codec.theoretical_bits(t, spec)
            continue
        mask = t != 0
        values_bits = codec.theoretical_bits(t, spec, mask=mask) if codec.supports_mask else codec.theoretical_bits(t[mask], spec)
        total += values_bits + mask_bits(mask)
    return total


def deserialize_model(data: bytes, registry: Registry) -> VAE:
    """Rebuild a model from :func:`serialize_model` bytes (no pickle involved).

    ``registry`` builds the model from the stored config and gives the codecs.
    """
    if compact.is_compact(data):
        layout, stored, model = _read_compact(data, registry)
    else:
        header = read_header(data)
        if header.get("format") != FORMAT_VERSION:
            raise ExportError(f"weights format {header.get('format')!r} is not the supported {FORMAT_VERSION}")
        layout, stored = header["tensors"], st_load(data)
        model = registry.build_model(header["config"])
    codecs = registry.codec_map()
    state = {}

    def parts_of(name: str) -> Parts:
        prefix = name + PART_SEPARATOR
        parts = {key[len(prefix) :]: t for key, t in stored.items() if key.startswith(prefix)}
        if name in stored:
            parts[""] = stored[name]
        return parts

    for name, entry in layout.items():
        parts = parts_of(name)
        if entry["spec"].get("entropy"):
            parts = decode_parts(parts, entry["spec"], entry["meta"], entry["shape"])
        source = entry["spec"].get("parts_from")
        if source is not None:
            if source not in layout:
                raise ExportError(f"tensor {name!r} takes parts from {source!r}, which the file does not hold")
            parts.update({SHARED_PREFIX + key: t for key, t in parts_of(source).items()})
        codec = codec_for(name, entry["spec"], codecs)
        spec = codec.full_spec(parts, entry["spec"])
        state[name] = _unpack_tensor(dict(parts), entry["meta"], spec, entry["shape"], codec)
        if spec:
            model.encodings[name] = spec
    model.load_state_dict(state)
    return model.eval()


def _read_compact(data: bytes, registry: Registry) -> tuple[dict[str, Any], dict[str, torch.Tensor], VAE]:
    """A compact container as the safetensors path sees a file: the header's tensor layout, the stored parts by name,
    the model.

    The tensor names and shapes are the ones of the model its config builds, in name order.
    """
    config, entries = compact.read(data)
    model = registry.build_model(config)
    model.container = COMPACT  # re-serializing must give these bytes again
    model.compact_version = compact.version_of(data)
    state = model.state_dict()
    if len(entries) != len(state):
        raise ExportError(f"compact weights file: {len(entries)} tensors stored, but its config builds a model of {len(state)}")
    layout: dict[str, Any] = {}
    stored: dict[str, torch.Tensor] = {}
    for (name, tensor), (spec, meta, parts) in zip(sorted(state.items()), entries):
        layout[name] = {"spec": spec, "meta": meta, "shape": list(tensor.shape)}
        for suffix, part in parts.items():
            stored[name + (PART_SEPARATOR + suffix if suffix else "")] = part
    return layout, stored, model
