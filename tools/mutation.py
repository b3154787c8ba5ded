#!/usr/bin/env python3
"""Mutation testing of the modules that decide results (`make mutation`): run mutmut, write mutation.json, print the table.

mutmut 3 (configured in pyproject.toml's ``[tool.mutmut]``: the files, the fast
tests it runs) copies ``vae_automl/`` into ``mutants/``, and for each mutant runs
the selected tests that reach the mutated function. This script runs it on
:data:`SCOPE` (the functions that decide results), then counts per module:

* killed: a test failed (or timed out) on the mutant; timeouts are also counted apart, as a timeout with a
  CPU limit too tight for a slow fixture is no kill (``timeout_constant`` in ``[tool.mutmut]`` gives the limit room);
* survived: every test passed, or no selected test reaches the mutant;
* equivalent: listed in ``tests/mutation_equivalent.txt`` with the reason it
  cannot change behaviour (not counted either way);
* untested: not run yet (an interrupted run, or a run narrowed by ``--only`` to a sample such as
  ``'vae_automl.export.x*__mutmut_*0'``, every mutant whose number ends in 0); not counted either way.

``score = killed / (killed + survived)``. mutation.json holds
``{"modules": {module: {"killed", "survived", "equivalent", "untested", "score"}}, "total_score", "seconds", "survivors"}``.
``--report`` reads the results of the last run instead of running; ``--resume`` tests only the mutants it left
untested or surviving (an interrupted run, or survivors after new tests).

``--only PATTERN ...`` narrows a run (or ``--resume``) to some of :data:`SCOPE`, e.g. one module after new tests:
the other modules keep their last results.

Usage: python tools/mutation.py [--jobs N] [--report | --resume] [--only PATTERN ...] [--out mutation.json]
"""

from __future__ import annotations

import argparse
import fnmatch
import json
import os
import subprocess
import sys
import time
from collections import defaultdict
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
MUTMUT = Path(sys.executable).with_name("mutmut")
EQUIVALENT = REPO / "tests" / "mutation_equivalent.txt"

SCOPE = (
    "vae_automl.pareto.*",  # the Pareto front, hypervolume, knee point
    "vae_automl.early_stopping.*",  # the successive-halving rungs and their verdicts
    "vae_automl.storage.bits.*",  # bit packing, sparse masks
    "vae_automl.storage.codecs.*",  # dense, uniform, codebook codecs
    "vae_automl.storage.header.*",  # the JSON header and the format version
    "vae_automl.storage.format.*",  # whole models to and from bytes
    "vae_automl.storage.entropy.*",  # entropy coding of packed parts
    "vae_automl.storage.compact.*",  # the compact container of tiny models
    "vae_automl.loading.*",  # verification and loading of an export folder
    "vae_automl.record.*",  # the trial record
    # parameter validation: the YAML value of a parameter, and the checks every YAML number and choice goes through
    "vae_automl.components.xǁParamǁ*",
    "vae_automl.config.x_parse_param__*",
    "vae_automl.config.x__coerce__*",
    "vae_automl.config.x__mapping__*",
    "vae_automl.config.x__int__*",
    "vae_automl.config.x__number__*",
    "vae_automl.config.x__choice__*",
    "vae_automl.config.x__key__*",
    "vae_automl.config.x__lookup__*",
    "vae_automl.config.xǁ_Locǁ*",
    "vae_automl.config.x_parse_space__*",  # the YAML of a whole search space: keys, defaults, refusals
    "vae_automl.export.*",  # export verification: re-measured figures, sha256 checks, the manifest, atomic folders
)
"""Mutant names (fnmatch) of the functions under test. The rest of components.py and config.py (plugin
plumbing, composition checks) is left out: too many mutants for a run that fits a shared 2-core machine."""

KILLED = {"killed", "timeout", "caught by type check", "segfault"}
SURVIVED = {"survived", "no tests", "suspicious"}


def within(name: str, patterns: list[str] | tuple[str, ...]) -> bool:
    return any(fnmatch.fnmatch(name, pattern) for pattern in patterns)


def narrowed_scope(only: list[str]) -> list[str]:
    """What ``--only`` keeps of :data:`SCOPE`: its patterns that ``only`` matches, and the ``only`` patterns inside one."""
    return sorted({*(p for p in SCOPE if within(p, only)), *(p for p in only if within(p, SCOPE))})


def module_of(mutant: str) -> str:
    """``vae_automl.storage.codecs.xǁUniformCodecǁcodes__mutmut_3`` -> ``vae_automl.storage.codecs``."""
    parts = mutant.split(".")
    for i, part in enumerate(parts):
        if part.startswith(("x_", "xǁ")):
            return ".".join(parts[:i])
    raise ValueError(f"not a mutmut mutant name: {mutant}")


