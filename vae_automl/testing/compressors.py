"""The compressor contract: a pytest suite any compressor plugin subclasses.

Like optuna's ``BasicSamplerTestCase``: subclass :class:`CompressorContract`
in a test module named ``test_*.py``, override the ``compressor`` fixture
(and optionally ``params`` and ``invalid_params``), and pytest runs every
check on tiny trained MLP and convolutional VAEs built from the built-in
architectures, and on a user's own conv VAE given as ``base_model:``
(:mod:`vae_automl.testing.user_model`, with a hard-coded ``view``), on the
embedded digits images::

    import pytest
    from vae_automl.testing import CompressorContract
    from my_plugin import MyCompressor

    class TestMyCompressor(CompressorContract):
        @pytest.fixture
        def compressor(self):
            return MyCompressor()

        @pytest.fixture
        def params(self):
            return {"bits": 4}

What it checks: the result is still a VAE that encodes and decodes with
finite outputs and ELBO; the input model (weights, encodings, config) is
untouched; ``size_bytes`` equals the serialized length, and is below the
input's dense float32 size when the compressor declares ``compresses``;
deserializing gives identical weights that repack to identical bytes;
every tensor's codec is registered (the ``codecs`` fixture gives a plugin's
own), implements the whole :class:`vae_automl.storage.codec.Codec`, keeps
its grids and factors out of the JSON header, and ``full_spec`` inverts
``header_spec``; the same seed gives the same bytes; out-of-bounds and
invalid parameters are refused with a clear error naming the key; a
quantize-stage compressor keeps pruned zeros at zero and the ``"sparse"``
flag, through the file too.
"""

from __future__ import annotations

import copy
import functools
import json
import math
from dataclasses import dataclass
from typing import Any

import pytest
import torch
import yaml

from vae_automl.components import STAGES, CompressionContext, Compressor
from vae_automl.config import load_space_text
from vae_automl.data import DataSplits, SplitConfig, load_images, make_splits
from vae_automl.errors import ConfigError
from vae_automl.plugin_manager import new_plugin_manager
from vae_automl.registry import Registry
from vae_automl.storage.codec import Codec
from vae_automl.storage.format import SHARED_PREFIX, deserialize_model, serialize_model, size_bytes, theoretical_bits
from vae_automl.train import TrainConfig, train
from vae_automl.vae import VAE, evaluate_elbo

TINY_ARCHITECTURES: dict[str, dict[str, Any]] = {
    "mlp": {
        "hidden_layers": 1,
        "hidden_width": 32,
        "width_decay": 1.0,
        "latent_dim": 4,
        "activation": "relu",
        "likelihood": "bernoulli",
    },
    "conv": {"blocks": 2, "base_channels": 4, "kernel_size": 3, "latent_dim": 4, "activation": "relu", "likelihood": "bernoulli"},
}
USER_MODEL = "user"
"""The tiny model given as ``base_model:``: :mod:`vae_automl.testing.user_model`, a user's conv VAE with a fixed view."""
USER_FACTORY = "vae_automl.testing.user_model:build"
TINY_MODELS: tuple[str, ...] = (*sorted(TINY_ARCHITECTURES), USER_MODEL)
MAX_HEADER_LIST = 16
"""The longest list of numbers a codec may keep in a tensor's JSON header spec; grids and factors go in the parts."""
TINY_EPOCHS = 2
TINY_BATCH_SIZE = 64


@functools.lru_cache(maxsize=1)
def tiny_data() -> DataSplits:
    """The embedded 8x8 digits, split 70/10/20 on the CPU."""
    return make_splits(
        load_images("digits", registry=registry_with(None)), SplitConfig(validation=0.1, test=0.2, seed=0), "cpu", spec="digits"
    )


