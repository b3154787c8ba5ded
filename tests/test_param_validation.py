"""Parameter validation at its boundaries: Param.coerce, and a YAML value -> its space (config.parse_param)."""

from __future__ import annotations

import math
from typing import Any

import pytest

from vae_automl.components import Param
from vae_automl.config import ParamSpace, _choice, _int, _key, _Loc, _lookup, _mapping, _number, parse_param
from vae_automl.errors import ConfigError, PluginError

BITS = Param("bits", "int", 4, minimum=1, maximum=8)
LR = Param("lr", "float", 1e-3, minimum=0.0, maximum=1.0, log=True)
ACT = Param("activation", "categorical", "relu", choices=("relu", "gelu"))
FLAG = Param("symmetric", "bool", True)


def refusal(param: Param, value: Any) -> str:
    with pytest.raises(ValueError) as info:
        param.coerce(value)
    return str(info.value)


def test_bounds_are_inclusive() -> None:
    assert BITS.coerce(1) == 1 and BITS.coerce(8) == 8
    assert refusal(BITS, 0) == "`bits` must be in [1, 8], but got bits=0"
    assert refusal(BITS, 9) == "`bits` must be in [1, 8], but got bits=9"
    assert LR.coerce(0.0) == 0.0 and LR.coerce(1.0) == 1.0
    assert refusal(LR, -1e-12) == "`lr` must be in [0.0, 1.0], but got lr=-1e-12"
    assert refusal(LR, 1.0000001).startswith("`lr` must be in [0.0, 1.0]")


def test_one_sided_bounds_name_their_side() -> None:
    assert refusal(Param("n", "int", 1, minimum=1), 0) == "`n` must be >= 1, but got n=0"
    assert refusal(Param("n", "int", 1, maximum=3), 4) == "`n` must be <= 3, but got n=4"
    assert Param("n", "int", 1, minimum=1).coerce(10**9) == 10**9
    assert Param("n", "int", 1, maximum=3).coerce(-(10**9)) == -(10**9)


def test_integers_accept_integral_floats_and_strings_only() -> None:
    value = BITS.coerce(3.0)
    assert value == 3 and type(value) is int
    assert refusal(BITS, "5") == "`bits` must be an integer, but got bits='5' (a string: drop the quotes)"
    assert refusal(BITS, 3.5) == "`bits` must be an integer, but got bits=3.5"
    assert refusal(BITS, True) == "`bits` must be an integer, but got bits=True"  # bool is not a number here
    assert refusal(BITS, "four") == "`bits` must be an integer, but got bits='four'"
    assert refusal(BITS, [4]) == "`bits` must be an integer, but got bits=[4]"


def test_floats_accept_yaml_1_1_exponent_strings_and_refuse_non_finite() -> None:
    value = LR.coerce("1e-3")
    assert value == 1e-3 and type(value) is float
    assert type(LR.coerce(1)) is float
    assert refusal(LR, "fast") == "`lr` must be a number, but got lr='fast'"
    assert refusal(LR, math.inf) == "`lr` must be a finite number, but got lr=inf"
    assert refusal(LR, math.nan) == "`lr` must be a finite number, but got lr=nan"
    assert refusal(LR, "0.5") == "`lr` must be a number, but got lr='0.5' (a string: drop the quotes)"
    assert refusal(Param("x", "float", 0.0), -math.inf).startswith("`x` must be a finite number")


def test_choices_bools_and_categoricals() -> None:
    assert ACT.coerce("gelu") == "gelu"
    assert refusal(ACT, "tanh") == "`activation` must be one of relu, gelu, but got activation='tanh'"
    assert FLAG.coerce(False) is False
    assert refusal(FLAG, 1) == "`symmetric` must be true or false, but got symmetric=1"
    assert Param("mode", "categorical", "a").coerce({"any": 1}) == {"any": 1}  # no choices: anything goes
    assert Param("maybe", "int", None, minimum=1).coerce(None) is None  # optional parameter left unset
    assert refusal(Param("n", "int", 0, minimum=1), None) == "`n` must be an integer, but got n=None"
    Param("k", "int", 1, minimum=1).check(1)
    with pytest.raises(ValueError, match="must be >= 1"):
        Param("k", "int", 1, minimum=1).check(0)


