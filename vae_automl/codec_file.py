"""Codec files: many images' bitstreams in one container, tied to the model that wrote them.

Layout (little-endian)::

    magic      8 bytes  b"VAECODEC"
    version    1 byte   CONTAINER_VERSION
    model      32 bytes sha256 of the model's weights file (weights.safetensors or weights.vac)
    shape      3 x u16  C, H, W of every image
    count      u32      number of images
    then, per image: its bitstream's length as a LEB128 varint, then the bitstream
    (:meth:`vae_automl.codec.CodecVAE.encode_latents`: a header byte and the range coder's bytes).

A file is refused, with the reason, when its magic or version is wrong, when
another model wrote it, when it ends early, or when bytes follow the last
image. Files are written atomically: a failure leaves no partial file.
"""

from __future__ import annotations

import hashlib
import io
import struct
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from vae_automl import packing
from vae_automl.codec import CodecVAE
from vae_automl.data import to_unit_float
from vae_automl.errors import CodecError, DataError
from vae_automl.files import write_atomic
from vae_automl.registry import get_registry
from vae_automl.storage.format import WEIGHTS_FILES, weights_filename

MAGIC = b"VAECODEC"
CONTAINER_VERSION = 1
_HEAD = struct.Struct("<8sB32s3HI")


@dataclass(frozen=True)
class CodecModel:
    """A codec model and the sha256 of the weights file it was loaded from (recorded in every file it writes)."""

    model: CodecVAE
    sha256: str
    path: Path


@dataclass(frozen=True)
class EncodeResult:
    path: Path
    n_images: int
    file_bytes: int
    bitstream_bytes: list[int]

    @property
    def bytes_per_image(self) -> float:
        """Mean length of the per-image bitstreams (container framing excluded)."""
        return float(np.mean(self.bitstream_bytes))


def save_codec_model(model: CodecVAE, directory: str | Path) -> Path:
    """Write ``directory/weights.safetensors`` (``weights.vac`` in the compact container), atomically, for
    :func:`load_codec_model`; returns its path."""

    if int(model.config.get("table_symbols", 0)) == 0:
        model.build_tables()
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / weights_filename(model)
    write_atomic(path, packing.serialize_model(model))
    return path


def load_codec_model(model_dir: str | Path, plugins: tuple[str, ...] = ()) -> CodecModel:
    """The codec model of ``model_dir``: an export folder (checked against its manifest) or a folder with
    weights.safetensors or weights.vac."""

    directory = Path(model_dir)
    path = next((directory / name for name in WEIGHTS_FILES if (directory / name).is_file()), directory / WEIGHTS_FILES[0])
    if (directory / "manifest.json").is_file():
        # deferred: loading imports export, which imports this module's users
        from vae_automl.loading import load, read_manifest, weights_file

        model = load(directory, plugins)
        path = weights_file(directory, read_manifest(directory))
    elif path.is_file():
        model = packing.deserialize_model(path.read_bytes(), get_registry(plugins))
    else:
        raise CodecError(
            f"{directory}: no {' or '.join(WEIGHTS_FILES)}; give a folder written by `vae-automl export` or save_codec_model"
        )
    if not isinstance(model, CodecVAE):
        raise CodecError(
            f"{path}: the model ({model.config.get('architecture')!r}) is not a codec; "
            "train one with task: codec (e.g. search_spaces/mnist_codec.yaml)"
        )
    return CodecModel(model.eval(), hashlib.sha256(path.read_bytes()).hexdigest(), path)


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte, n = n & 0x7F, n >> 7
        out.append(byte | (0x80 if n else 0))
        if not n:
            return bytes(out)


def _read_varint(data: memoryview, pos: int, where: str) -> tuple[int, int]:
    value, shift = 0, 0
    while True:
        if pos >= len(data):
            raise CodecError(f"{where}: truncated (the file ends inside a length field)")
        byte = data[pos]
        pos += 1
        value |= (byte & 0x7F) << shift
        if not byte & 0x80:
            return value, pos
        shift += 7
        if shift > 28:
            raise CodecError(f"{where}: corrupt length field")


def as_model_images(images: np.ndarray, model: CodecVAE, source: str) -> torch.Tensor:
    """uint8 or [0, 1] images, ``N x H x W`` or ``N x C x H x W``, as a float tensor of the model's input shape."""

    try:
        x = to_unit_float(np.asarray(images), source)
    except DataError as exc:
        raise CodecError(str(exc)) from None
    if tuple(x.shape[1:]) != model.input_shape:
        got = "x".join(map(str, x.shape[1:]))
        raise CodecError(f"{source}: images of shape {got}, but the model codes {'x'.join(map(str, model.input_shape))} images")
    return torch.from_numpy(np.ascontiguousarray(x))


