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
    ({"limit": -1.0}, r"`limit` must be in \[0.0, None\]"),
    ({"bitz": 3}, "compressor 'toy' has no parameter 'bitz'"),
    ({"mode": "b", "bits": 1}, "mode b needs bits >= 2"),
])
def test_resolve_params_refuses_bad_values(params: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        Toy().resolve_params(params)