def test_describe_states_the_bounds_and_default() -> None:
    assert BITS.describe() == "bits: [1, 8] (default 4)"
    assert ACT.describe() == "activation: {relu, gelu} (default relu)"
    assert Param("n", "int", 2, minimum=1).describe() == "n: [1, None] (default 2)"
    assert Param("n", "int", 2, maximum=5).describe() == "n: [None, 5] (default 2)"
    assert FLAG.describe() == "symmetric: bool (default True)"


LOC = _Loc("s.yaml", ("compressors", "0", "bits"))


def config_error(param: Param, raw: Any) -> str:
    with pytest.raises(ConfigError) as info:
        parse_param(param, raw, LOC)
    return str(info.value)


def test_constants_ranges_and_choices() -> None:
    assert parse_param(BITS, None, LOC, present=False) == ParamSpace("bits", "const", value=4)
    assert parse_param(BITS, 6, LOC) == ParamSpace("bits", "const", value=6)
    assert parse_param(BITS, {"low": 2, "high": 8}, LOC) == ParamSpace("bits", "int", low=2, high=8, log=False, step=None)
    assert parse_param(BITS, {"low": 3, "high": 3}, LOC) == ParamSpace("bits", "const", value=3)  # low == high
    assert parse_param(BITS, {"low": 2, "high": 8, "step": 2}, LOC).step == 2
    assert parse_param(LR, {"low": 1e-4, "high": 1e-2, "log": True}, LOC).log is True
    assert parse_param(ACT, {"choices": ["gelu"]}, LOC) == ParamSpace("activation", "categorical", choices=("gelu",))
    assert parse_param(BITS, {"choices": [2, 4.0]}, LOC).choices == (2, 4)  # each choice checked and typed


def test_search_takes_the_whole_range() -> None:
    assert parse_param(BITS, "search", LOC) == ParamSpace("bits", "int", low=1, high=8, log=False)
    assert parse_param(LR, "search", LOC) == ParamSpace("lr", "float", low=0.0, high=1.0, log=True)
    assert parse_param(ACT, "search", LOC) == ParamSpace("activation", "categorical", choices=("relu", "gelu"))
    assert parse_param(FLAG, "search", LOC) == ParamSpace("symmetric", "categorical", choices=(False, True))
    assert config_error(Param("n", "int", 1, minimum=1), "search").endswith("bits: 'search' needs bounds; give {low, high}")
    assert config_error(Param("n", "int", 1, maximum=1), "search").endswith("'search' needs bounds; give {low, high}")


def test_range_refusals_at_their_boundaries() -> None:
    assert "low 5 is above high 4" in config_error(BITS, {"low": 5, "high": 4})
    assert config_error(BITS, {"low": 0, "high": 4}).startswith("s.yaml: compressors.0.bits.low: `bits` must be in [1, 8]")
    assert "compressors.0.bits.high: missing; a range needs low and high" in config_error(BITS, {"low": 2})
    assert "compressors.0.bits.low: missing" in config_error(BITS, {"high": 2})
    log_from_zero = {"low": 0.0, "high": 1e-2, "log": True}
    assert "compressors.0.bits.low: a log range needs low > 0, got 0.0" in config_error(LR, log_from_zero)
    assert parse_param(LR, {"low": 1e-9, "high": 1e-2, "log": True}, LOC).low == 1e-9
    assert "compressors.0.bits.log: expected true or false, got 'yes'" in config_error(LR, {"low": 0.1, "high": 1, "log": "yes"})
    assert config_error(BITS, {"low": 2, "high": 8, "step": 0}) == (
        "s.yaml: compressors.0.bits.step: step must be > 0 and cannot be combined with log")
    assert config_error(BITS, {"low": 2, "high": 9}).startswith("s.yaml: compressors.0.bits.high: `bits` must be in [1, 8]")
    one = parse_param(BITS, {"low": 2, "high": 8, "step": 1}, LOC).step
    assert one == 1 and type(one) is int  # the smallest step, typed as the parameter
    assert "cannot be combined with log" in config_error(LR, {"low": 0.1, "high": 1.0, "step": 0.1, "log": True})
    assert "compressors.0.bits.step: `bits` must be >= 0" in config_error(BITS, {"low": 2, "high": 8, "step": -1})
    assert "unknown key; valid keys: low, high, log, step" in config_error(BITS, {"low": 2, "high": 8, "lo": 1})
    assert "a range needs a numeric parameter; activation is categorical" in config_error(ACT, {"low": 1, "high": 2})
    assert "compressors.0.bits.choices: expected a non-empty list" in config_error(BITS, {"choices": []})
    assert "compressors.0.bits.choices: expected a non-empty list" in config_error(BITS, {"choices": 4})
    assert "compressors.0.bits.choices.1: `bits` must be in [1, 8]" in config_error(BITS, {"choices": [2, 9]})
    assert "unknown key" in config_error(BITS, {"choices": [2], "low": 1})
    assert config_error(BITS, [2, 4]) == (
        "s.yaml: compressors.0.bits: a list is not a parameter value; for a set of choices write {choices: [...]}")


