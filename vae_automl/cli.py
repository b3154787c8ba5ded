"""The ``vae-automl`` command: parses arguments and calls the library; no logic of its own.

Conventions every command follows (tests/test_cli.py holds them):

- exit status 0 on success, 1 for a runtime or project error (a :class:`VaeAutomlError`:
  bad YAML, unknown study, failed export; or an OSError: a file that cannot be read or written),
  2 for a usage error (argparse's own), 3 when ``search`` or ``worker`` completed fewer trials than asked
  because the space has no new point left (``EXIT_EXHAUSTED``), 130 on Ctrl-C (``EXIT_INTERRUPTED``);
  no traceback for any of them;
- ``--json`` on every command that prints results: one JSON document on stdout, nothing else there;
- one meaning per option name: ``--storage`` an Optuna storage URL (default ``$VAE_AUTOML_STORAGE``),
  ``--out`` the run folder a search writes (its ``study.db`` is the storage when neither is given),
  ``--n-trials`` how many more trials this process completes, ``--device`` cpu | cuda | cuda:N | mps | auto;
  0.1's ``--trials`` is a deprecated alias that warns;
- help text on every option and an example on every command.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from vae_automl import __version__
from vae_automl.devices import DEVICE_NAMES, check_device
from vae_automl.errors import TrialFailed, VaeAutomlError
from vae_automl.locations import STORAGE_ENV, require_storage, resolve_storage, resolve_study_name, resolve_study_ref

DEST_HELP = "the folder to write (default: RUN_DIR/COMMAND, e.g. runs/quick/export)"
DEVICE_HELP = f"{DEVICE_NAMES} (default: the YAML's device)"


def _device(value: str) -> str:
    # checked at parse time, so a typo is a usage error (exit 2) before any torch import
    try:
        return check_device(value)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def _trial_count(value: str) -> int:
    # a usage error (exit 2) at parse time, like a mistyped device, rather than a failed search (exit 1)
    try:
        count = int(value)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, but got {value!r}") from None
    if count < 0:
        raise argparse.ArgumentTypeError(f"must be a whole number >= 0, but got {count}")
    return count


class _DeprecatedAlias(argparse.Action):
    """An 0.1 option name kept working: it stores into the new option's dest and says so on stderr."""

    def __init__(self, option_strings: Sequence[str], dest: str, new: str = "", **kwargs: Any) -> None:
        self.new = new
        super().__init__(option_strings, dest, **kwargs)

    def __call__(
        self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any, option_string: str | None = None
    ) -> None:
        print(f"vae-automl: warning: {option_string} is deprecated; use {self.new}", file=sys.stderr)
        setattr(namespace, self.dest, values)


def _print_json(data: Any) -> None:
    print(json.dumps(data, indent=2, default=str))


def _scheduler(name: str | None) -> str | None:
    # 0.1 scripts pass --scheduler asha; 0.2 replaced ASHA on one metric by the Pareto rung rule
    if name == "asha":
        print(
            "vae-automl: --scheduler asha was replaced in 0.2 by --scheduler pareto (successive halving on "
            "every objective), which this search runs",
            file=sys.stderr,
        )
        return "pareto"
    return name


def _study(args: argparse.Namespace) -> tuple[str, str]:
    """(storage URL, study name) of a command that reads an existing study."""
    storage = require_storage(args.storage, args.out)
    return storage, resolve_study_name(storage, args.study)


def _destination(args: argparse.Namespace, default_sub: str) -> tuple[str | None, str]:
    """(run folder, destination folder) of export and report.

    ``--dest`` names the destination; without it, it is ``--out``/``default_sub``. An 0.1 command line
    (``--storage URL --out DIR``, no ``--dest``) keeps meaning DIR as the destination, with a warning.
    """
    if args.dest:
        return args.out, args.dest
    if args.out and args.storage:
        print(
            f"vae-automl: warning: --out with --storage as the {default_sub} folder is deprecated: --out is the "
            f"search's run folder in every command; write --dest {args.out}",
            file=sys.stderr,
        )
        return None, args.out
    if args.out:
        return args.out, str(Path(args.out) / default_sub)
    raise VaeAutomlError(f"no {default_sub} folder: give --dest DIR, or --out RUN_DIR to write RUN_DIR/{default_sub}")


