"""The kinds of component a plugin registers, as abstract base classes.

A plugin subclasses one of these and passes an instance to the matching
``register`` callable (see :mod:`vae_automl.hookspecs`).
"""

from __future__ import annotations

import abc
import importlib
import math
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, ClassVar, Literal

if TYPE_CHECKING:
    import numpy as np
    import torch

    from vae_automl.data import DataSplits
    from vae_automl.layers import ChannelGroup
    from vae_automl.registry import Registry
    from vae_automl.train import TrainConfig
    from vae_automl.vae import VAE

ParamType = Literal["int", "float", "categorical", "bool"]
_EXPONENT_NUMBER = re.compile(r"[-+]?(\d+\.?\d*|\.\d+)[eE][-+]?\d+")
"""A number YAML 1.1 leaves as a string (``1e-3``, ``5E+2``): the one string form :meth:`Param.coerce` takes."""


def _is_number(text: str) -> bool:
    try:
        float(text)
    except ValueError:
        return False
    return True


class _ImplementedIn:
    """The descriptor :func:`implemented_in` returns (see there)."""

    def __init__(self, target: str) -> None:
        module, _, owner = target.partition(":")
        if not module or not owner:
            raise ValueError(f"implemented_in({target!r}): give 'package.module:Class'")
        self.module = module
        self.owner = owner
        self.name = ""

    def __set_name__(self, owner: type, name: str) -> None:
        self.name = name

    def __get__(self, obj: Any, objtype: type | None = None) -> Any:
        if obj is None:
            return self  # class access (ABC checks, ``has_channel_groups``) imports nothing
        holder = getattr(importlib.import_module(self.module), self.owner)
        for klass in holder.__mro__:
            code = vars(klass).get(self.name)
            if code is not None and not isinstance(code, _ImplementedIn):  # the declaration's own descriptor is no code
                return code.__get__(obj, type(obj))
        raise AttributeError(f"{self.module}:{self.owner} defines no {self.name!r} (named by {type(obj).__qualname__})")

    def __repr__(self) -> str:
        return f"implemented_in({self.module}:{self.owner}.{self.name})"


def implemented_in(target: str) -> Any:
    """A method of a component whose code lives in another module, imported the first time it is called.

    A component's declaration (name, ``params``, help, stage...) is what the
    registry and ``vae-automl plugins`` read; its work (``build``, ``apply``,
    ``measure``...) is what a trial runs. A plugin whose work needs torch or
    another heavy library can keep the declaration light::

        class Fp16(Compressor):
            name = "fp16"
            params = (Param("keep_bias", "bool", True),)
            apply = implemented_in("my_plugin.fp16_impl:Fp16Code")

    ``my_plugin.fp16_impl`` (which may import torch at the top) defines
    ``class Fp16Code(Fp16)`` with the real ``def apply(self, ...)``; the first
    call imports it and runs that function on the registered instance, so
    ``self`` is the declaration (its ``name``, ``params`` and state) and every
    other method it calls must be declared on it too. Do not call ``super()``
    in such a method: ``self`` is not an instance of the code class. Third-party
    plugins may equally define their methods in place (added in 0.3).

    Args:
        target: ``"package.module:Class"``: the class whose method of the same name runs.

    Returns:
        A descriptor to assign to the method's name in the declaring class.
    """
    return _ImplementedIn(target)


def code_module_getattr(declarations: str, code: str) -> Callable[[str], Any]:
    """A module ``__getattr__`` for a declaration module: names it does not define are looked up in ``code``.

    Helpers that lived beside the components before they were split (``from vae_automl.builtin.pruning import
    shrink``) keep importing from the old place; the code module (and torch) loads at that first lookup.
    Dunder names are never forwarded, so probing a plugin module (pluggy, ``inspect``) loads nothing.
    """

    def __getattr__(name: str) -> Any:
        if name.startswith("__"):
            raise AttributeError(f"module {declarations!r} has no attribute {name!r}")
        return getattr(importlib.import_module(code), name)

    return __getattr__


