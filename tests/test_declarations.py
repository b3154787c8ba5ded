"""Built-in components are torch-free declarations whose work (`implemented_in`) loads on the first call."""

from __future__ import annotations

import importlib.util
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from vae_automl.components import Compressor, Param, implemented_in
from vae_automl.plugin_manager import DEFAULT_PLUGINS

REPO = Path(__file__).resolve().parents[1]
NNI_PLUGIN = REPO / "plugins" / "vae-automl-nni"
HAS_NNI_PLUGIN = importlib.util.find_spec("vae_automl_nni") is not None
"""The NNI plugin of this repo (its declarations need no nni; where it is not installed, only the built-ins are checked)."""


def run_python(code: str, tmp_path: Path | None = None) -> subprocess.CompletedProcess[str]:
    env_path = os.pathsep.join(str(p) for p in (REPO, NNI_PLUGIN, tmp_path) if p)
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=REPO,
        env={**os.environ, "PYTHONPATH": env_path, "VAE_AUTOML_DISABLE_PLUGIN_AUTOLOAD": "1"},
    )


def test_the_code_module_loads_at_the_first_call_and_runs_on_the_registered_instance(tmp_path: Path) -> None:
    package = tmp_path / "lazy_pkg"
    package.mkdir()
    (package / "__init__.py").write_text("")
    (package / "decl.py").write_text(
        textwrap.dedent(
            """
            from vae_automl.components import Compressor, Param, implemented_in


            class Scale(Compressor):
                name = "scale"
                params = (Param("factor", "float", 2.0, minimum=0.0, maximum=10.0),)
                apply = implemented_in("lazy_pkg.code:ScaleCode")
                factor_of = implemented_in("lazy_pkg.code:ScaleCode")

                def __init__(self, offset: float = 0.0) -> None:
                    self.offset = offset
            """
        )
    )
    (package / "code.py").write_text(
        textwrap.dedent(
            """
            from lazy_pkg.decl import Scale

            LOADED = True


            class ScaleCode(Scale):
                def apply(self, model, params, ctx):
                    return model * self.factor_of(params) + self.offset

                @staticmethod
                def factor_of(params):
                    return params.get("factor", 2.0)
            """
        )
    )
    result = run_python(
        """
        import sys
        from lazy_pkg.decl import Scale

        scale = Scale(offset=1.0)
        assert scale.resolve_params({}) == {"factor": 2.0}
        assert "lazy_pkg.code" not in sys.modules, "declaring and checking parameters loaded the code"
        print(scale.apply(3.0, {"factor": 4.0}, None), "lazy_pkg.code" in sys.modules)
        """,
        tmp_path,
    )
    assert result.returncode == 0, result.stderr
    assert result.stdout.split() == ["13.0", "True"]  # 3 * 4 + offset 1: the code ran on the declared instance


def test_class_access_imports_nothing_and_a_missing_method_is_named() -> None:
    class Ghost(Compressor):
        name = "ghost"
        params = (Param("x", "int", 1),)
        apply = implemented_in("vae_automl.components:Param")  # a real class that has no `apply`

    assert isinstance(Ghost.__dict__["apply"], object) and Ghost.apply is Ghost.__dict__["apply"]
    with pytest.raises(AttributeError, match=r"vae_automl.components:Param defines no 'apply'"):
        Ghost().apply(None, {}, None)
    with pytest.raises(ValueError, match="package.module:Class"):
        implemented_in("no_colon_here")


def test_declared_choices_match_the_code() -> None:
    from vae_automl import vae
    from vae_automl.base_model import BaseModelArchitecture
    from vae_automl.builtin import architectures, architectures_impl

    assert architectures.ACTIVATION_NAMES == tuple(architectures_impl.ACTIVATIONS)
    assert architectures.LIKELIHOOD_NAMES == vae.LIKELIHOODS
    declared, code = architectures.UserModelArchitecture(), BaseModelArchitecture()
    assert (declared.name, declared.help, declared.group_names) == (code.name, code.help, code.group_names)


def test_every_declared_method_has_its_code() -> None:
    """Each `implemented_in` names a class that defines that method (a typo would fail only inside a trial)."""
    import importlib

    from vae_automl.components import _ImplementedIn

    checked = 0
    for module_path in (*DEFAULT_PLUGINS, *(("vae_automl_nni.compressors",) if HAS_NNI_PLUGIN else ())):
        module = importlib.import_module(module_path)
        for value in vars(module).values():
            if not isinstance(value, type):
                continue
            for name, attribute in vars(value).items():
                if isinstance(attribute, _ImplementedIn):
                    holder = getattr(importlib.import_module(attribute.module), attribute.owner)
                    assert name in vars(holder), f"{module_path}.{value.__name__}.{name} -> {attribute}"
                    checked += 1
    assert checked >= 40


def test_listing_the_built_ins_and_the_nni_plugin_imports_no_torch() -> None:
    result = run_python(
        """
        import sys
        from vae_automl.plugin_manager import get_plugin_manager
        from vae_automl.plugins_info import list_components

        rows = list_components()
        if HAS_NNI_PLUGIN:
            get_plugin_manager(("vae_automl_nni.plugin",))
        names = {row["name"] for row in list_components()}
        print(len(rows), "nni_prune" in names, sorted(m for m in ("torch", "onnx", "nni") if m in sys.modules))
        """.replace("HAS_NNI_PLUGIN", str(HAS_NNI_PLUGIN))
    )
    assert result.returncode == 0, result.stderr
    count, nni_listed, heavy = result.stdout.split(maxsplit=2)
    assert int(count) >= 30 and nni_listed == str(HAS_NNI_PLUGIN) and heavy.strip() == "[]"


def test_helpers_still_import_from_where_they_were() -> None:
    """`from vae_automl.builtin.pruning import shrink` (a plugin written before the split) finds the code module's."""
    result = run_python(
        """
        import sys
        import vae_automl.builtin.pruning as pruning

        assert not hasattr(pruning, "__wrapped__") and "vae_automl.builtin.pruning_impl" not in sys.modules
        from vae_automl.builtin.pruning import shrink
        from vae_automl.builtin.quantization import uniform_grid
        from vae_automl.builtin import pruning_impl, quantization_impl

        assert shrink is pruning_impl.shrink and uniform_grid is quantization_impl.uniform_grid
        try:
            from vae_automl.builtin.pruning import no_such_name
        except ImportError as exc:
            print("refused:", exc)
        """
    )
    assert result.returncode == 0, result.stderr
    assert "refused: cannot import name 'no_such_name'" in result.stdout
