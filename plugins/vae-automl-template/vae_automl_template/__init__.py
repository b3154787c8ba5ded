"""A minimal vae-automl compressor plugin: stores weights as float16."""

__version__ = "0.1.0"