GROUP_NAMES: tuple[str, ...] = ("encoder", "heads", "decoder")
"""The layer groups an architecture may declare (:attr:`Architecture.group_names`); :mod:`vae_automl.layers` finds them."""
STAGES: tuple[str, ...] = ("distill", "prune", "quantize", "code")
"""Pipeline order. ``code`` changes no weight, only how they are stored (entropy coding)."""


@dataclass(frozen=True)
class Param:
    """One parameter of a component: its type, hard bounds and default.

    Search spaces set a parameter to a constant, a range ``{low, high, log}``
    or ``{choices: [...]}``; values outside ``minimum``/``maximum`` or
    ``choices`` are refused with the file and key named. A parameter the
    YAML leaves out takes ``default``; written as ``search`` it takes the
    whole ``[minimum, maximum]`` (or all ``choices``) as its range.
    """

    name: str
    type: ParamType
    default: Any
    minimum: float | None = None
    maximum: float | None = None
    choices: tuple[Any, ...] | None = None
    log: bool = False
    help: str = ""

    def describe(self) -> str:
        if self.choices is not None:
            bounds = "{" + ", ".join(map(str, self.choices)) + "}"
        elif self.minimum is not None or self.maximum is not None:
            bounds = f"[{self.minimum}, {self.maximum}]"
        else:
            bounds = self.type
        return f"{self.name}: {bounds} (default {self.default})"

    def coerce(self, value: Any) -> Any:
        """``value`` checked against this parameter's type, bounds or choices, and returned typed.

        The one check of a parameter value, for YAML values and for direct
        calls alike. Numbers written as strings (YAML 1.1 reads ``1e-3`` as
        one) and integral floats for integers are accepted.

        Raises:
            ValueError: naming the rule and the value, e.g.
                ``"`bits` must be in [1, 8], but got bits=9"``.
        """
        if value is None and self.default is None:
            return None
        if self.choices is not None:
            if value not in self.choices:
                raise ValueError(
                    f"`{self.name}` must be one of {', '.join(map(str, self.choices))}, but got {self.name}={value!r}"
                )
            return value
        if self.type == "bool":
            if not isinstance(value, bool):
                raise ValueError(f"`{self.name}` must be true or false, but got {self.name}={value!r}")
            return value
        if self.type == "categorical":
            return value
        what = "an integer" if self.type == "int" else "a number"
        number = value
        if isinstance(value, str):
            # only the exponent form YAML 1.1 leaves a string (1e-3); a quoted "10" is a mistake to point out
            if not _EXPONENT_NUMBER.fullmatch(value.strip()):
                hint = " (a string: drop the quotes)" if _is_number(value) else ""
                raise ValueError(f"`{self.name}` must be {what}, but got {self.name}={value!r}{hint}")
            number = float(value)
        if isinstance(number, bool) or not isinstance(number, (int, float)):
            raise ValueError(f"`{self.name}` must be {what}, but got {self.name}={value!r}")
        if not math.isfinite(number):
            raise ValueError(f"`{self.name}` must be a finite number, but got {self.name}={value!r}")
        if self.type == "int":
            if float(number) != int(number):
                raise ValueError(f"`{self.name}` must be an integer, but got {self.name}={value!r}")
            number = int(number)
        else:
            number = float(number)
        if (self.minimum is not None and number < self.minimum) or (self.maximum is not None and number > self.maximum):
            raise ValueError(f"`{self.name}` must be {self._bounds()}, but got {self.name}={value!r}")
        return number

    def _bounds(self) -> str:
        if self.maximum is None:
            return f">= {self.minimum}"
        if self.minimum is None:
            return f"<= {self.maximum}"
        return f"in [{self.minimum}, {self.maximum}]"

    def check(self, value: Any) -> None:
        """Raise ValueError if ``value`` breaks this parameter's type, bounds or choices (see :meth:`coerce`)."""
        self.coerce(value)


