"""The code of the built-in exporters (:mod:`vae_automl.builtin.exporters` declares them): writing and re-measuring each file."""

from __future__ import annotations

import warnings
from pathlib import Path
from typing import Any

import torch

from vae_automl import packing
from vae_automl.builtin.exporters import (
    OnnxExporter,
    SafetensorsExporter,
    TorchExportExporter,
    TorchScriptExporter,
)
from vae_automl.errors import ExportError
from vae_automl.storage.format import weights_filename
from vae_automl.vae import VAE


class SafetensorsExporterCode(SafetensorsExporter):
    """The work of :class:`~vae_automl.builtin.exporters.SafetensorsExporter`."""

    def filename_for(self, model: VAE) -> str:
        return weights_filename(model)

    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        Path(path).write_bytes(packing.serialize_model(model))

    def remeasure(self, path: str, model: VAE, ctx: Any, record: Any) -> dict[str, Any]:
        # deferred: export imports the study stack, which only `vae-automl export` needs
        from vae_automl.export import remeasure_safetensors

        return remeasure_safetensors(ctx, record, Path(path))


class OnnxExporterCode(OnnxExporter):
    """The work of :class:`~vae_automl.builtin.exporters.OnnxExporter`."""

    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        # deferred: onnx and onnxruntime load only when a model is exported or deployed
        from vae_automl.runtime import GRAPH_VAE, export_classifier_onnx, export_onnx

        Path(path).write_bytes(export_onnx(model, GRAPH_VAE) if isinstance(model, VAE) else export_classifier_onnx(model))

    def remeasure(self, path: str, model: VAE, ctx: Any, record: Any) -> dict[str, Any]:
        # deferred: export imports the study stack, which only `vae-automl export` needs
        from vae_automl.export import remeasure_onnx

        return remeasure_onnx(ctx, record, Path(path), model)


class TorchExportExporterCode(TorchExportExporter):
    """The work of :class:`~vae_automl.builtin.exporters.TorchExportExporter`."""

    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        # deferred: runtime imports onnx helpers, needed only when a model is exported
        from vae_automl.runtime import export_program

        torch.export.save(export_program(model), path)

    def remeasure(self, path: str, model: VAE, ctx: Any, record: Any) -> dict[str, Any]:
        # deferred: export imports the study stack, which only `vae-automl export` needs
        from vae_automl.export import remeasure_pt2

        return remeasure_pt2(ctx, record, Path(path), model)


class TorchScriptExporterCode(TorchScriptExporter):
    """The work of :class:`~vae_automl.builtin.exporters.TorchScriptExporter`."""

    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        # deferred: onnx and onnxruntime load only when a model is exported or deployed
        from vae_automl.runtime import ReconstructModule

        if not hasattr(torch.jit, "trace_module"):
            # kept as long as torch ships TorchScript; pt2 is its successor
            raise ExportError(f"torch {torch.__version__} no longer ships TorchScript: export --formats pt2 instead")

        model = model.eval()
        device = next(model.parameters()).device
        x = example.to(device)
        with warnings.catch_warnings():
            # torch.jit is deprecated upstream but still the format a C++/LibTorch user loads.
            warnings.simplefilter("ignore")
            if isinstance(model, VAE):
                z = torch.zeros(len(x), model.latent_dim, device=device)
                traced = torch.jit.trace_module(ReconstructModule(model), {"forward": x, "encode": x, "decode": z})
            else:
                traced = torch.jit.trace(model, x)
            torch.jit.save(traced, path)

    def remeasure(self, path: str, model: VAE, ctx: Any, record: Any) -> dict[str, Any]:
        # deferred: export imports the study stack, which only `vae-automl export` needs
        from vae_automl.export import remeasure_torchscript

        return remeasure_torchscript(ctx, record, Path(path), model)
