"""`vae-automl plugins`: each parameter's help, type, bounds and default, bools as true/false."""

from __future__ import annotations

from vae_automl.components import Param
from vae_automl.plugins_info import describe_param, format_components, list_components, param_row
from vae_automl.testing import registry_with


def test_each_parameter_line_has_type_bounds_default_and_help() -> None:
    text = format_components(list_components(registry_with(None)))
    assert "symmetric: bool one of {false, true}, default true - symmetric grid" in text
    assert "bits: int in [1, 8], default 8 - bits per weight" in text
    assert "qat_lr: float in [1e-07, 1.0] (log scale), default none - fine-tuning learning rate" in text
    assert "stage=quantize takes=dense,masked,quantized gives=quantized" in text
    assert "None" not in text


def test_bool_rows_list_their_values() -> None:
    row = param_row(Param("flag", "bool", False, help="a switch"))
    assert row["choices"] == [False, True] and row["help"] == "a switch"
    assert describe_param(row) == "flag: bool one of {false, true}, default false - a switch"
    assert describe_param(param_row(Param("n", "int", None, minimum=1))) == "n: int in [1, inf], default none"