class Component(abc.ABC):  # noqa: B024 - the base of the component ABCs; it declares no method of its own
    """What every registered component has: a name, parameters, a help line."""

    kind: ClassVar[str] = "component"
    name: str = ""
    params: tuple[Param, ...] = ()
    help: str = ""

    def param(self, name: str) -> Param | None:
        for p in self.params:
            if p.name == name:
                return p
        return None

    def validate_params(self, values: dict[str, Any]) -> None:  # noqa: B027 - optional override
        """Check relations between parameter values; raise ValueError with the rule broken."""

    def resolve_params(self, params: dict[str, Any]) -> dict[str, Any]:
        """Every parameter's value (defaults filled in), each checked against its ``Param``, then ``validate_params``.

        Components call this first in their work, so a direct call with bad
        values fails as clearly as a bad search space does.
        """
        known = {p.name: p for p in self.params}
        unknown = sorted(set(params) - set(known))
        if unknown:
            raise ValueError(
                f"{self.kind} {self.name!r} has no parameter {unknown[0]!r}; "
                f"its parameters: {', '.join(sorted(known)) or '(none)'}"
            )
        values = {name: p.coerce(params.get(name, p.default)) for name, p in known.items()}
        self.validate_params(values)
        return values


class Architecture(Component):
    """A VAE family: turns sampled parameters into a model, and a config back into one.

    ``tasks`` names the tasks (see :class:`Task`) whose models this
    architecture builds; a search space pairing it with another task is refused.
    """

    kind = "architecture"
    presets: dict[str, dict[str, Any]] = {}
    tasks: tuple[str, ...] = ("vae",)
    torch_models: ClassVar[bool] = True
    """Whether :meth:`build` makes torch modules: the trial trains them with the task's loss and stores them
    with :mod:`vae_automl.storage`. False: its models are plain Python objects with ``config``
    and ``encodings`` dicts and no weights to train (a stand-in model, as the synthetic trial's); the trial then
    takes the built model as its base, stores it with :meth:`to_bytes` / :meth:`from_bytes`, and imports no
    torch, so a process running only such trials stays small."""

    def to_bytes(self, model: Any) -> bytes:
        """The stored form of a model of an architecture with ``torch_models = False`` (its artifact and its
        base-model cache file); :meth:`from_bytes` reads it back. Torch architectures are stored by
        :mod:`vae_automl.storage` instead and need not override it."""
        raise NotImplementedError(f"architecture {self.name!r} builds torch modules: vae_automl.storage stores them")

    def from_bytes(self, data: bytes) -> Any:
        """The model :meth:`to_bytes` stored."""
        raise NotImplementedError(f"architecture {self.name!r} builds torch modules: vae_automl.storage loads them")

    @abc.abstractmethod
    def config_from_params(self, values: dict[str, Any], input_shape: tuple[int, ...]) -> dict[str, Any]:
        """Turn sampled parameter values into the canonical model config.

        Args:
            values: one value per parameter of ``params``.
            input_shape: ``(C, H, W)`` of the dataset's images.

        Returns:
            A JSON-serializable dict with at least ``architecture`` (this
            name) and ``input_shape``; :meth:`build` makes the model from it.
        """

    @abc.abstractmethod
    def build(self, config: dict[str, Any]) -> VAE:
        """Build an untrained model from a canonical config (the inverse of export)."""

    group_names: tuple[str, ...] = ()
    """The layer groups :meth:`layer_groups` returns (``encoder``, ``heads``, ``decoder``); empty: none declared.

    Read at YAML load: a compressor parameter per group (``bits_encoder``...)
    on an architecture without groups is refused there.
    """

    def layer_groups(self, model: VAE) -> dict[str, tuple[str, ...]]:
        """Module names of the model's Linear / Conv2d / ConvTranspose2d layers, by group.

        Args:
            model: a model this architecture built.

        Returns:
            ``{"encoder": (...), "heads": (...), "decoder": (...)}`` (the
            keys of :attr:`group_names`): ``heads`` are the layers computing
            ``mu`` and ``logvar``. ``{}`` (the default) when the architecture
            declares none. ``vae_automl.testing.ArchitectureContract``
            checks that every layer is in exactly one group.
        """
        return {}

    def channel_groups(self, model: VAE, include_latent: bool = False) -> list[ChannelGroup]:
        """The hidden units structured pruning may remove, as :class:`vae_automl.layers.ChannelGroup` s.

        Args:
            model: a model this architecture built.
            include_latent: append the latent units (``mu``/``logvar`` rows) as the last group.

        Returns:
            The groups; :meth:`build` of the config with the groups' sizes
            changed must give the shrunk shapes. The default raises
            ValueError: the architecture supports no structured pruning.
        """
        raise ValueError(
            f"architecture {self.name!r} declares no channel groups, so its units cannot be removed "
            "(structured pruning, distillation with init: teacher)"
        )

    @property
    def has_channel_groups(self) -> bool:
        """Whether this architecture overrides :meth:`channel_groups`."""
        return type(self).channel_groups is not Architecture.channel_groups


