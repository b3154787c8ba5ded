"""The codec contract: how one tensor is stored in ``weights.safetensors``.

Every codec, built-in or from a plugin, implements :class:`Codec` and is
registered through the ``register_codecs`` hook (see
:mod:`vae_automl.hookspecs`). A model names a tensor's codec in
``model.encodings[name]["codec"]`` (``"dense"`` when absent).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Protocol, runtime_checkable

if TYPE_CHECKING:
    import torch

Parts = dict[str, "torch.Tensor"]
"""The tensors one codec stores for one model tensor: suffix -> tensor (``""`` is the main part)."""


@runtime_checkable
class Codec(Protocol):
    """How one tensor is stored: what :mod:`vae_automl.storage.format` calls, and nothing else.

    Two guarantees every codec keeps (``vae_automl.testing`` checks them for
    the compressors that use it):

    * unpacking gives back exactly the model's float tensor (a lossy codec
      refuses a tensor that is not on the grid of its spec, rather than
      re-quantizing it silently);
    * repacking an unpacked tensor gives the same bytes.

    Sparse specs (``"sparse": true``): the format stores the positions of the
    non-zero values itself. A codec with ``supports_mask = True`` gets the
    full tensor and the bool ``mask`` and stores only the masked values in
    row-major order; with ``supports_mask = False`` it gets the 1-D vector of
    non-zero values and ``mask=None``, and the format scatters them back.

    Attributes:
        name: what ``encodings[...]["codec"]`` says to select this codec.
        supports_mask: whether ``pack``/``unpack``/``theoretical_bits`` take a mask.
    """

    name: str
    supports_mask: bool

    def header_spec(self, spec: dict[str, Any]) -> dict[str, Any]:
        """The spec as written in the file's JSON header.

        Args:
            spec: the in-memory encoding spec of one tensor.

        Returns:
            The JSON-serializable part of ``spec`` kept in the header; what is
            left out (a grid of floats, say) must be stored in the parts and
            given back by :meth:`full_spec`. Return ``spec`` to keep it all.
        """

    def full_spec(self, parts: Parts, header_spec: dict[str, Any]) -> dict[str, Any]:
        """The inverse of :meth:`header_spec`.

        Args:
            parts: the stored parts of the tensor (as :meth:`pack` made them).
            header_spec: the spec read from the header.

        Returns:
            The in-memory spec, equal to the one the model had when packed.
        """

    def pack(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> tuple[Parts, dict[str, Any]]:
        """Encode one float32 tensor.

        Args:
            tensor: the float32 CPU tensor (the non-zero values only, 1-D,
                for a sparse spec when ``supports_mask`` is False).
            spec: the tensor's encoding spec.
            mask: the bool mask of the values to store (sparse specs, and
                only when ``supports_mask``), else None.

        Returns:
            The parts to store and the JSON metadata :meth:`unpack` needs.

        Raises:
            ExportError: the tensor cannot be stored exactly by this spec.
            KeyError, ValueError, TypeError: a malformed spec (the format
                reports it with the tensor's name).
        """

    def unpack(
        self, parts: Parts, meta: dict[str, Any], shape: list[int], spec: dict[str, Any], mask: torch.Tensor | None = None
    ) -> torch.Tensor:
        """Decode one tensor.

        Args:
            parts: the stored parts (as :meth:`pack` returned them).
            meta: the metadata :meth:`pack` returned.
            shape: the shape to return (``[nnz]`` for a sparse spec when
                ``supports_mask`` is False).
            spec: the full in-memory spec (after :meth:`full_spec`).
            mask: as given to :meth:`pack`.

        Returns:
            The float32 tensor of ``shape``, zero where ``mask`` is False.
        """

    def theoretical_bits(self, tensor: torch.Tensor, spec: dict[str, Any], mask: torch.Tensor | None = None) -> int:
        """Information bits the encoding needs, without container overhead or padding.

        Args: as for :meth:`pack`.

        Returns:
            The bits of the codes and of any grid (scales, codebooks); the
            format adds the bits of a sparse mask itself.
        """
