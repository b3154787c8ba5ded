"""vae-automl compressors backed by NNI 3.0: ``nni_prune`` and ``nni_quantize``."""

from vae_automl_nni.compressors import NniPruner, NniQuantizer

__all__ = ["NniPruner", "NniQuantizer"]
__version__ = "0.1.0"
