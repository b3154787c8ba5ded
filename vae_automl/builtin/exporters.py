"""Built-in exporters: packed safetensors weights."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import torch

from vae_automl import packing
from vae_automl.components import Exporter
from vae_automl.plugin_manager import hookimpl
from vae_automl.vae import VAE


class SafetensorsExporter(Exporter):
    name = "safetensors"
    filename = "weights.safetensors"
    help = "packed low-bit / sparse weights; byte length equals size_bytes"

    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        Path(path).write_bytes(packing.serialize_model(model))


@hookimpl
def register_exporters(register: Callable[[Exporter], None]) -> None:
    register(SafetensorsExporter())
