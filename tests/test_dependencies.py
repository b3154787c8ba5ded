"""pyproject's dependencies: lower bounds that admit the APIs the code calls, one postgres driver, extras that compose."""

from __future__ import annotations

import ast
import re
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.version import Version

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]

# (distribution, oldest release with the API, file that calls it, the call as written there)
API_FLOORS = [
    ("torch", "2.5", "vae_automl/runtime.py", "dynamo=False"),  # the keyword arrived in torch.onnx.export in 2.5
    ("ray", "2.41", "vae_automl/backends/ray.py", "tune.RunConfig"),  # ray.train.RunConfig before 2.41
    ("optuna", "5.0", "vae_automl/constraints.py", "trial.set_constraint"),
    ("optuna", "3.2", "vae_automl/study.py", "set_metric_names"),
    ("filelock", "3.10", "vae_automl/trial.py", "FileLock("),
]


def lower_bound(requirement: Requirement) -> Version | None:
    bounds = [Version(s.version) for s in requirement.specifier if s.operator in (">=", "==", "~=")]
    return max(bounds) if bounds else None


def requirements(group: str | None = None) -> dict[str, Requirement]:
    listed = PROJECT["dependencies"] if group is None else PROJECT["optional-dependencies"][group]
    return {Requirement(r).name: Requirement(r) for r in listed}


def all_requirements() -> dict[str, Requirement]:
    found = requirements()
    for group in PROJECT["optional-dependencies"]:
        for name, req in requirements(group).items():
            found.setdefault(name, req)
    return found


@pytest.mark.parametrize(("dist", "floor", "path", "call"), API_FLOORS)
def test_lower_bounds_admit_the_apis_used(dist: str, floor: str, path: str, call: str) -> None:
    # the call is still there (else this row is stale and the bound may be lowered)...
    assert call in (REPO / path).read_text(), f"{path} no longer calls {call}: update API_FLOORS and the bound"
    # ...and no release the bound allows lacks it
    req = all_requirements()[dist]
    bound = lower_bound(req)
    assert bound is not None and bound >= Version(floor), f"{req} allows releases before {floor}, which lack {call}"


def test_heavy_or_unused_packages_left_the_core() -> None:
    core = requirements()
    assert not {"scikit-learn", "psycopg2-binary", "matplotlib"} & set(core)
    # 8-bit latency is timed on onnxruntime, so it is installed wherever the search runs; the default
    # sampler (hvi) fits its Gaussian processes with scipy
    assert {"onnx", "onnxruntime", "filelock", "scipy"} <= set(core)
    importers = {
        p.relative_to(REPO).as_posix(): re.findall(r"^\s*(?:import|from) (sklearn|scipy)\b", p.read_text(), re.M)
        for p in (REPO / "vae_automl").rglob("*.py")
    }
    # scikit-learn is nowhere (digits ship as an array); scipy only where the sampler fits its models
    assert {path: found for path, found in importers.items() if found} == {"vae_automl/hvi_sampler.py": ["scipy", "scipy"]}


def test_one_postgres_driver() -> None:
    drivers = {"psycopg", "psycopg2", "psycopg2-binary", "pg8000", "asyncpg"}
    assert [n for n in requirements("postgres") if n in drivers] == ["psycopg"]
    from vae_automl.study import rdb_url

    assert rdb_url("postgresql://u:p@h/db") == "postgresql+psycopg://u:p@h/db"
    assert rdb_url("postgres://h/db") == "postgresql+psycopg://h/db"
    assert rdb_url("postgresql+psycopg2://h/db") == "postgresql+psycopg2://h/db"  # a named driver is kept
    assert rdb_url("sqlite:///x.db") == "sqlite:///x.db"


def test_dev_names_the_other_extras_instead_of_repeating_them() -> None:
    extras = PROJECT["optional-dependencies"]
    dev = [Requirement(r) for r in extras["dev"]]
    own = [r for r in dev if r.name == PROJECT["name"]]
    assert len(own) == 1 and own[0].extras == set(extras) - {"dev"}
    repeated = {r.name for r in dev} & {name for group in extras if group != "dev" for name in requirements(group)}
    assert not repeated, f"dev repeats {sorted(repeated)}: name their extra instead"
    # CI installs the dev extra of this checkout: the self-reference resolves to it
    assert '-e ".[dev]"' in (REPO / "Makefile").read_text()


def test_the_shipped_digits_file_is_package_data() -> None:
    data = PYPROJECT["tool"]["setuptools"]["package-data"]["vae_automl"]
    assert "builtin/digits.npz" in data and (REPO / "vae_automl" / "builtin" / "digits.npz").is_file()


def test_no_module_imports_fcntl() -> None:
    # fcntl is POSIX-only: importing it made `search` unimportable on Windows
    paths = sorted((REPO / "vae_automl").rglob("*.py"))
    assert len(paths) > 20, "the scan found no modules"
    for path in paths:
        for node in ast.walk(ast.parse(path.read_text())):
            names = [a.name for a in node.names] if isinstance(node, ast.Import) else []
            names += [node.module or ""] if isinstance(node, ast.ImportFrom) else []
            assert "fcntl" not in names, path