@dataclass
class CompressionContext:
    """What a compressor gets besides the model.

    Attributes:
        data: the dataset splits, resident on ``device``.
        device: the torch device the trial runs on.
        seed: the trial's seed; a compressor seeds its own randomness from it.
        fine_tune: ``fine_tune(model, epochs, extra_loss=None, after_step=None,
            lr=None)`` trains ``model`` in place on the training split with
            the trial's training settings and returns it. ``extra_loss(model,
            x) -> scalar`` adds a term to each batch's loss (distillation,
            L1, ...); ``after_step(model)`` runs after each optimizer step
            (re-applying a pruning mask).
        teacher: the space's ``teacher:`` model if it names one, else the
            trained base model of this trial (never to be mutated).
        train_config: the trial's training settings.
        build_model: ``build_model(config)`` builds an untrained model of a
            canonical config (structured pruning, distillation students).
        architecture: the architecture of the model being compressed (its
            :meth:`Architecture.layer_groups` and ``channel_groups``); None:
            looked up by ``model.config["architecture"]``.
        student: the canonical config of a distillation student chosen by the
            search (a study with a ``base_model:``), or None.
        task: the trial's task: its ``loss`` is what saliency-based
            compressors differentiate for models that are not VAEs; None
            outside a trial (VAEs then use their ELBO).
    """

    data: DataSplits
    device: torch.device
    seed: int
    fine_tune: Callable[..., VAE]
    teacher: VAE | None = None
    train_config: Any = None
    build_model: Callable[[dict[str, Any]], VAE] | None = None
    architecture: Architecture | None = None
    student: dict[str, Any] | None = None
    task: Task | None = None
    extra: dict[str, Any] = field(default_factory=dict)


FORMS: tuple[str, ...] = ("dense", "masked", "quantized")
"""What a pipeline stage hands the next: float weights (``dense``), float weights with pruned zeros
marked ``"sparse"`` (``masked``), weights on a built-in grid codec (``quantized``), or
``codec:NAME``: tensors in a plugin's own storage codec that only a stage declaring it may take."""


class Compressor(Component):
    """A compression method. ``apply`` returns a new model; it never mutates its input.

    Composition: ``takes`` lists the forms (:data:`FORMS` or ``codec:NAME``)
    of the previous stage's output this compressor can work on, ``gives`` the
    form it hands on. The search-space loader refuses a pipeline in which a
    stage's ``gives`` is not in the next stage's ``takes``, naming both (a
    quantizer after a plugin codec would otherwise re-store, and so drop, the
    codec's tensors). The trained base model is ``dense``.

    ``group_params`` names parameters that set something per layer group
    (``bits_encoder``...): set on an architecture without layer groups they
    are refused at load. ``needs_channel_groups``: the compressor removes
    units and needs :meth:`Architecture.channel_groups`.
    ``compresses``: the result must pack smaller than dense float32 (the
    contract suite checks it).
    """

    kind = "compressor"
    stage: str = "quantize"
    takes: tuple[str, ...] = ("dense", "masked")
    gives: str = "dense"
    group_params: tuple[str, ...] = ()
    needs_channel_groups: bool = False
    compresses: bool = True

    def requirements(self, values: dict[str, Any]) -> set[str]:
        """What the compressed model's architecture must declare for these parameter values.

        Args:
            values: parameter values (for a searched parameter, one value it may take).

        Returns:
            A subset of ``{"layer_groups", "channel_groups"}``; the loader
            refuses the search space when an architecture lacks one.
        """
        needs = set()
        if any(values.get(name) is not None for name in self.group_params):
            needs.add("layer_groups")
        if self.needs_channel_groups:
            needs.add("channel_groups")
        return needs

    @abc.abstractmethod
    def apply(self, model: VAE, params: dict[str, Any], ctx: CompressionContext) -> VAE:
        """Compress ``model`` and return the result.

        Args:
            model: the previous stage's model (or the trained base model).
                It must come back unchanged: copy it first.
            params: one value per parameter of ``params``.
            ctx: data, device, seed, a fine-tune helper, the teacher.

        Returns:
            The compressed model, still a :class:`vae_automl.vae.VAE`, whose
            ``encodings`` tell the packer how each tensor is stored.
        """