def test_location_helpers() -> None:
    assert str(_Loc("s.yaml").error("bad")) == "s.yaml: bad"
    assert str((_Loc("s.yaml") / "training" / 0).error("bad")) == "s.yaml: training.0: bad"
    assert _key(_Loc("s.yaml", ("training", "epochs"))) == "epochs" and _key(_Loc("s.yaml")) == "value"
    assert _mapping(None, LOC) == {}
    assert _mapping({"a": 1}, LOC, ("a", "b")) == {"a": 1}
    with pytest.raises(ConfigError, match=r"s.yaml: compressors.0.bits: expected a mapping, got list \[1\]"):
        _mapping([1], LOC)
    with pytest.raises(ConfigError, match=r"compressors.0.bits.c: unknown key; valid keys: a, b"):
        _mapping({"c": 1}, LOC, ("a", "b"))


def test_plain_numbers_and_choices_of_the_yaml() -> None:
    loc = _Loc("s.yaml", ("training", "epochs"))
    assert _int(3, loc, minimum=1) == 3 and _int(1, loc, minimum=1) == 1
    with pytest.raises(ConfigError, match=r"s.yaml: training.epochs: `epochs` must be >= 1, but got epochs=0"):
        _int(0, loc, minimum=1)
    assert _int(None, loc, allow_none=True) is None
    with pytest.raises(ConfigError, match="must be an integer"):
        _int(None, loc)
    assert _number("2.5e0", loc, minimum=0) == 2.5 and _number(None, loc, allow_none=True) is None
    with pytest.raises(ConfigError, match=r"must be >= 0, but got epochs=-0.5"):
        _number(-0.5, loc, minimum=0)
    assert _choice("b", loc, ("a", "b")) == "b"
    with pytest.raises(ConfigError, match="`epochs` must be one of a, b, but got epochs='c'"):
        _choice("c", loc, ("a", "b"))
    with pytest.raises(ConfigError, match="`epochs` must be one of a, b, but got epochs=None"):
        _choice(None, loc, ("a", "b"))
    with pytest.raises(ConfigError, match="`epochs` must be a number, but got epochs=None"):
        _number(None, loc)


def test_lookup_turns_a_plugin_error_into_a_config_error_naming_the_key() -> None:
    class Table:
        def names(self) -> list[str]:
            return ["ok", "other"]

        def get(self, name: str) -> str:
            if name != "ok":
                raise PluginError(f"unknown component {name!r}")
            return "found"

    assert _lookup(Table(), "ok", LOC) == "found"
    with pytest.raises(ConfigError, match=r"s.yaml: compressors.0.bits: unknown component 'nope'"):
        _lookup(Table(), "nope", LOC)

    with pytest.raises(ConfigError) as info:
        _lookup(Table(), 5, LOC)
    assert str(info.value) == "s.yaml: compressors.0.bits: expected a component name, got int 5; known: ok, other"
