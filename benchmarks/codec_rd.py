"""Rate-distortion of the learned codec against JPEG, WebP, AVIF (Pillow, whole files) and a PCA baseline.

    python benchmarks/codec_rd.py --data ../shared/data/mnist [--json FILE] [--out DIR] [--front DIR]

MNIST test set: the first 8,000 images train the codecs (and fit the PCA and
its entropy model, and train the reference classifier); the last 2,000 are
the evaluation images. Every rate is the mean length in bytes of a real,
standalone per-image file or bitstream:

- ours: the header byte plus the range coder's bytes (``CodecVAE.encode_latents``),
  decoded back and compared;
- JPEG (optimized), WebP (method 6), AVIF: the whole file Pillow writes for one image;
- PCA: ``k`` principal components of the training images, coefficients
  rounded with step ``delta``, range-coded (the same coder) under per-coefficient
  integer tables fit on the training images; we keep its Pareto front over ``(k, delta)``.

PSNR is per image on 8-bit levels (peak 255), then averaged. BD-rate uses the
``bjontegaard`` package (Akima interpolation) over the PSNR range both curves
cover. The decoder's packed size is printed alone and amortized over the 2,000
images. The trained front is saved under ``--front`` (default
``benchmarks/out/codec_front``, with its recipe in ``training.json``) and reused
on the next run when the recipe is unchanged; a changed recipe retrains it.
"Where the bytes go" splits each model's bytes per image into the header byte,
the latent's information content under the integer tables, and the range
coder's overhead beyond it.

Training one model per lambda runs on one CPU thread; run it niced on a shared machine.
"""

from __future__ import annotations

import argparse
import io
import json
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from vae_automl.codec import CodecVAE
from vae_automl.codec_file import load_codec_model, save_codec_model
from vae_automl.data import SplitConfig, load_images, load_labels, make_splits
from vae_automl.entropy import Coder, FrequencyTables
from vae_automl.metrics import psnr_db
from vae_automl.packing import serialize_model
from vae_automl.reference_classifier import reference_classifier
from vae_automl.registry import get_registry
from vae_automl.train import TrainConfig, train

N_EVAL = 2000
BD_WINDOW_DB = (28.0, 36.0)
"""The PSNR window of the issue's BD-rate target."""
LAMBDAS = (0.001, 0.002, 0.004, 0.008, 0.016)
ARCH_PARAMS = {"hidden_layers": 1, "hidden_width": 256, "latent_dim": 512, "init": "pca",
               "postfilter_layers": 4, "postfilter_channels": 32}
# PCA-initialized, then trained in two phases: the post-filter alone at lr 1e-3 (everything else frozen),
# then everything at lr 1e-4. At lmbda=0.004 (probes in the README) this gave 99.7 B at 33.79 dB, against
# 97.0 B at 32.85 dB for everything at 1e-4 from the start and 65.6 B at 29.01 dB at 1e-3, whose front
# (lmbda 0.003-0.048) came to -41.5% against WebP: a fast joint lr trades away the PCA transform's rate.
FILTER_TRAINING = {"epochs": 3, "batch_size": 64, "lr": 1e-3}
TRAINING = {"epochs": 3, "batch_size": 64, "lr": 1e-4}
JPEG_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
WEBP_QUALITIES = (0, 5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95, 100)
AVIF_QUALITIES = (5, 10, 20, 30, 40, 50, 60, 70, 80, 90, 95)
PCA_COMPONENTS = (16, 32, 64, 96, 128, 192, 256, 320, 400)
PCA_STEPS = (0.35, 0.5, 0.7, 1.0, 1.4, 2.0, 2.8)


@dataclass
class Point:
    codec: str
    setting: str
    bytes_per_image: float
    psnr_db: float


def mean_psnr(original_u8: np.ndarray, decoded_u8: np.ndarray) -> float:
    return float(psnr_db(torch.from_numpy(original_u8).double() / 255, torch.from_numpy(decoded_u8).double() / 255).mean())


def pillow_points(images_u8: np.ndarray, fmt: str, qualities: tuple[int, ...], **options: Any) -> tuple[list[Point], dict[int, tuple[np.ndarray, np.ndarray]]]:
    from PIL import Image

    points, decoded_by_q = [], {}
    for q in qualities:
        sizes, decoded = [], []
        for img in images_u8:
            buffer = io.BytesIO()
            Image.fromarray(img, mode="L").save(buffer, format=fmt, quality=q, **options)
            sizes.append(buffer.tell())
            buffer.seek(0)
            decoded.append(np.asarray(Image.open(buffer).convert("L")))
        decoded_arr = np.stack(decoded)
        decoded_by_q[q] = (np.asarray(sizes), decoded_arr)
        points.append(Point(fmt.lower(), f"quality {q}", float(np.mean(sizes)), mean_psnr(images_u8, decoded_arr)))
    return points, decoded_by_q


