"""Built-in exporters: packed safetensors weights, ONNX (int8 where the model is 8-bit), torch.export (.pt2), TorchScript."""

from __future__ import annotations

import warnings
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from vae_automl import packing
from vae_automl.components import Exporter
from vae_automl.errors import ExportError
from vae_automl.plugin_manager import hookimpl
from vae_automl.storage.format import weights_filename
from vae_automl.vae import VAE


class SafetensorsExporter(Exporter):
    name = "safetensors"
    filename = "weights.safetensors"
    help = "packed low-bit / sparse weights (weights.vac in the compact container); byte length equals size_bytes"

    def filename_for(self, model: VAE) -> str:
        return weights_filename(model)

    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        Path(path).write_bytes(packing.serialize_model(model))

    def remeasure(self, path: str, model: VAE, ctx: Any, record: Any) -> dict[str, Any]:
        # deferred: export imports the study stack, which only `vae-automl export` needs
        from vae_automl.export import remeasure_safetensors

        return remeasure_safetensors(ctx, record, Path(path))


class OnnxExporter(Exporter):
    name = "onnx"
    filename = "model.onnx"
    help = (
        "VAEs: one graph (x, z) -> (mu, logvar, decoded), MatMulInteger/ConvInteger where weights are 8-bit; "
        "classifiers: x -> logits"
    )

    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        # deferred: onnx and onnxruntime load only when a model is exported or deployed
        from vae_automl.runtime import GRAPH_VAE, export_classifier_onnx, export_onnx

        Path(path).write_bytes(export_onnx(model, GRAPH_VAE) if isinstance(model, VAE) else export_classifier_onnx(model))

    def remeasure(self, path: str, model: VAE, ctx: Any, record: Any) -> dict[str, Any]:
        # deferred: export imports the study stack, which only `vae-automl export` needs
        from vae_automl.export import remeasure_onnx

        return remeasure_onnx(ctx, record, Path(path), model)


class TorchExportExporter(Exporter):
    name = "pt2"
    filename = "model.pt2"
    help = (
        "torch.export program, run with torch.export.load(path).module(); VAEs: (x, z) -> (mu, logvar, decoded), "
        "as the ONNX graph; classifiers: x -> logits"
    )

    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        # deferred: runtime imports onnx helpers, needed only when a model is exported
        from vae_automl.runtime import export_program

        torch.export.save(export_program(model), path)

    def remeasure(self, path: str, model: VAE, ctx: Any, record: Any) -> dict[str, Any]:
        # deferred: export imports the study stack, which only `vae-automl export` needs
        from vae_automl.export import remeasure_pt2

        return remeasure_pt2(ctx, record, Path(path), model)


class TorchScriptExporter(Exporter):
    name = "torchscript"
    filename = "model.pt"
    help = (
        "traced TorchScript module; VAEs: forward (reconstruct logits), encode and decode methods; classifiers: forward (logits)"
    )

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


@hookimpl
def register_exporters(register: Callable[[Exporter], None]) -> None:
    register(SafetensorsExporter())
    register(OnnxExporter())
    register(TorchExportExporter())
    register(TorchScriptExporter())