@dataclass
class MeasureContext:
    """What an objective gets: the final model, the data, and where to measure.

    ``registry`` is the registry of the search (its codecs store the model);
    None in a context built by hand, where only built-in codecs are known.
    """

    model: VAE
    data: DataSplits
    device: torch.device
    seed: int
    latency_batch_size: int = 128
    latency_repeats: int = 30
    latency_warmup: int = 5
    latency_target: str = "cpu"
    cache: dict[str, Any] = field(default_factory=dict)
    registry: Registry | None = None


class Objective(Component):
    """A measured figure of a trial's final model.

    ``tasks`` names the tasks whose models it can measure (None: any task);
    a search space of another task may not list it, and its default
    ``record`` leaves it out. An objective with ``needs_labels`` reads the
    dataset's labels (``ctx.data.test_labels``), which are then loaded; the
    default ``record`` leaves it out too, so it must be asked for by name.
    """

    kind = "objective"
    direction: Literal["minimize", "maximize"] = "minimize"
    unit: str = ""
    tasks: tuple[str, ...] | None = None
    needs_labels: bool = False
    needs_training: bool = True
    """False where the figure does not depend on the weights' values (size, parameter count, latency): early
    stopping then measures it on the untrained model after the compression pipeline, before training."""

    @abc.abstractmethod
    def measure(self, ctx: MeasureContext) -> float:
        """Measure the objective on ``ctx.model``; return a finite float."""