def pareto(points: list[Point]) -> list[Point]:
    """Points no other point beats on both fewer bytes and higher PSNR, by rate."""
    front = [p for p in points if not any(o.bytes_per_image <= p.bytes_per_image and o.psnr_db > p.psnr_db
                                          or o.bytes_per_image < p.bytes_per_image and o.psnr_db >= p.psnr_db
                                          for o in points)]
    return sorted(front, key=lambda p: p.bytes_per_image)


def pca_points(train_u8: np.ndarray, eval_u8: np.ndarray) -> list[Point]:
    x_train = train_u8.reshape(len(train_u8), -1).astype(np.float64)
    x_eval = eval_u8.reshape(len(eval_u8), -1).astype(np.float64)
    mean = x_train.mean(0)
    _, _, vt = np.linalg.svd(x_train - mean, full_matrices=False)
    points = []
    for k in PCA_COMPONENTS:
        basis = vt[:k]
        c_train, c_eval = (x_train - mean) @ basis.T, (x_eval - mean) @ basis.T
        for step in PCA_STEPS:
            delta = step * 255 / 16  # steps in units of 1/16 of the pixel range
            q_train = np.round(c_train / delta).astype(np.int64)
            q_eval = np.round(c_eval / delta).astype(np.int64)
            pmfs, lows = [], []
            for j in range(k):
                lo, hi = int(q_train[:, j].min()) - 2, int(q_train[:, j].max()) + 2
                counts = np.bincount(q_train[:, j] - lo, minlength=hi - lo + 1).astype(np.float64)
                pmfs.append(counts + 0.5)  # add-half smoothing: unseen values stay codable
                lows.append(lo)
            coder = Coder(FrequencyTables.from_pmfs(pmfs, lows))
            nbytes = [len(coder.encode(v)) for v in q_eval]
            recon = np.clip(np.round((q_eval * delta) @ basis + mean), 0, 255).astype(np.uint8).reshape(eval_u8.shape)
            points.append(Point("pca", f"k={k} step={step}", float(np.mean(nbytes)), mean_psnr(eval_u8, recon)))
    return pareto(points)


@dataclass
class Breakdown:
    """Where one model's bytes per image go (means over the evaluation images)."""

    header_bytes: float
    latent_ideal_bytes: float
    """The latent's information content under the integer tables (what a perfect coder would spend)."""
    coder_overhead_bytes: float
    """The range coder's output beyond that: its flush, and rounding to whole bytes."""
    nonzero_latents: float


def breakdown(model: CodecVAE, latents: np.ndarray, streams: list[bytes]) -> Breakdown:
    tables = model.coder().tables
    ideal = np.asarray([tables.ideal_bits(v) for v in latents]) / 8
    total = np.asarray([len(s) for s in streams], np.float64)
    header = 1.0  # CodecVAE.encode_latents' header byte
    return Breakdown(header, float(ideal.mean()), float((total - header - ideal).mean()), float((latents != 0).sum(1).mean()))


def train_front(data: Any, front_dir: Path, lambdas: tuple[float, ...], epochs: int) -> list[tuple[float, CodecVAE, str]]:
    registry = get_registry()
    arch, task = registry.architectures.get("codec_mlp"), registry.tasks.get("codec")
    models = []
    for lmbda in lambdas:
        folder = front_dir / f"codec_mlp-lmbda{lmbda:g}"
        values = arch.resolve_params({**ARCH_PARAMS, "lmbda": lmbda})
        filter_config = TrainConfig(**FILTER_TRAINING)
        config = TrainConfig(**{**TRAINING, "epochs": epochs})
        recipe = {"architecture": "codec_mlp", "params": values, "filter_training": asdict(filter_config),
                  "training": asdict(config), "seed": 0, "data": "first 8,000 MNIST test images"}
        stored = folder / "training.json"
        # A saved model is reused only when it was trained by this very recipe.
        if not (folder / "weights.safetensors").is_file() or not stored.is_file() or json.loads(stored.read_text()) != recipe:
            started = time.perf_counter()
            torch.manual_seed(0)
            model = arch.build(arch.config_from_params(values, data.input_shape))
            task.prepare(model, data)
            # Phase 1: only the post-filter learns (Adam skips parameters without gradients).
            for name, parameter in model.named_parameters():
                parameter.requires_grad_(name.startswith("postfilter."))
            train(model, data, filter_config, seed=0, task=task)
            for parameter in model.parameters():
                parameter.requires_grad_(True)
            train(model, data, config, seed=1, task=task)
            task.finalize(model)
            save_codec_model(model, folder)
            stored.write_text(json.dumps(recipe, indent=2))
            print(f"  trained lmbda={lmbda:g} in {time.perf_counter() - started:.0f} s", file=sys.stderr, flush=True)
        codec = load_codec_model(folder)
        models.append((lmbda, codec.model, str(folder)))
    return models


