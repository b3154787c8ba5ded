"""tools/mutation.py (`make mutation`): how mutant results become the per-module figures of mutation.json."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tools"))
import mutation  # noqa: E402


def test_module_of_a_function_and_a_method_mutant() -> None:
    assert mutation.module_of("vae_automl.pareto.x_hypervolume__mutmut_3") == "vae_automl.pareto"
    assert mutation.module_of("vae_automl.storage.codecs.xǁUniformCodecǁcodes__mutmut_31") == "vae_automl.storage.codecs"
    with pytest.raises(ValueError, match="not a mutmut mutant name"):
        mutation.module_of("vae_automl.pareto.hypervolume")


def test_tally_counts_each_status_once_and_scores_killed_over_tested() -> None:
    results = {
        "vae_automl.export.x_place__mutmut_1": "killed",
        "vae_automl.export.x_place__mutmut_2": "timeout",
        "vae_automl.export.x_place__mutmut_3": "survived",
        "vae_automl.export.x_place__mutmut_4": "no tests",
        "vae_automl.export.x_place__mutmut_5": "not checked",
        "vae_automl.export.x_place__mutmut_6": "survived",
        "vae_automl.pareto.x_knee_point__mutmut_1": "killed",
    }
    report = mutation.tally(results, {"vae_automl.export.x_place__mutmut_6": "why"})
    export = report["modules"]["vae_automl.export"]
    assert export == {"killed": 2, "timeout": 1, "survived": 2, "equivalent": 1, "untested": 1, "score": 0.5}
    assert report["modules"]["vae_automl.pareto"]["score"] == 1.0
    assert (report["killed"], report["survived"], report["total_score"]) == (3, 2, 0.6)
    assert report["survivors"] == ["vae_automl.export.x_place__mutmut_3: survived",
                                   "vae_automl.export.x_place__mutmut_4: no tests"]
    assert report["not_run"] == ["vae_automl.export.x_place__mutmut_5: not checked"]
    table = mutation.table(report)
    assert "| vae_automl.export | 2 | 1 | 2 | 1 | 1 | 50.0% |" in table and "| total | 3 | | 2 | | | 60.0% |" in table


def test_only_narrows_the_scope_to_patterns_inside_it() -> None:
    assert mutation.narrowed_scope(["vae_automl.storage.format.*"]) == ["vae_automl.storage.format.*"]
    sample = "vae_automl.config.x_parse_space__mutmut_*[05]"
    assert mutation.narrowed_scope([sample]) == [sample]  # a sample of one scoped function
    assert mutation.narrowed_scope(["vae_automl.train.*"]) == []  # outside the scope: nothing


def test_the_equivalent_list_needs_a_reason_on_every_line(tmp_path: Path) -> None:
    listed = tmp_path / "eq.txt"
    listed.write_text("# comment\n\nvae_automl.pareto.x_a__mutmut_1: numpy takes any negative size\n")
    assert mutation.equivalent_mutants(listed) == {"vae_automl.pareto.x_a__mutmut_1": "numpy takes any negative size"}
    listed.write_text("vae_automl.pareto.x_a__mutmut_1\n")
    with pytest.raises(SystemExit, match="expected 'mutant_name: why it is equivalent'"):
        mutation.equivalent_mutants(listed)


def test_every_listed_equivalent_is_in_the_scope() -> None:
    listed = mutation.equivalent_mutants()
    assert listed and all(mutation.within(name, mutation.SCOPE) for name in listed)


def test_under_mutmut_a_mutants_tests_run_cheapest_module_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    import json
    from types import SimpleNamespace

    from conftest import pytest_collection_modifyitems

    durations = {"tests/a.py::slow": 5.0, "tests/a.py::quick": 0.5, "tests/b.py::x": 1.0, "tests/b.py::y": 2.0}
    (tmp_path / "mutmut-stats.json").write_text(json.dumps({"duration_by_test": durations}))
    monkeypatch.chdir(tmp_path)
    order = ["tests/a.py::slow", "tests/b.py::y", "tests/a.py::quick", "tests/new.py::t", "tests/b.py::x"]
    items: list = [SimpleNamespace(nodeid=n) for n in order]
    monkeypatch.delenv("MUTANT_UNDER_TEST", raising=False)
    pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]
    assert [i.nodeid for i in items] == order  # an ordinary run keeps its order
    monkeypatch.setenv("MUTANT_UNDER_TEST", "vae_automl.export.x_place__mutmut_1")
    pytest_collection_modifyitems(None, items)  # type: ignore[arg-type]
    # a module mutmut never timed first, then b (3 s in all) before a (5.5 s), each cheapest test first
    assert [i.nodeid for i in items] == ["tests/new.py::t", "tests/b.py::x", "tests/b.py::y", "tests/a.py::quick",
                                         "tests/a.py::slow"]