class Dataset(Component):
    """A source of images, selected by a spec ``NAME`` or ``NAME:ARG``."""

    kind = "dataset"

    @abc.abstractmethod
    def load(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray:
        """Load every image of the dataset.

        Args:
            arg: the part of the spec after ``NAME:`` (a path, ``PATH#key``), or None.
            data_dir: the folder given by ``dataset.data_dir`` / ``--data-dir``.
            download: whether fetching over the network is allowed.

        Returns:
            An array ``N x H x W`` or ``N x C x H x W``: uint8 (0..255) or
            float in [0, 1]. Raise :class:`vae_automl.errors.DataError`
            naming the file at fault.
        """

    def load_labels(self, arg: str | None, data_dir: str | None, download: bool) -> np.ndarray | None:
        """The class label of every image :meth:`load` returns, in the same order; None if there are none.

        Called only when a task or an objective needs labels.

        Args:
            arg: as for :meth:`load`.
            data_dir: as for :meth:`load`.
            download: as for :meth:`load`.

        Returns:
            An integer array of length N, or None (the default) for a dataset without labels.
        """
        return None

    def load_resized(
        self, arg: str | None, data_dir: str | None, download: bool, image_size: tuple[int, int] | None, color: str | None
    ) -> np.ndarray | None:
        """Load every image at the size and in the colour the YAML's ``dataset.image_size`` and ``dataset.color`` ask.

        Called before :meth:`load` when the YAML sets either (added in 0.2). A dataset that decodes image
        files overrides it to resize while decoding, so files of mixed sizes load.

        Args:
            arg: as for :meth:`load`.
            data_dir: as for :meth:`load`.
            download: as for :meth:`load`.
            image_size: ``(height, width)``, or None to keep the dataset's.
            color: ``"grey"`` (1 channel) or ``"rgb"`` (3 channels), or None to keep the dataset's.

        Returns:
            An array ``N x C x H x W`` as :meth:`load` returns, already at ``image_size`` and in ``color``;
            or None (the default): the caller resizes and converts what :meth:`load` returns.
        """
        return None


class Task(Component):
    """What a model is trained for and judged by: the loss the trainer steps on, and the objectives that fit.

    The trainer calls :meth:`loss` once per batch (inside the CUDA graph when
    it captures the step) and :meth:`validation_loss` once per epoch; the
    trial calls :meth:`prepare` on a fresh model before training it, and
    :meth:`finalize` on the trained (and on the compressed) model before
    measuring it. A search space picks its task with ``task:``
    (default ``vae``); its architectures must list the task in their ``tasks``.

    Attributes:
        needs_labels: whether :meth:`loss` reads labels; the dataset's labels
            are loaded only then (or when an objective needs them).
        default_objectives: the objectives of a search space that names none.
    """

    kind = "task"
    needs_labels: bool = False
    default_objectives: tuple[str, ...] = ()

    @abc.abstractmethod
    def loss(self, model: VAE, x: torch.Tensor, y: torch.Tensor | None, config: TrainConfig) -> torch.Tensor:
        """The training loss of one batch.

        Must be capture-safe: device ops only on the tensors it is given, no
        ``.item()``, no host sync, no branching on tensor values, so the
        trainer can capture it in a CUDA graph.

        Args:
            model: the model being trained (in training mode).
            x: a batch of images, ``B x C x H x W`` in [0, 1], on the model's device.
            y: the batch's labels (``B``, int64) when :attr:`needs_labels`, else None.
            config: the trial's training settings (``beta`` and the like).

        Returns:
            A scalar tensor to minimize (a mean over the batch).
        """

    @abc.abstractmethod
    def validation_loss(self, model: VAE, data: DataSplits, config: TrainConfig, seed: int) -> float:
        """The loss on ``data.validation`` after an epoch: early stopping and trial pruning compare it.

        Args:
            model: the model being trained; leave its train/eval mode as found.
            data: the splits; ``data.validation_labels`` is set when labels were loaded.
            config: the trial's training settings.
            seed: the trial's seed; any noise must be fixed by it (repeatable).

        Returns:
            A finite float, lower is better.
        """

    def prepare(self, model: VAE, data: DataSplits) -> None:  # noqa: B027 - optional override
        """Initialize a freshly built model from the training data, once, before it trains.

        Args:
            model: the untrained model, on the data's device; changed in place.
            data: the splits (``data.train`` and, when loaded, ``data.train_labels``).
        """

    def finalize(self, model: VAE) -> None:  # noqa: B027 - optional override
        """Make a trained or compressed model ready to measure and store (the codec builds its integer CDF tables).

        Args:
            model: the final model of a training run or of the compression pipeline; changed in place.
        """


class Exporter(Component):
    """An artifact format written by ``vae-automl export``."""

    kind = "exporter"
    filename: str = ""

    def filename_for(self, model: VAE) -> str:
        """The file name ``model`` is exported under (``filename``, unless the model decides, as the weights
        file's container does: ``weights.safetensors`` or ``weights.vac``)."""
        return self.filename

    @abc.abstractmethod
    def export(self, model: VAE, path: str, example: torch.Tensor) -> None:
        """Write ``model`` to ``path`` (the file named :meth:`filename_for` in the trial folder)."""

    def remeasure(self, path: str, model: VAE, ctx: Any, record: Any) -> dict[str, Any]:
        """Measure the written file again, so ``export`` can check it reproduces the search's figures.

        Args:
            path: the file :meth:`export` wrote.
            model: the model it was written from.
            ctx: the export's :class:`vae_automl.export.StudyContext` (data, registry, space).
            record: the trial's :class:`vae_automl.record.TrialRecord` (seed, latency settings, metrics).

        Returns:
            Figure name -> value; floats named like a search metric are checked against it. ``{}``
            (the default): the file is not measured.
        """
        return {}