@functools.cache
def _trained(architecture: str) -> VAE:
    registry = registry_with(None)
    data = tiny_data()
    torch.manual_seed(0)
    if architecture == USER_MODEL:
        # deferred: base_model imports the user's model code; only this case needs it
        from vae_automl.base_model import wrap
        from vae_automl.config import BaseModelConfig

        model = wrap(BaseModelConfig(USER_FACTORY), data.train[:256])
    else:
        arch = registry.architectures.get(architecture)
        model = arch.build(arch.config_from_params(TINY_ARCHITECTURES[architecture], data.input_shape))
    train(model, data, TrainConfig(epochs=TINY_EPOCHS, batch_size=TINY_BATCH_SIZE), seed=0)
    return model.eval()


def tiny_name(model: VAE) -> str:
    """The :data:`TINY_MODELS` name of a tiny model (``user`` for the base_model one)."""
    architecture = model.config["architecture"]
    return USER_MODEL if architecture == "base_model" else architecture


def tiny_model(architecture: str) -> VAE:
    """A fresh copy of a tiny VAE trained a few epochs on digits: ``mlp``, ``conv``, or ``user`` (a base_model)."""
    return copy.deepcopy(_trained(architecture))


def make_context(
    data: DataSplits, seed: int = 0, teacher: VAE | None = None, train_config: TrainConfig | None = None
) -> CompressionContext:
    """A :class:`CompressionContext` like a trial's: CPU, the given data, a real fine-tune helper."""
    config = train_config or TrainConfig(epochs=TINY_EPOCHS, batch_size=TINY_BATCH_SIZE)
    registry = registry_with(None)

    def fine_tune(model: VAE, epochs: int, extra_loss: Any = None, after_step: Any = None, lr: float | None = None) -> VAE:
        cfg = config.for_fine_tuning(epochs)
        train(model, data, cfg, seed=seed, extra_loss=extra_loss, after_step=after_step, lr=lr)
        return model

    return CompressionContext(
        data=data,
        device=torch.device("cpu"),
        seed=seed,
        fine_tune=fine_tune,
        teacher=teacher,
        train_config=config,
        build_model=registry.build_model,
    )


def registry_with(compressor: Compressor | None, codecs: tuple[Codec, ...] | list[Codec] = ()) -> Registry:
    """The built-in registry (no installed plugins), plus ``compressor`` if its name is not already there, and ``codecs``."""

    registry = Registry.from_plugin_manager(new_plugin_manager(autoload=False))
    for codec in codecs:
        if codec.name not in registry.codecs:
            registry.codecs.add(codec, "contract-test", "0")
    if compressor is not None:
        if compressor.name in registry.compressors:
            existing = registry.compressors.get(compressor.name)
            if type(existing) is not type(compressor):
                raise AssertionError(f"compressor name {compressor.name!r} is taken by built-in {type(existing).__qualname__}")
        else:
            registry.compressors.add(compressor, "contract-test", "0")
    return registry


@dataclass
class Snapshot:
    state: dict[str, torch.Tensor]
    encodings: dict[str, Any]
    config: dict[str, Any]


# One application per (test class, compressor, params, architecture): the contract tests only read the result.
_APPLIED: dict[tuple[str, ...], tuple[VAE, Snapshot, VAE]] = {}


def _state(model: VAE) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def _space_yaml(compressor: Compressor, params: dict[str, Any]) -> str:
    return yaml.safe_dump(
        {
            "dataset": "digits",
            "architecture": {"mlp": {"hidden_width": 8, "latent_dim": 2}},
            "compressors": [{"name": compressor.name, "params": params}],
            "trials": 1,
        }
    )


def _count_numbers(value: Any) -> int:
    """Numbers in a (nested) JSON list; 0 for a scalar."""
    if isinstance(value, list):
        return sum(_count_numbers(v) if isinstance(v, list) else 1 for v in value)
    return 0


