from __future__ import annotations

from typing import Any

import pytest

from vae_automl.components import Compressor, Param


class Toy(Compressor):
    name = "toy"
    params = (
        Param("bits", "int", 4, minimum=1, maximum=8),
        Param("ratio", "float", 0.5, minimum=0.0, maximum=1.0),
        Param("mode", "categorical", "a", choices=("a", "b")),
        Param("flag", "bool", False),
        Param("limit", "float", None, minimum=0.0),
    )

    def validate_params(self, values: dict[str, Any]) -> None:
        if values["mode"] == "b" and values["bits"] < 2:
            raise ValueError("mode b needs bits >= 2")

    def apply(self, model: Any, params: dict[str, Any], ctx: Any) -> Any:
        return model


def test_resolve_params_fills_defaults() -> None:
    assert Toy().resolve_params({"bits": 8}) == {"bits": 8, "ratio": 0.5, "mode": "a", "flag": False, "limit": None}


@pytest.mark.parametrize("params,message", [
    ({"bits": 9}, r"`bits` must be in \[1, 8\], but got bits=9"),
    ({"bits": 2.5}, "`bits` must be an integer"),
    ({"bits": True}, "`bits` must be an integer"),
    ({"ratio": "half"}, "`ratio` must be a number"),
    ({"mode": "c"}, "`mode` must be one of a, b, but got mode='c'"),
    ({"flag": 1}, "`flag` must be true or false"),
    ({"limit": -1.0}, r"`limit` must be >= 0.0, but got limit=-1.0"),
    ({"bitz": 3}, "compressor 'toy' has no parameter 'bitz'"),
    ({"mode": "b", "bits": 1}, "mode b needs bits >= 2"),
])
def test_resolve_params_refuses_bad_values(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Toy().resolve_params(params)


def test_yaml_and_a_direct_call_give_the_same_message_for_the_same_fault() -> None:
    from vae_automl.config import load_space_text
    from vae_automl.errors import ConfigError
    from vae_automl.registry import get_registry

    mlp = get_registry().architectures.get("mlp")
    with pytest.raises(ValueError) as direct:
        mlp.resolve_params({"latent_dim": 0})
    space = "architecture:\n  mlp:\n    latent_dim: 0\ntraining: {epochs: 1}\nobjectives: [test_elbo_nats]\n"
    with pytest.raises(ConfigError) as from_yaml:
        load_space_text(space, "one.yaml")
    assert str(from_yaml.value) == f"one.yaml: architecture.mlp.latent_dim: {direct.value}"


@pytest.mark.parametrize("field,value,message", [
    ("lr", 0.0, r"`lr` must be in \[1e-07, 1.0\], but got lr=0.0"),
    ("epochs", -1, r"`epochs` must be in \[0, 100000\], but got epochs=-1"),
    ("capture", "maybe", "`capture` must be one of auto, on, off, but got capture='maybe'"),
])
def test_train_config_checks_the_training_params_bounds(field: str, value: Any, message: str) -> None:
    from vae_automl.train import TrainConfig

    with pytest.raises(ValueError, match=message):
        TrainConfig(**{field: value})


def test_yaml_number_strings_and_integral_floats_are_coerced() -> None:
    assert Param("lr", "float", 1e-3, minimum=0.0).coerce("1e-3") == 0.001
    assert Param("n", "int", 1).coerce(4.0) == 4 and isinstance(Param("n", "int", 1).coerce(4.0), int)
    with pytest.raises(ValueError, match="`x` must be a finite number"):
        Param("x", "float", 0.0).coerce(float("nan"))
