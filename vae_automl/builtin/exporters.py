"""Built-in exporters: packed safetensors weights, ONNX (int8 where the model is 8-bit), torch.export (.pt2), TorchScript.

The writers and the re-measurements (torch, onnx) are in :mod:`vae_automl.builtin.exporters_impl`,
imported when a model is exported.
"""

from __future__ import annotations

from collections.abc import Callable

from vae_automl.components import Exporter, code_module_getattr, implemented_in
from vae_automl.plugin_manager import hookimpl

IMPL = "vae_automl.builtin.exporters_impl"
__getattr__ = code_module_getattr(__name__, IMPL)  # the code's names, as imported from here before 0.3


class SafetensorsExporter(Exporter):
    name = "safetensors"
    filename = "weights.safetensors"
    help = "packed low-bit / sparse weights (weights.vac in the compact container); byte length equals size_bytes"
    filename_for = implemented_in(f"{IMPL}:SafetensorsExporterCode")
    export = implemented_in(f"{IMPL}:SafetensorsExporterCode")
    remeasure = implemented_in(f"{IMPL}:SafetensorsExporterCode")


class OnnxExporter(Exporter):
    name = "onnx"
    filename = "model.onnx"
    help = (
        "VAEs: one graph (x, z) -> (mu, logvar, decoded), MatMulInteger/ConvInteger where weights are 8-bit; "
        "classifiers: x -> logits"
    )
    export = implemented_in(f"{IMPL}:OnnxExporterCode")
    remeasure = implemented_in(f"{IMPL}:OnnxExporterCode")


class TorchExportExporter(Exporter):
    name = "pt2"
    filename = "model.pt2"
    help = (
        "torch.export program, run with torch.export.load(path).module(); VAEs: (x, z) -> (mu, logvar, decoded), "
        "as the ONNX graph; classifiers: x -> logits"
    )
    export = implemented_in(f"{IMPL}:TorchExportExporterCode")
    remeasure = implemented_in(f"{IMPL}:TorchExportExporterCode")


class TorchScriptExporter(Exporter):
    name = "torchscript"
    filename = "model.pt"
    help = (
        "traced TorchScript module; VAEs: forward (reconstruct logits), encode and decode methods; classifiers: forward (logits)"
    )
    export = implemented_in(f"{IMPL}:TorchScriptExporterCode")
    remeasure = implemented_in(f"{IMPL}:TorchScriptExporterCode")


@hookimpl
def register_exporters(register: Callable[[Exporter], None]) -> None:
    register(SafetensorsExporter())
    register(OnnxExporter())
    register(TorchExportExporter())
    register(TorchScriptExporter())