def _out_of_bounds(param: Any) -> list[Any]:
    """Values a parameter's declared bounds refuse."""
    if param.type == "bool":
        return [3]
    if param.choices is not None:
        return ["__not_a_choice__"]
    bad = []
    if param.minimum is not None:
        bad.append(param.minimum - 1 if param.type == "int" else param.minimum - abs(param.minimum) - 1.0)
    if param.maximum is not None:
        bad.append(param.maximum + 1 if param.type == "int" else param.maximum + abs(param.maximum) + 1.0)
    return bad


class CompressorContract:
    """Subclass and override the ``compressor`` fixture (and ``params``, ``invalid_params``)."""

    @pytest.fixture
    def compressor(self) -> Compressor:
        raise NotImplementedError("override the `compressor` fixture to return your Compressor instance")

    @pytest.fixture
    def params(self) -> dict[str, Any]:
        """Parameter values to apply with (defaults fill the rest); keep them cheap: tests run it many times."""
        return {}

    @pytest.fixture
    def invalid_params(self) -> list[dict[str, Any]]:
        """Combinations inside every bound that ``validate_params`` must refuse (cross-parameter rules)."""
        return []

    @pytest.fixture
    def codecs(self) -> list[Codec]:
        """The plugin's own codecs (what its ``register_codecs`` hook registers); built-in codecs are always there."""
        return []

    @pytest.fixture(params=TINY_MODELS)
    def base_model(self, request: pytest.FixtureRequest) -> VAE:
        return tiny_model(request.param)

    def _apply(self, compressor: Compressor, params: dict[str, Any], model: VAE, seed: int = 0) -> VAE:
        values = {p.name: params.get(p.name, p.default) for p in compressor.params}
        return compressor.apply(model, values, make_context(tiny_data(), seed=seed, teacher=_trained(tiny_name(model))))

    def _applied(self, compressor: Compressor, params: dict[str, Any], base_model: VAE) -> tuple[VAE, Snapshot, VAE]:
        """(input model, its snapshot taken before, result): one application shared by the checks of a test class."""
        key = (
            type(self).__module__,
            type(self).__qualname__,
            type(compressor).__qualname__,
            repr(sorted(params.items())),
            base_model.config["architecture"],
        )
        if key not in _APPLIED:
            snapshot = Snapshot(_state(base_model), copy.deepcopy(base_model.encodings), copy.deepcopy(base_model.config))
            _APPLIED[key] = (base_model, snapshot, self._apply(compressor, params, base_model))
        return _APPLIED[key]

    def test_declaration(self, compressor: Compressor, params: dict[str, Any]) -> None:
        assert isinstance(compressor, Compressor)
        assert compressor.name, "a compressor needs a name"
        assert compressor.stage in STAGES, f"stage {compressor.stage!r} is not one of {STAGES}"
        names = [p.name for p in compressor.params]
        assert len(set(names)) == len(names), f"duplicate parameter names: {names}"
        unknown = set(params) - set(names)
        assert not unknown, f"the params fixture names unknown parameters {sorted(unknown)}"
        defaults = {p.name: p.default for p in compressor.params}
        compressor.validate_params(defaults)
        compressor.validate_params({**defaults, **params})
        # The defaults and the fixture's values must pass the same checks a search space gets.
        from vae_automl.config import load_space_text

        load_space_text(_space_yaml(compressor, params), "contract.yaml", registry_with(compressor))

    def test_result_is_a_working_vae(self, compressor: Compressor, params: dict[str, Any], base_model: VAE) -> None:
        model, _, out = self._applied(compressor, params, base_model)
        assert isinstance(out, VAE), f"apply returned {type(out).__name__}, not a VAE"
        assert out is not model, "apply must return a new model, not its input"
        x = tiny_data().test[:32]
        with torch.no_grad():
            mu, logvar = out.encode(x)
            decoded = out.decode(mu)
        assert mu.shape == (len(x), out.latent_dim) and logvar.shape == mu.shape
        assert decoded.shape == x.shape, f"decoder output {tuple(decoded.shape)} != input {tuple(x.shape)}"
        for name, t in (("mu", mu), ("logvar", logvar), ("decoded", decoded)):
            assert torch.isfinite(t).all(), f"{name} has non-finite values"
        elbo = evaluate_elbo(out, tiny_data().test)
        assert math.isfinite(elbo)
        state = out.state_dict()
        for name in out.encodings:
            assert name in state, f"encodings name {name!r}, which is not a tensor of the model"

    def test_input_model_untouched(self, compressor: Compressor, params: dict[str, Any], base_model: VAE) -> None:
        model, before, _ = self._applied(compressor, params, base_model)
        after = model.state_dict()
        assert list(after) == list(before.state), "the input's parameters were renamed, added or removed"
        for name, tensor in before.state.items():
            assert torch.equal(after[name], tensor), f"the input's {name} was changed"
        assert model.encodings == before.encodings, "the input's encodings were changed"
        assert model.config == before.config, "the input's config was changed"

    def test_size_bytes_is_the_serialized_length(
        self, compressor: Compressor, params: dict[str, Any], base_model: VAE, codecs: list[Codec]
    ) -> None:
        _, _, out = self._applied(compressor, params, base_model)
        registry = registry_with(compressor, codecs)
        data = serialize_model(out, registry.codec_map())
        assert size_bytes(out, registry.codec_map()) == len(data)
        bits = theoretical_bits(out, registry.codec_map())
        assert 0 < bits <= 8 * len(data)
        back = deserialize_model(data, registry)
        original = out.state_dict()
        restored = back.state_dict()
        assert set(restored) == set(original)
        for name, tensor in original.items():
            assert torch.equal(restored[name], tensor.detach().float().cpu()), f"{name} differs after deserialize"
        assert serialize_model(back, registry.codec_map()) == data, "repacking the deserialized model changed the bytes"

    def test_same_seed_same_result(
        self, compressor: Compressor, params: dict[str, Any], base_model: VAE, codecs: list[Codec]
    ) -> None:
        _, _, out = self._applied(compressor, params, base_model)
        codec_map = registry_with(compressor, codecs).codec_map()
        first = serialize_model(out, codec_map)
        second = serialize_model(self._apply(compressor, params, tiny_model(tiny_name(base_model)), seed=0), codec_map)
        assert first == second, "two runs with the same seed gave different models"

    def test_compresses_below_dense_float32(
        self, compressor: Compressor, params: dict[str, Any], base_model: VAE, codecs: list[Codec]
    ) -> None:
        if not compressor.compresses:
            pytest.skip("the compressor declares compresses = False")
        model, _, out = self._applied(compressor, params, base_model)
        codec_map = registry_with(compressor, codecs).codec_map()
        dense = copy.deepcopy(model)
        dense.encodings = {}
        packed, fp32 = size_bytes(out, codec_map), size_bytes(dense, codec_map)
        assert packed < fp32, (
            f"{compressor.name} says it compresses, but its model packs to {packed} bytes, not less "
            f"than the {fp32} bytes of the input in dense float32 (is a codec's grid or factor kept "
            "in the JSON header instead of its parts? see header_spec/full_spec)"
        )

    def test_codec_contract(self, compressor: Compressor, params: dict[str, Any], base_model: VAE, codecs: list[Codec]) -> None:
        """Each tensor's codec: registered, a full :class:`Codec`, a small JSON header, ``full_spec`` undoing ``header_spec``."""
        _, _, out = self._applied(compressor, params, base_model)
        codec_map = registry_with(compressor, codecs).codec_map()
        state = out.state_dict()
        own_parts: dict[str, dict[str, torch.Tensor]] = {}
        for name, spec in out.encodings.items():
            codec_name = spec.get("codec", "dense")
            assert codec_name in codec_map, (
                f"{name} asks for codec {codec_name!r}, which is not registered; return it "
                "from the `codecs` fixture (and register it in register_codecs)"
            )
            codec = codec_map[codec_name]
            missing = [
                a
                for a in ("name", "supports_mask", "header_spec", "full_spec", "pack", "unpack", "theoretical_bits")
                if not hasattr(codec, a)
            ]
            assert not missing, f"codec {codec_name!r} lacks {', '.join(missing)} of vae_automl.storage.codec.Codec"
            header = json.loads(json.dumps(codec.header_spec(spec)))
            long_lists = [k for k, v in header.items() if _count_numbers(v) > MAX_HEADER_LIST]
            assert not long_lists, (
                f"codec {codec_name!r} keeps {long_lists} of {name}'s spec in the JSON header "
                f"(lists of over {MAX_HEADER_LIST} numbers); store them as parts in pack() and give them "
                "back in full_spec()"
            )
            tensor = state[name].detach().float().cpu()
            mask = tensor != 0 if spec.get("sparse") else None
            if mask is not None and not codec.supports_mask:
                parts, _ = codec.pack(tensor[mask], spec)
            else:
                parts, _ = codec.pack(tensor, spec, mask=mask) if mask is not None else codec.pack(tensor, spec)
            own_parts[name] = parts
            if "parts_from" in header:  # as the format does: the named tensor's parts come along, prefixed
                parts = {**parts, **{SHARED_PREFIX + k: t for k, t in own_parts[header["parts_from"]].items()}}
            full = json.loads(json.dumps(codec.full_spec(parts, header)))
            assert full == json.loads(json.dumps(spec)), (
                f"codec {codec_name!r}: full_spec(parts, header_spec(spec)) does not give back {name}'s spec"
            )

    def test_out_of_bounds_params_refused(self, compressor: Compressor) -> None:

        registry = registry_with(compressor)
        for param in compressor.params:
            for value in _out_of_bounds(param):
                with pytest.raises(ConfigError, match=f"compressors\\.0\\.params\\.{param.name}"):
                    load_space_text(_space_yaml(compressor, {param.name: value}), "contract.yaml", registry)
        with pytest.raises(ConfigError, match="no parameter"):
            load_space_text(_space_yaml(compressor, {"__no_such_param__": 1}), "contract.yaml", registry)

    def test_invalid_params_refused(self, compressor: Compressor, invalid_params: list[dict[str, Any]]) -> None:

        registry = registry_with(compressor)
        defaults = {p.name: p.default for p in compressor.params}
        for values in invalid_params:
            with pytest.raises(ValueError):
                compressor.validate_params({**defaults, **values})
            with pytest.raises(ConfigError, match="contract.yaml"):
                load_space_text(_space_yaml(compressor, values), "contract.yaml", registry)

    def test_quantizer_keeps_pruned_zeros(self, compressor: Compressor, params: dict[str, Any], codecs: list[Codec]) -> None:
        if compressor.stage != "quantize" or "masked" not in compressor.takes:
            pytest.skip("only quantize-stage compressors that take masked input run after pruning")
        model = tiny_model("mlp")
        name = "encoder.0.weight"
        weight = model.get_parameter(name)
        with torch.no_grad():
            weight.mul_((torch.arange(weight.numel()).reshape(weight.shape) % 2).float())
        model.encodings[name] = {"sparse": True}
        zeros = weight.detach() == 0
        out = self._apply(compressor, params, model)
        assert torch.all(out.get_parameter(name).detach()[zeros] == 0), "pruned zeros became non-zero"
        assert out.encodings.get(name, {}).get("sparse") is True, "the earlier stage's sparse flag was dropped"
        # The mask goes through the file: zeros come back, and the stored weight is no larger than the dense-masked one.
        registry = registry_with(compressor, codecs)
        back = deserialize_model(serialize_model(out, registry.codec_map()), registry)
        assert torch.equal(back.get_parameter(name).detach(), out.get_parameter(name).detach().float().cpu())
        assert back.encodings.get(name, {}).get("sparse") is True, "the sparse flag was lost in the file header"
