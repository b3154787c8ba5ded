"""The command line's conventions: version, exit codes, --json, option names, storage lookup, help, completion, pipes."""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import optuna
import pytest

from tests.test_record import stored_record
from vae_automl import cli
from vae_automl.cli import EXIT_EXHAUSTED, EXIT_INTERRUPTED, build_parser, main
from vae_automl.locations import STORAGE_ENV
from vae_automl.record import TrialRecord
from vae_automl.study import BASELINE_ATTR, OBJECTIVES_ATTR

REPO = Path(__file__).resolve().parents[1]
# commands that only write a script or hold subcommands print no results of their own
NO_RESULTS = {"completion", "codec"}


def make_study(folder: Path, name: str = "s", values: tuple[tuple[float, float], ...] = ((1.0, 2.0), (2.0, 1.0))) -> str:
    """A stored two-objective study (no torch), in FOLDER/study.db as a search's run folder holds it."""
    folder.mkdir(parents=True, exist_ok=True)
    storage = f"sqlite:///{folder / 'study.db'}"
    study = optuna.create_study(storage=storage, study_name=name, directions=["minimize", "minimize"])
    study.set_user_attr(OBJECTIVES_ATTR, ["size_bytes", "recon_error"])
    for number, value in enumerate(values):
        trial = study.ask()
        for key, attr in TrialRecord.from_dict(stored_record(trial=number)).to_user_attrs().items():
            trial.set_user_attr(key, attr)
        study.tell(trial, list(value))
    return storage


def commands(parser: argparse.ArgumentParser, prefix: str = "") -> dict[str, argparse.ArgumentParser]:
    found = {}
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for name, sub in action.choices.items():
                found[prefix + name] = sub
                found.update(commands(sub, prefix + name + " "))
    return found


@pytest.fixture(autouse=True)
def no_storage_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(STORAGE_ENV, raising=False)


def test_version_is_the_package_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["--version"])
    assert exit_info.value.code == 0
    from setuptools.config.pyprojecttoml import read_configuration

    version = read_configuration(REPO / "pyproject.toml", expand=True)["project"]["version"]  # what pip installs
    assert capsys.readouterr().out.strip() == f"vae-automl {version}"


def test_usage_error_exits_2_project_error_exits_1(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["front", "--no-such-option"])
    assert exit_info.value.code == 2
    with pytest.raises(SystemExit) as exit_info:
        main(["search", "x.yaml", "--device", "gpu"])  # checked at parse time: a usage error
    assert exit_info.value.code == 2 and "device must be cpu, cuda, cuda:N, mps or auto, but got 'gpu'" in capsys.readouterr().err
    storage = make_study(tmp_path)
    assert main(["front", "--storage", storage, "--study", "nope"]) == 1
    assert "no study 'nope'" in capsys.readouterr().err


@pytest.mark.parametrize("command", ["search", "worker"])
@pytest.mark.parametrize("flag, value, shown", [("--n-trials", "-1", "-1"), ("--n-trials", "ten", "'ten'"), ("--trials", "-3", "-3")])
def test_a_negative_or_non_integer_trial_count_is_a_usage_error(
    command: str, flag: str, value: str, shown: str, capsys: pytest.CaptureFixture[str]
) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "x.yaml", flag, value] if command == "search" else [command, flag, value])
    assert exit_info.value.code == 2
    assert f"must be a whole number >= 0, but got {shown}" in capsys.readouterr().err


def test_zero_more_trials_is_accepted_at_parse_time() -> None:
    args = cli.build_parser().parse_args(["search", "x.yaml", "--n-trials", "0"])
    assert args.n_trials == 0


EXIT_STATUSES = (0, 1, 2, EXIT_EXHAUSTED, EXIT_INTERRUPTED)


