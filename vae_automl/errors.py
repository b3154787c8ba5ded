"""The exception hierarchy: one base class, a subclass per place things go wrong."""

from __future__ import annotations


class VaeAutomlError(Exception):
    """Base of every error vae-automl raises on purpose."""


class ConfigError(VaeAutomlError):
    """A search-space file or an option is invalid; the message names the file and key."""


class PluginError(VaeAutomlError):
    """A plugin misbehaved: duplicate name, unknown name, or a hook that raised."""


class DataError(VaeAutomlError):
    """A dataset could not be found, read or split; the message names the file."""


class TrialFailed(VaeAutomlError):
    """One trial cannot go on (NaN loss, a raising compressor, a time limit); the study continues."""


class ExportError(VaeAutomlError):
    """An artifact could not be written, or what was written does not match the search."""


class IntegrityError(ExportError):
    """An exported file does not match the sha256 recorded in its manifest."""


class CodecError(VaeAutomlError):
    """A codec file or its input is refused: truncated, written by another model, images of the wrong size."""