def encode_images(codec: CodecModel, images: np.ndarray, source: str = "images") -> tuple[bytes, list[int]]:
    """The container bytes of ``images``, and each image's bitstream length."""
    model = codec.model
    x = as_model_images(images, model, source)
    streams = model.encode_latents(model.latents(x.to(model.table_offsets.device)))
    c, h, w = model.input_shape
    out = io.BytesIO()
    out.write(_HEAD.pack(MAGIC, CONTAINER_VERSION, bytes.fromhex(codec.sha256), c, h, w, len(streams)))
    for s in streams:
        out.write(_varint(len(s)))
        out.write(s)
    return out.getvalue(), [len(s) for s in streams]


def decode_bytes(codec: CodecModel, data: bytes, source: str = "file") -> np.ndarray:
    """The images (uint8, ``N x C x H x W``) of a container written by :func:`encode_images` with the same model."""
    if len(data) < _HEAD.size:
        raise CodecError(
            f"{source}: truncated or not a codec file ({len(data)} bytes, shorter than the {_HEAD.size}-byte header)"
        )
    magic, version, digest, c, h, w, count = _HEAD.unpack_from(data)
    if magic != MAGIC:
        raise CodecError(f"{source}: not a vae-automl codec file (magic {magic!r})")
    if version != CONTAINER_VERSION:
        raise CodecError(f"{source}: container version {version} is not the supported {CONTAINER_VERSION}")
    if digest.hex() != codec.sha256:
        raise CodecError(
            f"{source}: written by another model (sha256 {digest.hex()[:16]}...), "
            f"not by {codec.path} (sha256 {codec.sha256[:16]}...)"
        )
    if (c, h, w) != codec.model.input_shape:
        raise CodecError(f"{source}: images of {c}x{h}x{w}, but the model codes {codec.model.input_shape}")
    view, pos, streams = memoryview(data), _HEAD.size, []
    for i in range(count):
        n, pos = _read_varint(view, pos, source)
        if pos + n > len(data):
            raise CodecError(f"{source}: truncated: image {i + 1} of {count} needs {n} bytes, {len(data) - pos} remain")
        streams.append(bytes(view[pos : pos + n]))
        pos += n
    if pos != len(data):
        raise CodecError(f"{source}: {len(data) - pos} unexpected bytes after the last of {count} images")
    try:
        latents = codec.model.decode_latents(streams)
    except ValueError as exc:
        raise CodecError(f"{source}: {exc}") from None
    images = codec.model.images_from_latents(latents)
    return torch.round(images.clamp(0, 1) * 255).to(torch.uint8).numpy()


def read_images(path: str | Path) -> np.ndarray:
    """Images from an ``.npz`` (its first array, or ``PATH#KEY``) or an IDX file (``.gz`` or not)."""
    text = str(path)
    # the registered npz / idx datasets read the files, as for a search
    loader = get_registry().datasets.get("npz" if text.partition("#")[0].endswith(".npz") else "idx")
    try:
        return np.asarray(loader.load(text, None, False))
    except DataError as exc:
        raise CodecError(str(exc)) from None


def encode_file(model_dir: str | Path, images: str | Path, out: str | Path, plugins: tuple[str, ...] = ()) -> EncodeResult:
    """Encode the images of ``images`` (.npz or IDX) with the codec of ``model_dir`` into the file ``out``."""
    codec = load_codec_model(model_dir, plugins)
    data, lengths = encode_images(codec, read_images(images), source=str(images))
    out = Path(out)
    write_atomic(out, data)
    return EncodeResult(out, len(lengths), len(data), lengths)


def decode_file(model_dir: str | Path, file: str | Path, out: str | Path, plugins: tuple[str, ...] = ()) -> np.ndarray:
    """Decode ``file`` with the codec of ``model_dir``; write the images (uint8, key ``images``) to ``out`` (.npz)."""
    codec = load_codec_model(model_dir, plugins)
    path = Path(file)
    try:
        data = path.read_bytes()
    except OSError as exc:
        raise CodecError(f"{path}: cannot read: {exc.strerror}") from None
    images = decode_bytes(codec, data, source=str(path))
    squeezed = images[:, 0] if images.shape[1] == 1 else images
    buffer = io.BytesIO()
    np.savez(buffer, images=squeezed)
    write_atomic(Path(out), buffer.getvalue())
    return squeezed