def test_ctrl_c_exits_with_the_documented_status(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    def interrupted(args: argparse.Namespace) -> int:
        raise KeyboardInterrupt

    monkeypatch.setattr(cli, "_cmd_front", interrupted)  # build_parser binds the module's function at each main()
    assert main(["front"]) == EXIT_INTERRUPTED == 130  # 128 + SIGINT, what a shell reports for Ctrl-C
    assert "run the same command again to resume" in capsys.readouterr().err


def test_readme_and_help_name_every_exit_status(capsys: pytest.CaptureFixture[str]) -> None:
    # a script author reads the status list in the README or `--help`; each must name every status main() returns
    readme = (REPO / "README.md").read_text()
    bullet = readme[readme.index("- Exit status ") :].split("\n- ", 1)[0]
    with pytest.raises(SystemExit):
        main(["--help"])
    epilog = capsys.readouterr().out.split("exit status:", 1)[1]
    for text in (bullet, epilog):
        named = {int(n) for n in re.findall(r"(?<![\w.-])(\d+)(?![\w.%])", text)}
        assert set(EXIT_STATUSES) <= named, text


def test_every_command_has_help_an_example_and_json() -> None:
    found = commands(build_parser())
    assert {"search", "front", "worker", "export", "report", "plugins", "codec encode", "codec decode", "completion"} <= set(
        found
    )
    for name, parser in found.items():
        assert parser.description, name
        assert f"example:\n  vae-automl {name}" in (parser.epilog or ""), name
        options = {opt for action in parser._actions for opt in action.option_strings}
        for action in parser._actions:
            if not isinstance(action, argparse._SubParsersAction):
                assert action.help, f"{name} {action.option_strings or action.dest} has no help"
        if name not in NO_RESULTS:
            assert "--json" in options, f"{name} has no --json"


def test_one_meaning_per_option_name() -> None:
    # an option name shared by commands carries the same help (and so the same meaning) in each
    meanings: dict[str, dict[str, str]] = {}
    for name, parser in commands(build_parser()).items():
        for action in parser._actions:
            for opt in action.option_strings:
                if opt not in ("-h", "--help") and not str(action.help).startswith("deprecated:"):
                    meanings.setdefault(opt, {})[name] = str(action.help)
    mixed = {opt: by for opt, by in meanings.items() if len(set(by.values())) > 1}
    assert not mixed, mixed
    for opt in ("--storage", "--study", "--out", "--json"):
        assert {"search", "front", "export", "report", "worker"} <= set(meanings[opt]), opt
    assert set(meanings["--n-trials"]) == {"search", "worker"}  # export's trial numbers are --select


def test_deprecated_trials_alias_warns_and_maps(capsys: pytest.CaptureFixture[str]) -> None:
    parser = build_parser()
    args = parser.parse_args(["search", "x.yaml", "--trials", "3"])
    assert args.n_trials == 3 and "--trials is deprecated; use --n-trials" in capsys.readouterr().err
    args = parser.parse_args(["worker", "--study", "s", "--trials", "4"])
    assert args.n_trials == 4
    args = parser.parse_args(["export", "--out", "r", "--trials", "1,2"])
    assert args.select == "1,2" and "use --select" in capsys.readouterr().err
    assert parser.parse_args(["search", "x.yaml", "--n-trials", "5"]).n_trials == 5
    assert "deprecated" not in capsys.readouterr().err


def test_storage_from_flag_env_or_run_folder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    run_a = tmp_path / "a"
    run_b = tmp_path / "b"
    make_study(run_a, "a")
    storage_b = make_study(run_b, "b", ((5.0, 5.0),))

    def front_trials(*argv: str) -> list[int]:
        capsys.readouterr()
        assert main(["front", "--json", *argv]) == 0
        return [row["trial"] for row in json.loads(capsys.readouterr().out)["points"]]

    assert front_trials("--out", str(run_a)) == [0, 1]  # the run folder's study.db and its only study
    monkeypatch.setenv(STORAGE_ENV, storage_b)
    assert front_trials() == [0]  # the environment variable
    assert front_trials("--out", str(run_a)) == [0]  # it beats a run folder, like --storage does
    assert front_trials("--storage", f"sqlite:///{run_a / 'study.db'}") == [0, 1]  # the flag beats it
    monkeypatch.delenv(STORAGE_ENV)
    assert main(["front"]) == 1 and STORAGE_ENV in capsys.readouterr().err
    assert main(["front", "--out", str(tmp_path / "none")]) == 1
    assert f"{tmp_path / 'none' / 'study.db'}: no such study file" in capsys.readouterr().err
    assert not (tmp_path / "none").exists()  # no empty study file made on the way


def test_the_storage_s_only_study_is_used_else_the_names_are_listed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    storage = make_study(tmp_path, "first")
    optuna.create_study(storage=storage, study_name="second")
    assert main(["front", "--out", str(tmp_path)]) == 1
    assert "holds 2 studies (first, second); name one with --study" in capsys.readouterr().err
    assert main(["front", "--out", str(tmp_path), "--study", "first"]) == 0


def test_export_and_report_destinations(capsys: pytest.CaptureFixture[str]) -> None:
    from vae_automl.cli import _destination

    parser = build_parser()
    args = parser.parse_args(["export", "--out", "runs/q"])
    assert _destination(args, "export") == ("runs/q", str(Path("runs/q") / "export"))
    args = parser.parse_args(["report", "--out", "runs/q", "--dest", "site"])
    assert _destination(args, "report") == ("runs/q", "site")
    # 0.1's spelling: --storage and --out, where --out was the destination; kept, with a warning
    args = parser.parse_args(["export", "--storage", "sqlite:///x.db", "--out", "exported"])
    assert _destination(args, "export") == (None, "exported")
    assert "write --dest exported" in capsys.readouterr().err


def test_front_json_is_one_object_for_every_study(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    plain = make_study(tmp_path / "plain", values=((1.0, 2.0), (2.0, 1.0), (3.0, 3.0)))
    with_base = make_study(tmp_path / "byom")
    baseline = {"objectives": {"size_bytes": 9.0, "recon_error": 0.5}, "metrics": {}, "base_model": {"factory": "m:f"}}
    optuna.load_study(study_name="s", storage=with_base).set_user_attr(BASELINE_ATTR, baseline)
    printed = []
    for storage in (plain, with_base):
        capsys.readouterr()
        assert main(["front", "--json", "--storage", storage]) == 0
        printed.append(json.loads(capsys.readouterr().out))
    assert [set(p) for p in printed] == [{"points", "knee", "baseline"}] * 2  # the same keys, base_model: or not
    assert [row["trial"] for row in printed[0]["points"]] == [0, 1]  # trial 2 is dominated
    assert printed[0]["baseline"] is None and printed[1]["baseline"] == baseline
    assert printed[0]["knee"] in (0, 1)


def test_closed_pipe_prints_no_traceback(tmp_path: Path) -> None:
    storage = make_study(tmp_path)
    read_end, write_end = os.pipe()
    os.close(read_end)  # the reader is gone before anything is written, as with `| head` after its lines
    script = f"import sys\nfrom vae_automl.cli import main\nsys.exit(main(['front', '--json', '--storage', {storage!r}]))\n"
    try:
        result = subprocess.run(
            [sys.executable, "-c", script], stdout=write_end, stderr=subprocess.PIPE, text=True, timeout=120, cwd=REPO
        )
    finally:
        os.close(write_end)
    assert "Traceback" not in result.stderr and "BrokenPipe" not in result.stderr, result.stderr
    assert result.returncode == 1


def test_bash_completion_script(capsys: pytest.CaptureFixture[str]) -> None:
    pytest.importorskip("shtab")
    assert main(["completion", "bash"]) == 0
    script = capsys.readouterr().out
    for word in ("search", "front", "compare", "--n-trials", "--storage", "--select"):
        if word == "compare" and "compare" not in commands(build_parser()):
            continue
        assert word in script, word
    bash = shutil.which("bash")
    if bash is None:
        pytest.skip("no bash to check the script's syntax")
    check = subprocess.run([bash, "-n"], input=script, capture_output=True, text=True, timeout=60)
    assert check.returncode == 0, check.stderr


def test_compare_two_studies_at_one_reference_point(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_study(tmp_path / "a", "a", ((1.0, 4.0), (2.0, 2.0), (4.0, 1.0)))
    make_study(tmp_path / "b", "b", ((1.0, 3.0), (3.0, 1.0), (3.5, 3.5)))  # the last point is dominated
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--json"]) == 0
    result = json.loads(capsys.readouterr().out)
    # pooled nadir (4, 4) plus 10% of the pooled range (3): the reference both hypervolumes use
    assert result["reference_point"] == pytest.approx([4.3, 4.3])
    a, b = result["studies"]
    # by hand, rectangles of the sorted fronts up to the reference point
    assert a["hypervolume"] == pytest.approx(1 * 0.3 + 2 * 2.3 + 0.3 * 3.3)
    assert b["hypervolume"] == pytest.approx(2 * 1.3 + 1.3 * 3.3)
    assert result["pooled_hypervolume"] == pytest.approx(1 * 1.3 + 1 * 2.3 + 1.3 * 3.3)  # (1,3), (2,2), (3,1)
    assert b["share_of_pooled"] == pytest.approx(b["hypervolume"] / result["pooled_hypervolume"])
    assert [row["trial"] for row in b["front"]] == [0, 1] and a["study"] == "a" and b["completed"] == 3

    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b"), "--reference", "5,5"]) == 0
    table = capsys.readouterr().out
    assert "| study" in table and "hypervolume" in table and "size_bytes=5" in table
    assert f"| a     | 0     | 1          | 4           | {1 * 1 + 2 * 3 + 1 * 4:<11} |" in table  # HV on the study's first row


def test_compare_tells_two_runs_of_one_yaml_apart(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    make_study(tmp_path / "a", "quick", ((1.0, 4.0),))
    make_study(tmp_path / "b", "quick", ((2.0, 2.0),))
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "b")]) == 0
    rows = [line.split("|")[1].strip() for line in capsys.readouterr().out.splitlines() if line.startswith("| quick")]
    assert len(rows) == 2 and rows[0] != rows[1], rows
    assert rows[0].endswith(str(tmp_path / "a" / "study.db")) and rows[1].endswith(str(tmp_path / "b" / "study.db"))


def test_compare_finds_studies_by_name_url_and_refuses_other_objectives(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    storage = make_study(tmp_path, "x", ((1.0, 1.0),))
    make_study(tmp_path, "y", ((2.0, 2.0),))
    assert main(["compare", "--storage", storage, "x", f"{storage}#y", "--json"]) == 0
    assert [s["study"] for s in json.loads(capsys.readouterr().out)["studies"]] == ["x", "y"]
    other = optuna.create_study(storage=storage, study_name="z", directions=["minimize", "maximize"])
    other.set_metric_names(["size_bytes", "psnr_db"])
    assert main(["compare", "--storage", storage, "x", "z"]) == 1
    assert "hypervolumes of different objectives do not compare" in capsys.readouterr().err
    assert main(["compare", "--storage", storage, "x"]) == 1 and "at least two studies" in capsys.readouterr().err


def test_compare_names_a_missing_run_folder(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    make_study(tmp_path / "a", "a", ((1.0, 1.0),))
    monkeypatch.delenv("VAE_AUTOML_STORAGE", raising=False)
    # a mistyped folder is taken for a study name with nowhere to look it up: the error says which argument
    assert main(["compare", str(tmp_path / "a"), str(tmp_path / "typo")]) == 1
    assert f"{tmp_path / 'typo'}: no such run folder" in capsys.readouterr().err


def test_new_commands_are_library_functions_first() -> None:
    import vae_automl
    from vae_automl.comparison import compare_studies
    from vae_automl.preview import dry_run

    assert vae_automl.compare is compare_studies and vae_automl.dry_run is dry_run
    assert {"compare", "dry_run"} <= set(vae_automl.__all__)


def test_an_os_error_is_a_message_and_exit_1(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import vae_automl.api

    def denied(*args: object, **kwargs: object) -> None:
        raise PermissionError(13, "Permission denied", str(tmp_path / "report"))

    monkeypatch.setattr(vae_automl.api, "report", denied)
    make_study(tmp_path)
    assert main(["report", "--out", str(tmp_path)]) == 1
    assert capsys.readouterr().err.strip() == f"error: [Errno 13] Permission denied: '{tmp_path / 'report'}'"


def test_every_command_s_help_imports_neither_torch_nor_optuna() -> None:
    names = sorted(commands(build_parser()))
    script = (
        "import sys\n"
        "from vae_automl.cli import main\n"
        f"for name in {names!r}:\n"
        "    try:\n"
        "        main([*name.split(), '--help'])\n"
        "    except SystemExit:\n"
        "        pass\n"
        "print('LOADED', sorted(m for m in ('torch', 'optuna', 'shtab') if m in sys.modules))\n"
    )
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120, cwd=REPO)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "LOADED []" in result.stdout, result.stdout[-500:]