def _cmd_dry_run(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.preview import dry_run, format_dry_run

    result = dry_run(args.space, dataset=args.dataset, data_dir=args.data_dir, plugins=tuple(args.plugin))
    if args.json:
        _print_json(result.as_dict())
    else:
        print(format_dry_run(result))
    return 0


def _cmd_search(args: argparse.Namespace) -> int:
    if args.dry_run:
        return _cmd_dry_run(args)
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.api import search
    from vae_automl.report import against_baseline, format_front_table

    backend_options = {}
    if args.backend == "ray":
        backend_options = {
            k: v
            for k, v in {
                "address": args.address,
                "gpus_per_trial": args.gpus_per_trial,
                "cpus_per_trial": args.cpus_per_trial,
                "concurrency": args.concurrency,
                "scheduler": _scheduler(args.scheduler),
            }.items()
            if v is not None
        }
    result = search(
        args.space,
        trials=args.n_trials,
        timeout_s=args.timeout,
        storage=resolve_storage(args.storage),
        study_name=args.study,
        out_dir=args.out,
        dataset=args.dataset,
        data_dir=args.data_dir,
        device=args.device,
        plugins=tuple(args.plugin),
        backend=args.backend,
        verbose=args.verbose,
        mlflow=args.mlflow,
        tensorboard=args.tensorboard,
        **backend_options,
    )
    if args.json:
        _print_json(
            {
                "study": result.study_name,
                "storage": result.storage,
                "out": str(result.out_dir),
                "completed": result.completed,
                "front": [e.as_dict() for e in result.front],
                "baseline": result.baseline,
            }
        )
        return _check_failure(result.failure, result.exhausted)
    print(
        f"Pareto front of study {result.study_name!r} ({result.completed} completed trials, storage {result.storage}); * = knee"
    )
    print(format_front_table(result.front, result.knee, baseline=result.baseline))
    if result.front:
        print(against_baseline(result.storage, result.study_name, result.front))
    return _check_failure(result.failure, result.exhausted)


EXIT_EXHAUSTED = 3
"""Exit status of a search or worker that completed fewer trials than asked because the space has no new point left:
its trials and front are stored and complete for that space, but the count asked for was not met, which a script
must be able to tell from both success and an error."""

EXIT_INTERRUPTED = 130
"""Exit status after Ctrl-C (128 + SIGINT, as a shell reports it): completed trials are stored and the same command
resumes."""


def _check_failure(failure: str | None, exhausted: str | None = None) -> int:
    # a run whose every trial failed is a failed run (exit 1), whatever the study held before
    if failure:
        raise TrialFailed(failure)
    if exhausted:
        print(f"incomplete: {exhausted}", file=sys.stderr)
        return EXIT_EXHAUSTED
    return 0


def _cmd_front(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` must not import optuna; `front` needs no torch (the api defers it)
    from vae_automl.api import front as read_front
    from vae_automl.report import format_front_table

    result = read_front(*_study(args))
    if args.json:
        _print_json(result.as_dict())
    else:
        baseline = result.baseline["objectives"] if result.baseline else None
        print(format_front_table(result.entries, result.knee, baseline=baseline))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.api import worker
    from vae_automl.study import completed_trials

    storage, study_name = _study(args)
    result = worker(
        storage,
        study_name,
        trials=args.n_trials,
        timeout_s=args.timeout,
        out_dir=args.out,
        device=args.device,
        data_dir=args.data_dir,
        plugins=tuple(args.plugin),
        verbose=args.verbose,
        mlflow=args.mlflow,
        tensorboard=args.tensorboard,
    )
    total = len(completed_trials(result.study))
    if args.json:
        _print_json({"worker": result.worker, "completed": result.completed, "study": study_name, "study_completed": total})
    else:
        trials = "trial" if result.completed == 1 else "trials"
        print(f"worker {result.worker} completed {result.completed} {trials}; study {study_name!r} has {total} completed trials")
    return _check_failure(result.failure, result.exhausted)


def _cmd_export(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.api import export
    from vae_automl.export import parse_trials

    run_dir, dest = _destination(args, "export")
    storage = require_storage(args.storage, run_dir)
    trials = parse_trials(args.select)
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    folders = export(
        storage,
        resolve_study_name(storage, args.study),
        dest,
        trials=trials,
        formats=formats,
        dataset=args.dataset,
        data_dir=args.data_dir,
        plugins=tuple(args.plugin),
        overwrite=args.overwrite,
    )
    listing = [(folder, sorted(p.name for p in folder.iterdir())) for folder in folders]
    if args.json:
        _print_json({"exported": [{"folder": str(folder), "files": files} for folder, files in listing]})
    for folder, files in [] if args.json else listing:
        print(f"{folder}: {', '.join(files)} (verified against the search)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.api import report

    run_dir, dest = _destination(args, "report")
    storage = require_storage(args.storage, run_dir)
    paths = report(
        storage,
        resolve_study_name(storage, args.study),
        dest,
        dataset=args.dataset,
        data_dir=args.data_dir,
        plugins=tuple(args.plugin),
    )
    if args.json:
        _print_json({"files": [str(p) for p in paths]})
    else:
        for path in paths:
            print(path)
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.api import plugins
    from vae_automl.plugins_info import format_components

    rows = plugins(tuple(args.plugin))
    if args.json:
        _print_json(rows)
        return 0
    print(format_components(rows))
    return 0


def _cmd_codec(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.codec_file import decode_file, encode_file

    if args.codec_command == "encode":
        result = encode_file(args.model_dir, args.images, args.out_file, plugins=tuple(args.plugin))
        if args.json:
            _print_json(
                {
                    "path": str(result.path),
                    "n_images": result.n_images,
                    "file_bytes": result.file_bytes,
                    "bytes_per_image": result.bytes_per_image,
                }
            )
        else:
            print(
                f"{result.path}: {result.n_images} images, {result.file_bytes} bytes "
                f"({result.bytes_per_image:.1f} bytes per image bitstream)"
            )
    else:
        images = decode_file(args.model_dir, args.file, args.out_file, plugins=tuple(args.plugin))
        if args.json:
            _print_json({"path": str(args.out_file), "n_images": len(images), "image_shape": list(images.shape[1:])})
        else:
            print(f"{args.out_file}: {len(images)} images of {'x'.join(map(str, images.shape[1:]))} (key 'images', uint8)")
    return 0


def _cmd_compare(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.comparison import compare_studies, format_comparison

    reference = None
    if args.reference:
        try:
            reference = [float(v) for v in args.reference.split(",")]
        except ValueError:
            raise VaeAutomlError(f"--reference takes numbers V1,V2,..., but got {args.reference!r}") from None
    comparison = compare_studies([resolve_study_ref(ref, args.storage, args.out) for ref in args.studies], reference)
    if args.json:
        _print_json(comparison.as_dict())
    else:
        print(format_comparison(comparison))
    return 0


def _cmd_completion(args: argparse.Namespace) -> int:
    # deferred: shtab is needed only to print a completion script
    import shtab

    print(shtab.complete(build_parser(), shell=args.shell))
    return 0


def _add_command(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
    name: str,
    help: str,
    example: str,
    func: Callable[[argparse.Namespace], int] | None,
    parents: Sequence[argparse.ArgumentParser] = (),
) -> argparse.ArgumentParser:
    command = sub.add_parser(
        name,
        parents=list(parents),
        help=help,
        description=help[0].upper() + help[1:] + ".",
        epilog="example:\n  " + example.replace("\n", "\n  "),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    if func is not None:
        command.set_defaults(func=func)
    return command


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="vae-automl",
        description="Search compressed VAEs; read the Pareto front.",
        epilog=(
            "example:\n  vae-automl search search_spaces/quick.yaml --n-trials 10 --out runs/quick\n"
            "  vae-automl front --out runs/quick\n\n"
            f"exit status: 0 ok, 1 runtime or project error, 2 usage error, {EXIT_EXHAUSTED} search space exhausted\n"
            f"(fewer trials than asked), {EXIT_INTERRUPTED} interrupted (Ctrl-C). ${STORAGE_ENV} is the default --storage."
        ),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--version", action="version", version=f"vae-automl {__version__}")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    # Options shared by several commands are declared once, so each name has one meaning.
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="load a plugin module (repeatable)")
    as_json = argparse.ArgumentParser(add_help=False)
    as_json.add_argument("--json", action="store_true", help="print one JSON document on stdout instead of text")
    where = argparse.ArgumentParser(add_help=False)
    where.add_argument(
        "--storage",
        metavar="URL",
        help=f"Optuna storage: sqlite:///F, postgresql://..., journal:PATH (default: ${STORAGE_ENV}, else --out's study.db)",
    )
    where.add_argument("--study", metavar="NAME", help="study name (default: the YAML's name, or the storage's only study)")
    where.add_argument("--out", metavar="RUN_DIR", help="the search's run folder: study.db, base-model cache, trial models")
    # compare names its studies itself, so it takes the storage options without --study
    storage_only = argparse.ArgumentParser(add_help=False)
    for action in where._actions:
        if action.dest in ("storage", "out"):
            storage_only._add_action(action)
    data = argparse.ArgumentParser(add_help=False)
    data.add_argument("--dataset", metavar="SPEC", help="dataset spec: digits, mnist, npz:PATH[#KEY], idx:PATH, folder:PATH, ...")
    data.add_argument("--data-dir", metavar="DIR", help="folder of dataset files on this machine")
    device = argparse.ArgumentParser(add_help=False)
    device.add_argument("--device", type=_device, metavar="DEVICE", help=DEVICE_HELP)
    # what runs trials (search, worker) can report them to trackers, and let Optuna's own log lines through
    tracking = argparse.ArgumentParser(add_help=False)
    tracking.add_argument(
        "--mlflow",
        metavar="URI",
        help="log every trial to MLflow: sqlite:///mlflow.db, http://HOST:5000 (default: the YAML's tracking.mlflow)",
    )
    tracking.add_argument(
        "--tensorboard",
        metavar="DIR",
        help="write every trial's params and metrics as TensorBoard events (default: tracking.tensorboard)",
    )
    tracking.add_argument("-v", "--verbose", action="store_true", help="let Optuna's INFO log lines through")
    n_trials = argparse.ArgumentParser(add_help=False)
    n_trials.add_argument(
        "--timeout", type=float, metavar="SECONDS", help="seconds after which no new trial starts and a running one stops"
    )

    def add_n_trials(command: argparse.ArgumentParser) -> None:
        command.add_argument(
            "--n-trials",
            type=_trial_count,
            metavar="N",
            help="complete N more trials, then stop (default: the study's trial budget)",
        )
        command.add_argument(
            "--trials",
            dest="n_trials",
            type=_trial_count,
            action=_DeprecatedAlias,
            new="--n-trials",
            metavar="N",
            help="deprecated: --n-trials",
        )

    s = _add_command(
        sub,
        "search",
        "run or resume a multi-objective search",
        "vae-automl search search_spaces/quick.yaml --n-trials 10 --out runs/quick",
        _cmd_search,
        [where, data, device, n_trials, tracking, as_json, plugin],
    )
    s.add_argument("space", help="search-space YAML file")
    s.add_argument(
        "--dry-run",
        action="store_true",
        help="print the resolved space, the model parameter count and the estimated size range; train nothing",
    )
    add_n_trials(s)
    s.add_argument("--backend", choices=("optuna", "ray"), default="optuna", help="who runs the trials (default: optuna)")
    s.add_argument("--address", help="Ray cluster address: auto or HOST:PORT (--backend ray)")
    s.add_argument(
        "--gpus-per-trial", type=float, metavar="N", help="GPUs Ray reserves per trial; fractions share a GPU (--backend ray)"
    )
    s.add_argument("--cpus-per-trial", type=float, metavar="N", help="CPUs Ray reserves per trial (--backend ray)")
    s.add_argument("--concurrency", type=int, metavar="N", help="trials at once (--backend ray)")
    s.add_argument(
        "--scheduler",
        choices=("pareto", "none", "asha"),
        help="Ray's early stopping: pareto (the space's pruner rule), none; asha is 0.1's name for pareto",
    )

    _add_command(
        sub,
        "front",
        "print the Pareto front of a stored study",
        "vae-automl front --out runs/quick --json | head",
        _cmd_front,
        [where, as_json],
    )

    w = _add_command(
        sub,
        "worker",
        "run trials of an existing study (one process per device; start many)",
        "vae-automl worker --storage postgresql://USER@HOST/vae --study quick --n-trials 5 --device cuda:0",
        _cmd_worker,
        [where, device, n_trials, tracking, as_json, plugin],
    )
    add_n_trials(w)
    w.add_argument("--data-dir", metavar="DIR", help="folder of dataset files on this machine")

    e = _add_command(
        sub,
        "export",
        "write the front's models as verified ONNX / torch.export (.pt2) / TorchScript / safetensors",
        "vae-automl export --out runs/quick --select front --formats onnx,safetensors",
        _cmd_export,
        [where, data, as_json, plugin],
    )
    e.add_argument("--dest", metavar="DIR", help=DEST_HELP)
    e.add_argument("--select", default="front", metavar="front|N,M", help="'front' (default) or trial numbers N,M,...")
    e.add_argument(
        "--trials", dest="select", action=_DeprecatedAlias, new="--select", metavar="front|N,M", help="deprecated: --select"
    )
    e.add_argument(
        "--formats", default="onnx,pt2,torchscript,safetensors", help="comma-separated exporter names (vae-automl plugins)"
    )
    e.add_argument(
        "--overwrite", action="store_true", help="replace an earlier export in trial-N/ (only the files its manifest lists)"
    )

    r = _add_command(
        sub,
        "report",
        "write pareto.png and index.html (front table, params, reconstructions)",
        "vae-automl report --out runs/quick    # writes runs/quick/report/index.html",
        _cmd_report,
        [where, data, as_json, plugin],
    )
    r.add_argument("--dest", metavar="DIR", help=DEST_HELP)

    c = _add_command(
        sub,
        "codec",
        "encode images to a file with a codec model, or decode one",
        "vae-automl codec encode runs/codec/export/trial-3 images.npz images.vaec",
        None,
    )
    csub = c.add_subparsers(dest="codec_command", required=True, metavar="ACTION")
    ce = _add_command(
        csub,
        "encode",
        "write one container file of per-image bitstreams",
        "vae-automl codec encode runs/codec/export/trial-3 images.npz images.vaec",
        _cmd_codec,
        [as_json, plugin],
    )
    ce.add_argument("model_dir", help="an exported codec model folder (weights.safetensors)")
    ce.add_argument("images", help="images: .npz (first array, or PATH#KEY) or an IDX file; uint8 or floats in [0, 1]")
    ce.add_argument("out_file", metavar="out", help="the codec file to write")
    cd = _add_command(
        csub,
        "decode",
        "read a codec file back into an .npz of uint8 images",
        "vae-automl codec decode runs/codec/export/trial-3 images.vaec decoded.npz",
        _cmd_codec,
        [as_json, plugin],
    )
    cd.add_argument("model_dir", help="the model folder that encoded the file")
    cd.add_argument("file", help="a codec file")
    cd.add_argument("out_file", metavar="out", help="the .npz to write (key 'images')")

    _add_command(sub, "plugins", "list every registered component", "vae-automl plugins --json", _cmd_plugins, [as_json, plugin])

    cmp = _add_command(
        sub,
        "compare",
        "print two or more studies' Pareto fronts and hypervolumes at one reference point",
        "vae-automl compare runs/tpe runs/nsga2\n"
        "vae-automl compare --storage postgresql://USER@HOST/vae quick-tpe quick-nsga2 --json",
        _cmd_compare,
        [storage_only, as_json],
    )
    cmp.add_argument(
        "studies",
        nargs="+",
        metavar="STUDY",
        help="a run folder, a storage URL[#NAME], or a study NAME in --storage (two or more)",
    )
    cmp.add_argument(
        "--reference", metavar="V1,V2,...", help="the reference point (default: the pooled nadir + 10%% of each range)"
    )

    comp = _add_command(
        sub,
        "completion",
        "print a shell completion script",
        "vae-automl completion bash > ~/.local/share/bash-completion/completions/vae-automl\n"
        'vae-automl completion zsh > "${fpath[1]}/_vae-automl"',
        _cmd_completion,
    )
    comp.add_argument("shell", choices=("bash", "zsh", "tcsh"), help="the shell to complete in")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)  # exits 2 on a usage error
    try:
        return args.func(args)
    except VaeAutomlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("interrupted: completed trials are stored; run the same command again to resume", file=sys.stderr)
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # The reader (`| head`) went away: stop quietly. Point stdout at devnull so the interpreter's
        # final flush does not raise again (the recipe of Python's signal module docs).
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 1
    except OSError as exc:
        # a file or folder the command cannot read or write (permissions, a full disk): the OS says which
        print(f"error: {exc}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