def quantized_8bit(model: CodecVAE, data: Any) -> CodecVAE:
    from vae_automl.components import CompressionContext

    registry = get_registry()
    ctx = CompressionContext(data=data, device=torch.device("cpu"), seed=0, fine_tune=lambda m, *a, **k: m)
    small = registry.compressors.get("uniform").apply(model, {"bits": 8, "granularity": "per_channel"}, ctx)
    assert isinstance(small, CodecVAE)
    registry.tasks.get("codec").finalize(small)
    return small


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--data", required=True, help="folder with t10k-images-idx3-ubyte.gz and its labels")
    parser.add_argument("--json", help="write the figures here")
    parser.add_argument("--out", default="benchmarks/out/codec_rd", help="folder for rd.png and grid.png")
    parser.add_argument("--front", default="benchmarks/out/codec_front", help="trained codecs (reused if present)")
    parser.add_argument("--epochs", type=int, default=TRAINING["epochs"], help="epochs of the second (joint) training phase")
    parser.add_argument("--lambdas", default=",".join(map(str, LAMBDAS)))
    args = parser.parse_args(argv)
    torch.set_num_threads(1)
    started = time.perf_counter()

    images = load_images("mnist", args.data)[-10_000:]
    labels = load_labels("mnist", len(load_images("mnist", args.data)), args.data)[-10_000:]
    data = make_splits(images, SplitConfig(test=N_EVAL, validation=0, shuffle=False), "cpu", spec="mnist", labels=labels)
    train_u8 = np.round(data.train[:, 0].numpy() * 255).astype(np.uint8)
    eval_u8 = np.round(data.test[:, 0].numpy() * 255).astype(np.uint8)

    print("training / loading our front", file=sys.stderr, flush=True)
    models = train_front(data, Path(args.front), tuple(float(v) for v in args.lambdas.split(",")), args.epochs)
    ours, ours_decoded, decoder_sizes, ours_8bit, decoder_sizes_8bit, breakdowns = [], {}, {}, [], {}, {}
    for lmbda, model, _ in models:
        latents = model.latents(data.test)
        streams = model.encode_latents(latents)
        breakdowns[lmbda] = breakdown(model, latents, streams)
        decoded = model.images_from_latents(model.decode_latents(streams))
        decoded_u8 = torch.round(decoded[:, 0] * 255).to(torch.uint8).numpy()
        sizes = np.asarray([len(s) for s in streams])
        ours.append(Point("ours", f"lmbda={lmbda:g}", float(sizes.mean()), mean_psnr(eval_u8, decoded_u8)))
        ours_decoded[lmbda] = (sizes, decoded_u8)
        decoder_sizes[lmbda] = len(serialize_model(model.decoder_part()))
        # The same model with its weights quantized to 8 bits per channel by the registered `uniform`
        # compressor (post-training): what the decoder-compression axis of the search buys.
        small = quantized_8bit(model, data)
        streams = small.encode_latents(small.latents(data.test))
        decoded = small.images_from_latents(small.decode_latents(streams))
        ours_8bit.append(Point("ours, 8-bit decoder", f"lmbda={lmbda:g}", float(np.mean([len(s) for s in streams])),
                               mean_psnr(eval_u8, torch.round(decoded[:, 0] * 255).to(torch.uint8).numpy())))
        decoder_sizes_8bit[lmbda] = len(serialize_model(small.decoder_part()))

    print("JPEG, WebP, AVIF, PCA", file=sys.stderr, flush=True)
    jpeg, _ = pillow_points(eval_u8, "JPEG", JPEG_QUALITIES, optimize=True)
    webp, webp_decoded = pillow_points(eval_u8, "WEBP", WEBP_QUALITIES, method=6)
    avif, _ = pillow_points(eval_u8, "AVIF", AVIF_QUALITIES)
    pca = pca_points(train_u8, eval_u8)

    import bjontegaard

    def curve(points: list[Point]) -> tuple[np.ndarray, np.ndarray]:
        front = pareto(points)
        return np.asarray([p.bytes_per_image for p in front]), np.asarray([p.psnr_db for p in front])

    def bd_rate(anchor: list[Point], test: list[Point]) -> tuple[float, list[float]]:
        """BD-rate (%) of ``test`` against ``anchor`` over the PSNR window both cover, within BD_WINDOW_DB."""
        ra, da = curve(anchor)
        rt, dt = curve(test)
        lo, hi = max(da.min(), dt.min(), BD_WINDOW_DB[0]), min(da.max(), dt.max(), BD_WINDOW_DB[1])
        if hi <= lo:
            return float("nan"), [float(lo), float(hi)]
        # The package's Akima interpolants of log10(rate) over PSNR, integrated over our window
        # (its bd_rate integrates over the whole overlap, which runs past 36 dB here).
        _, f_anchor, f_test = bjontegaard.bd_rate(ra, da, rt, dt, method="akima", require_matching_points=False,
                                                  interpolators=True, min_overlap=0.0)
        mean_log_ratio = (f_test.integrate(lo, hi) - f_anchor.integrate(lo, hi)) / (hi - lo)
        return float((10 ** mean_log_ratio - 1) * 100), [float(lo), float(hi)]

    bd_webp, range_webp = bd_rate(webp, ours)
    bd_jpeg, range_jpeg = bd_rate(jpeg, ours)
    bd_pca, range_pca = bd_rate(pca, ours)

    classifier = reference_classifier(data.train, data.train_labels)
    acc_original = classifier.accuracy(data.test, data.test_labels)
    top = max(models, key=lambda m: ours_decoded[m[0]][0].mean())[0]
    acc_top = classifier.accuracy(torch.from_numpy(ours_decoded[top][1]).float()[:, None] / 255, data.test_labels)

    rows = [*pareto(ours), *ours_8bit, *pareto(webp), *pareto(jpeg), *pareto(avif), *pca]
    print(f"\nRate-distortion on the last {N_EVAL} MNIST test images (bytes per image: whole files / standalone bitstreams)")
    print("| codec | setting | bytes/image | PSNR dB |\n| --- | --- | ---: | ---: |")
    for p in rows:
        print(f"| {p.codec} | {p.setting} | {p.bytes_per_image:.1f} | {p.psnr_db:.2f} |")
    print(f"\nBD-rate of ours vs WebP: {bd_webp:+.1f}% over {range_webp[0]:.1f}-{range_webp[1]:.1f} dB")
    print(f"BD-rate of ours vs JPEG: {bd_jpeg:+.1f}% over {range_jpeg[0]:.1f}-{range_jpeg[1]:.1f} dB")
    print(f"BD-rate of ours vs PCA:  {bd_pca:+.1f}% over {range_pca[0]:.1f}-{range_pca[1]:.1f} dB")
    bytes_at_30db = {"ours": float(np.interp(30.0, *curve(ours)[::-1]))}
    for name, points in (("webp", webp), ("pca", pca), ("jpeg", jpeg)):
        rate_at = bytes_at_30db[name] = float(np.interp(30.0, *curve(points)[::-1]))
        ours_at = bytes_at_30db["ours"]
        print(f"At 30 dB: ours {ours_at:.1f} B, {name} {rate_at:.1f} B ({(ours_at / rate_at - 1) * 100:+.1f}%)")
    print("\nWhere our bytes go, per image (means): header byte, the latent's information content under the "
          "integer tables, and the range coder's flush and byte rounding beyond it")
    print("| model | bytes/image | header | latent (ideal) | coder overhead | non-zero latents of 512 |")
    print("| --- | ---: | ---: | ---: | ---: | ---: |")
    for (lmbda, _, _), point in zip(models, ours):
        b = breakdowns[lmbda]
        print(f"| lmbda={lmbda:g} | {point.bytes_per_image:.1f} | {b.header_bytes:.0f} | {b.latent_ideal_bytes:.1f} | "
              f"{b.coder_overhead_bytes:.2f} | {b.nonzero_latents:.0f} |")
    print("\nDecoder bytes (packed synthesis + frequency tables), alone and amortized over the evaluation images:")
    print("| model | float32 decoder B | per image over 2,000 | 8-bit decoder B | per image over 2,000 |")
    print("| --- | ---: | ---: | ---: | ---: |")
    for lmbda, _, _ in models:
        size, small = decoder_sizes[lmbda], decoder_sizes_8bit[lmbda]
        print(f"| lmbda={lmbda:g} | {size:,} | {size / N_EVAL:,.0f} | {small:,} | {small / N_EVAL:,.0f} |")
    print(f"\nReference classifier accuracy: originals {acc_original:.4f}, ours at the highest rate "
          f"(lmbda={top:g}) {acc_top:.4f} ({(acc_top - acc_original) * 100:+.2f} points)")

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    draw(out, rows, eval_u8, ours_decoded, webp_decoded)
    seconds = time.perf_counter() - started
    print(f"\nfigures: {out / 'rd.png'}, {out / 'grid.png'}; {seconds:.0f} s in all")
    if args.json:
        Path(args.json).write_text(json.dumps({
            "bd_rate_vs_webp_pct": bd_webp,
            "bd_rate_vs_jpeg_pct": bd_jpeg,
            "bd_rate_vs_pca_pct": bd_pca,
            "psnr_range_db": range_webp,
            "psnr_range_vs_jpeg_db": range_jpeg,
            "points": [{"codec": p.codec, "setting": p.setting, "bytes_per_image": p.bytes_per_image, "psnr_db": p.psnr_db}
                       for p in rows],
            "bytes_breakdown": {f"{k:g}": asdict(v) for k, v in breakdowns.items()},
            "bytes_at_30db": bytes_at_30db,
            "decoder_bytes": {f"{k:g}": v for k, v in decoder_sizes.items()},
            "decoder_bytes_8bit": {f"{k:g}": v for k, v in decoder_sizes_8bit.items()},
            "decoder_bytes_per_image_amortized": {f"{k:g}": v / N_EVAL for k, v in decoder_sizes.items()},
            "recognition_accuracy": {"originals": acc_original, "ours_highest_rate": acc_top, "lmbda": top},
            "seconds": seconds,
        }, indent=2))
    return 0