def equivalent_mutants(path: Path = EQUIVALENT) -> dict[str, str]:
    """``name: reason`` lines of the mutants that cannot change behaviour (``#`` comments allowed)."""
    out: dict[str, str] = {}
    for line in path.read_text().splitlines() if path.is_file() else []:
        line = line.split("#", 1)[0].strip() if line.lstrip().startswith("#") else line.strip()
        if not line:
            continue
        name, sep, reason = line.partition(":")
        if not sep or not reason.strip():
            raise SystemExit(f"{path}: {line!r}: expected 'mutant_name: why it is equivalent'")
        out[name.strip()] = reason.strip()
    return out


def read_results() -> dict[str, str]:
    """mutant name -> status, from ``mutmut results --all=true`` (the last run's results in mutants/)."""
    text = subprocess.run([str(MUTMUT), "results", "--all=true"], cwd=REPO, check=True, capture_output=True, text=True).stdout
    results = {}
    for line in text.splitlines():
        name, sep, status = line.strip().rpartition(": ")
        if sep and within(name, SCOPE):
            results[name] = status
    return results


def tally(results: dict[str, str], equivalent: dict[str, str]) -> dict[str, object]:
    modules: dict[str, dict[str, float]] = defaultdict(
        lambda: {"killed": 0, "timeout": 0, "survived": 0, "equivalent": 0, "untested": 0}
    )
    survivors, not_run = [], []
    for name, status in sorted(results.items()):
        counts = modules[module_of(name)]
        if name in equivalent:
            counts["equivalent"] += 1
        elif status in KILLED:
            counts["killed"] += 1
            counts["timeout"] += status == "timeout"
        elif status in SURVIVED:
            counts["survived"] += 1
            survivors.append(f"{name}: {status}")
        else:
            counts["untested"] += 1
            not_run.append(f"{name}: {status}")
    for counts in modules.values():
        tested = counts["killed"] + counts["survived"]
        counts["score"] = round(counts["killed"] / tested, 4) if tested else None
    killed = sum(c["killed"] for c in modules.values())
    survived = sum(c["survived"] for c in modules.values())
    return {
        "modules": dict(sorted(modules.items())),
        "total_score": round(killed / (killed + survived), 4) if killed + survived else None,
        "killed": killed,
        "survived": survived,
        "survivors": survivors,
        "not_run": not_run,
    }


def table(report: dict[str, object]) -> str:
    modules = report["modules"]
    assert isinstance(modules, dict)
    rows = [
        "| module | killed | of which timeout | survived | equivalent | untested | score |",
        "| --- | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for name, c in modules.items():
        counts = f"{c['killed']} | {c['timeout']} | {c['survived']} | {c['equivalent']} | {c['untested']}"
        rows.append(f"| {name} | {counts} | {percent(c['score'])} |")
    rows.append(f"| total | {report['killed']} | | {report['survived']} | | | {percent(report['total_score'])} |")
    return "\n".join(rows)


def percent(score: object) -> str:
    return "n/a" if score is None else f"{100 * float(score):.1f}%"  # type: ignore[arg-type]


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n", 1)[0])
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 2, help="mutants tested at once (default: CPUs)")
    parser.add_argument("--report", action="store_true", help="only report the last run's results")
    parser.add_argument(
        "--resume", action="store_true", help="test only the mutants the last run left untested or surviving (after new tests)"
    )
    parser.add_argument(
        "--only", nargs="+", metavar="PATTERN", help="test only mutants matching these fnmatch patterns (within the scope)"
    )
    parser.add_argument("--out", type=Path, default=REPO / "mutation.json")
    args = parser.parse_args(argv)
    seconds = None
    if not args.report:
        env = {**os.environ, "OMP_NUM_THREADS": "1"}
        env.pop("PYTHONPATH", None)  # the tests must import the mutated copy in mutants/, not the checkout
        names = list(SCOPE)
        if args.resume:
            names = sorted(name for name, status in read_results().items() if status not in KILLED)
        if args.only:
            names = [n for n in names if within(n, args.only)] if args.resume else narrowed_scope(args.only)
            if not names:
                print(f"no mutant of the scope matches {args.only}", file=sys.stderr)
                return 2
        start = time.monotonic()
        run = subprocess.run([str(MUTMUT), "run", "--max-children", str(args.jobs), *names], cwd=REPO, env=env, check=False)
        seconds = round(time.monotonic() - start)
        if run.returncode != 0:  # e.g. the tests fail on the unmutated code: no figure means anything
            print(f"mutmut run failed (exit {run.returncode}); no mutation.json written", file=sys.stderr)
            return run.returncode
    report = tally(read_results(), equivalent_mutants())
    report["seconds"] = seconds
    args.out.write_text(json.dumps(report, indent=2) + "\n")
    print(table(report))
    if report["survivors"]:
        print(f"\n{len(report['survivors'])} surviving mutants (`mutmut show NAME` for the diff):")  # type: ignore[arg-type]
        print("\n".join(f"  {s}" for s in report["survivors"]))  # type: ignore[arg-type]
    if report["not_run"]:
        print(f"\n{len(report['not_run'])} mutants not tested (run interrupted?); see not_run in {args.out}")  # type: ignore[arg-type]
    if seconds is not None:
        print(f"\n{seconds} s; wrote {args.out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
