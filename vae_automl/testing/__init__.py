"""Test suites that plugin authors run on their own components (``pytest`` is needed to use them)."""

from vae_automl.testing.architectures import ArchitectureContract, registry_with_architecture
from vae_automl.testing.compressors import CompressorContract, make_context, registry_with, tiny_model

__all__ = [
    "ArchitectureContract",
    "CompressorContract",
    "make_context",
    "registry_with",
    "registry_with_architecture",
    "tiny_model",
]
