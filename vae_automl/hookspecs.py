"""The plugin contract of vae-automl: every hook a plugin may implement.

A plugin is a module (or object) with functions decorated by
``vae_automl.hookimpl`` and named like the specs below. Built-in components
come in through these same hooks, from the modules in
``vae_automl.plugin_manager.DEFAULT_PLUGINS``.

Registration hooks receive a ``register`` callable and call it once per
component; the registry records which plugin registered what, so that a
duplicate name is reported with both plugins named.

The registered instance is a declaration first: ``vae-automl plugins`` lists
it and the YAML loader checks spaces against it (name, ``params``, help,
stage, the light methods such as ``config_from_params``). Its work methods
(``build``, ``apply``, ``measure``, ``loss``, ``export``...) may be resolved
lazily: a class attribute ``apply = implemented_in("pkg.module:CodeClass")``
(:func:`vae_automl.components.implemented_in`, added in 0.3) imports
``pkg.module`` the first time ``apply`` is called and runs
``CodeClass.apply`` on the registered instance. The built-ins do this so
that listing them imports no torch; a plugin that defines its methods in
place keeps working unchanged.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:
    from vae_automl.components import Architecture, Compressor, Dataset, Exporter, Objective, Task
    from vae_automl.record import TrialRecord
    from vae_automl.storage.codec import Codec

hookspec = pluggy.HookspecMarker("vae_automl")


@hookspec
def register_architectures(register: Callable[[Architecture], None]) -> None:
    """Register VAE architectures (model families the search can build).

    Called once, when the registry is first built (at the start of a search,
    a worker, ``vae-automl plugins`` or an export).

    Args:
        register: call with one :class:`vae_automl.components.Architecture`
            instance per architecture. Its ``name`` is what search spaces use
            under ``architecture:``.

    Returns:
        Nothing; the return value is ignored.

    Added in 0.1.
    """


@hookspec
def register_compressors(register: Callable[[Compressor], None]) -> None:
    """Register compressors (quantizers, pruners, distillers, ...).

    Called once, when the registry is first built.

    Args:
        register: call with one :class:`vae_automl.components.Compressor`
            instance per compressor. Its ``name`` is what search spaces use
            under ``compressors:``; its ``stage`` places it in the pipeline
            (distill, then prune, then quantize); its ``takes`` and
            ``gives`` (0.2) say which stages may come before and after it.

    Returns:
        Nothing; the return value is ignored.

    Added in 0.1.
    """


@hookspec
def register_objectives(register: Callable[[Objective], None]) -> None:
    """Register objectives (measured figures the search can optimize).

    Called once, when the registry is first built.

    Args:
        register: call with one :class:`vae_automl.components.Objective`
            instance per objective; its ``direction`` is ``"minimize"`` or
            ``"maximize"``.

    Returns:
        Nothing; the return value is ignored.

    Added in 0.1.
    """


@hookspec
def register_datasets(register: Callable[[Dataset], None]) -> None:
    """Register dataset loaders.

    Called once, when the registry is first built.

    Args:
        register: call with one :class:`vae_automl.components.Dataset`
            instance per loader. A dataset spec ``NAME`` or ``NAME:ARG``
            (for example ``npz:/data/x.npz#images``) selects it by ``NAME``.

    Returns:
        Nothing; the return value is ignored.

    Added in 0.1.
    """


@hookspec
def register_exporters(register: Callable[[Exporter], None]) -> None:
    """Register exporters (artifact formats written by ``vae-automl export``).

    Called once, when the registry is first built.

    Args:
        register: call with one :class:`vae_automl.components.Exporter`
            instance per format (for example ``onnx``, ``torchscript``).

    Returns:
        Nothing; the return value is ignored.

    Added in 0.1.
    """


@hookspec
def register_tasks(register: Callable[[Task], None]) -> None:
    """Register tasks (what a model is trained for: ``vae``, ``codec``, ...).

    Called once, when the registry is first built.

    Args:
        register: call with one :class:`vae_automl.components.Task` instance
            per task. Its ``name`` is what search spaces give as ``task:``;
            the trainer steps on its ``loss`` and stops early on its
            ``validation_loss``.

    Returns:
        Nothing; the return value is ignored.

    Added in 0.2.
    """


@hookspec
def register_codecs(register: Callable[[Codec], None]) -> None:
    """Register storage codecs (how a tensor is stored in ``weights.safetensors``).

    Called once, the first time the registry's codecs are asked for (a model
    is stored, measured or loaded); since 0.3 not when the registry is built,
    so that listing the components loads no codec (codecs are torch code). A
    duplicate codec name is reported then. A compressor whose
    encodings need a format of its own registers its codec here, from the
    same plugin.

    Args:
        register: call with one object implementing
            :class:`vae_automl.storage.codec.Codec` per codec. Its ``name``
            is what ``model.encodings[tensor]["codec"]`` names.

    Returns:
        Nothing; the return value is ignored.

    Added in 0.2 (replaces ``vae_automl.packing.register_codec``).
    """


@hookspec
def on_trial_complete(record: TrialRecord) -> None:
    """Observe a trial that finished measuring, before it is told to the study.

    Called in the process that ran the trial, once per successful trial,
    after every objective was measured. An exception raised here fails
    that trial alone (its failure reason names the plugin); the study goes on.

    Args:
        record: the :class:`vae_automl.record.TrialRecord`: ``trial``
            (number), ``params`` (the sampled parameters), ``config`` (the
            resolved trial config), ``objectives`` (name -> value),
            ``metrics`` (every measured figure, objectives included),
            ``artifact`` (the saved model's path) and more. A dataclass
            since 0.2; ``record["metrics"]`` and ``record.get("metrics")``
            still read it as the 0.1 dict did.

    Returns:
        Nothing; the return value is ignored.

    Added in 0.1; the record is a ``TrialRecord`` since 0.2.
    """


@hookspec
def on_search_complete(front: list[dict[str, Any]]) -> None:
    """Observe the Pareto front when a search (or a worker's share) ends.

    Called once in the process that ran ``search``, after the last trial.
    An exception raised here is reported, naming the plugin; no trial is
    lost since every trial is already stored.

    Args:
        front: one dict per non-dominated trial, with keys ``trial``,
            ``params`` and ``objectives`` (name -> value).

    Returns:
        Nothing; the return value is ignored.

    Added in 0.1.
    """