def draw(out: Path, rows: list[Point], eval_u8: np.ndarray, ours: dict[float, tuple[np.ndarray, np.ndarray]],
         webp: dict[int, tuple[np.ndarray, np.ndarray]]) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for codec in ("ours", "ours, 8-bit decoder", "webp", "jpeg", "avif", "pca"):
        pts = sorted((p for p in rows if p.codec == codec), key=lambda p: p.bytes_per_image)
        ax.plot([p.bytes_per_image for p in pts], [p.psnr_db for p in pts], marker="o", ms=3, label=codec)
    ax.set_xlabel("bytes per image")
    ax.set_ylabel("PSNR (dB)")
    ax.set_xlim(0, 400)
    ax.set_ylim(15, 45)
    ax.grid(alpha=0.3)
    ax.legend()
    ax.set_title(f"MNIST, last {N_EVAL} test images")
    fig.tight_layout()
    fig.savefig(out / "rd.png", dpi=110)
    plt.close(fig)

    # Originals | ours (a mid-rate model) | WebP at about the same bytes, image by image.
    lmbdas = sorted(ours)
    sizes, decoded = ours[lmbdas[len(lmbdas) // 2]]
    picks = range(8)
    rows_img = [eval_u8[list(picks)], decoded[list(picks)]]
    webp_row, webp_bytes = [], []
    for i in picks:
        q = min(webp, key=lambda q: abs(webp[q][0][i] - sizes[i]))
        webp_row.append(webp[q][1][i])
        webp_bytes.append(int(webp[q][0][i]))
    rows_img.append(np.stack(webp_row))
    fig, axes = plt.subplots(3, 8, figsize=(8, 3.3))
    titles = ("original", "ours", "WebP")
    for r in range(3):
        for c in range(8):
            ax = axes[r][c]
            ax.imshow(rows_img[r][c], cmap="gray", vmin=0, vmax=255)
            ax.set_xticks([])
            ax.set_yticks([])
            if r == 1:
                ax.set_title(f"{sizes[c]} B", fontsize=7)
            if r == 2:
                ax.set_title(f"{webp_bytes[c]} B", fontsize=7)
            if c == 0:
                ax.set_ylabel(titles[r], fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "grid.png", dpi=60)
    plt.close(fig)


if __name__ == "__main__":
    sys.exit(main())
