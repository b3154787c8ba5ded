"""The ``vae-automl`` command: parses arguments and calls the library; no logic of its own."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Sequence

from vae_automl.errors import VaeAutomlError


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


def _cmd_search(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl import pareto
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
        trials=args.trials,
        timeout_s=args.timeout,
        storage=args.storage,
        study_name=args.study,
        out_dir=args.out,
        dataset=args.dataset,
        data_dir=args.data_dir,
        device=args.device,
        plugins=tuple(args.plugin),
        backend=args.backend,
        **backend_options,
    )
    knee = None
    if result.front:
        names = list(result.front[0].objectives)
        # deferred: `vae-automl --help` and `front` must not import torch
        from vae_automl.study import objectives_of, open_study

        _, directions = objectives_of(open_study(result.storage, result.study_name))
        k = pareto.knee_point([[e.objectives[n] for n in names] for e in result.front], directions)
        knee = result.front[k].trial if k is not None else None
    print(
        f"Pareto front of study {result.study_name!r} ({result.completed} completed trials, storage {result.storage}); * = knee"
    )
    print(format_front_table(result.front, knee, baseline=result.baseline))
    if result.front:
        print(against_baseline(result.storage, result.study_name, result.front))
    return 0


def _cmd_front(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.report import format_front_table
    from vae_automl.study import BASELINE_ATTR, front_of_study, open_study

    study = open_study(args.storage, args.study)
    front = front_of_study(study)
    baseline = study.user_attrs.get(BASELINE_ATTR)
    if args.json:
        print(
            json.dumps(
                {"front": [e.as_dict() for e in front], "baseline": baseline} if baseline else [e.as_dict() for e in front],
                indent=2,
            )
        )
    else:
        print(format_front_table(front, baseline=baseline["objectives"] if baseline else None))
    return 0


def _cmd_worker(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.study import completed_trials
    from vae_automl.worker import run_worker

    result = run_worker(
        args.storage,
        args.study,
        trials=args.trials,
        timeout_s=args.timeout,
        out_dir=args.out,
        device=args.device,
        data_dir=args.data_dir,
        plugins=tuple(args.plugin),
    )
    total = len(completed_trials(result.study))
    print(f"worker {result.worker} completed {result.completed} trials; study {args.study!r} has {total} completed trials")
    return 0


def _cmd_export(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.export import export_study

    trials = args.trials if args.trials == "front" else [int(n) for n in args.trials.split(",") if n.strip()]
    formats = tuple(f.strip() for f in args.formats.split(",") if f.strip())
    for folder in export_study(
        args.storage,
        args.study,
        args.out,
        trials=trials,
        formats=formats,
        dataset=args.dataset,
        data_dir=args.data_dir,
        plugins=tuple(args.plugin),
    ):
        files = sorted(p.name for p in folder.iterdir())
        print(f"{folder}: {', '.join(files)} (verified against the search)")
    return 0


def _cmd_report(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.report import write_report

    for path in write_report(
        args.storage, args.study, args.out, dataset=args.dataset, data_dir=args.data_dir, plugins=tuple(args.plugin)
    ):
        print(path)
    return 0


def _cmd_plugins(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.plugins_info import format_components, list_components
    from vae_automl.registry import get_registry

    rows = list_components(get_registry(tuple(args.plugin)))
    if args.json:
        print(json.dumps(rows, indent=2, default=str))
        return 0
    print(format_components(rows))
    return 0


def _cmd_codec(args: argparse.Namespace) -> int:
    # deferred: `vae-automl --help` and `front` must not import torch
    from vae_automl.codec_file import decode_file, encode_file

    if args.codec_command == "encode":
        result = encode_file(args.model_dir, args.images, args.out, plugins=tuple(args.plugin))
        print(
            f"{result.path}: {result.n_images} images, {result.file_bytes} bytes "
            f"({result.bytes_per_image:.1f} bytes per image bitstream)"
        )
    else:
        images = decode_file(args.model_dir, args.file, args.out, plugins=tuple(args.plugin))
        print(f"{args.out}: {len(images)} images of {'x'.join(map(str, images.shape[1:]))} (key 'images', uint8)")
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="vae-automl", description="Search compressed VAEs; read the Pareto front.")
    sub = parser.add_subparsers(dest="command", required=True)
    # every command that builds the registry takes --plugin, declared once here
    plugin = argparse.ArgumentParser(add_help=False)
    plugin.add_argument("--plugin", action="append", default=[], metavar="MODULE", help="load a plugin module (repeatable)")

    s = sub.add_parser("search", parents=[plugin], help="run or resume a multi-objective search")
    s.add_argument("space", help="search-space YAML file")
    s.add_argument("--trials", type=int, help="run this many more trials (default: complete the YAML's budget)")
    s.add_argument("--timeout", type=float, help="seconds after which no new trial starts")
    s.add_argument("--storage", help="Optuna storage URL (default: sqlite in --out); journal:PATH for a journal file")
    s.add_argument("--study", help="study name (default: the YAML's name)")
    s.add_argument("--out", help="output folder (default: runs/STUDY)")
    s.add_argument("--dataset", help="dataset spec: digits, mnist, npz:PATH[#key], idx:PATH, ...")
    s.add_argument("--data-dir", help="folder of dataset files")
    s.add_argument("--device", choices=("cpu", "cuda", "auto"))
    s.add_argument("--backend", choices=("optuna", "ray"), default="optuna")
    s.add_argument("--address", help="Ray cluster address (auto, HOST:PORT)")
    s.add_argument("--gpus-per-trial", type=float)
    s.add_argument("--cpus-per-trial", type=float)
    s.add_argument("--concurrency", type=int, help="trials at once (Ray)")
    s.add_argument(
        "--scheduler",
        choices=("pareto", "none", "asha"),
        help="Ray's early stopping: pareto (the space's pruner rule), none; asha is 0.1's name for pareto",
    )
    s.set_defaults(func=_cmd_search)

    f = sub.add_parser("front", help="print the Pareto front of a stored study")
    f.add_argument("--storage", required=True)
    f.add_argument("--study", required=True)
    f.add_argument("--json", action="store_true", help="a JSON list of {trial, params, objectives}")
    f.set_defaults(func=_cmd_front)

    w = sub.add_parser("worker", parents=[plugin], help="run trials of an existing study (one process per device; start many)")
    w.add_argument("--storage", required=True, help="the study's storage URL: postgresql://..., sqlite:///..., journal:PATH")
    w.add_argument("--study", required=True, help="a study made by `vae-automl search ... --trials 0`")
    w.add_argument(
        "--trials", type=int, help="stop after this worker completed N trials (default: until the study's budget is met)"
    )
    w.add_argument("--timeout", type=float, help="seconds after which this worker starts no trial")
    w.add_argument("--out", help="base-model cache and artifact folder (default: the study's, from its creation)")
    w.add_argument("--device", choices=("cpu", "cuda", "auto"))
    w.add_argument("--data-dir", help="folder of dataset files on this machine")
    w.set_defaults(func=_cmd_worker)

    e = sub.add_parser("export", parents=[plugin], help="write the front's models as verified ONNX / TorchScript / safetensors")
    e.add_argument("--storage", required=True)
    e.add_argument("--study", required=True)
    e.add_argument("--out", required=True, help="folder for trial-N/ subfolders")
    e.add_argument("--trials", default="front", help="'front' (default) or trial numbers N,M,...")
    e.add_argument("--formats", default="onnx,torchscript,safetensors", help="comma-separated exporter names")
    e.add_argument("--dataset", help="the search's --dataset, if it used one")
    e.add_argument("--data-dir", help="folder of dataset files")
    e.set_defaults(func=_cmd_export)

    r = sub.add_parser("report", parents=[plugin], help="write pareto.png and index.html (front table, params, reconstructions)")
    r.add_argument("--storage", required=True)
    r.add_argument("--study", required=True)
    r.add_argument("--out", required=True, help="report folder")
    r.add_argument("--dataset", help="the search's --dataset, if it used one")
    r.add_argument("--data-dir", help="folder of dataset files")
    r.set_defaults(func=_cmd_report)

    c = sub.add_parser("codec", help="encode images to a file with a codec model, or decode one")
    csub = c.add_subparsers(dest="codec_command", required=True)
    ce = csub.add_parser("encode", parents=[plugin], help="write one container file of per-image bitstreams")
    ce.add_argument("model_dir", help="an exported codec model folder (weights.safetensors)")
    ce.add_argument("images", help="images: .npz (first array, or PATH#KEY) or an IDX file; uint8 or floats in [0, 1]")
    ce.add_argument("out", help="the codec file to write")
    cd = csub.add_parser("decode", parents=[plugin], help="read a codec file back into an .npz of uint8 images")
    cd.add_argument("model_dir", help="the model folder that encoded the file")
    cd.add_argument("file", help="a codec file")
    cd.add_argument("out", help="the .npz to write (key 'images')")
    c.set_defaults(func=_cmd_codec)

    p = sub.add_parser("plugins", parents=[plugin], help="list every registered component")
    p.add_argument("--json", action="store_true")
    p.set_defaults(func=_cmd_plugins)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return args.func(args)
    except VaeAutomlError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted: completed trials are stored; run the same command again to resume", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
