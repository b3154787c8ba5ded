"""Bring your own VAE, end to end: a conv VAE written and trained outside vae-automl, searched, exported, loaded.

    python benchmarks/byom.py [--dataset digits | mnist --data ../shared/data/mnist] [--epochs N] [--trials N] [--json F]

In a temporary folder: writes a small conv VAE module (the model of
docs/bring-your-own-model.md), trains it with plain PyTorch on the dataset's
first 8,000 images (digits: all 1,797) and saves its state_dict with
safetensors; then runs a ``base_model:`` search (optional distill to a
built-in conv student -> optional magnitude pruning -> optional uniform
quantization, NSGA-II), prints the front next to the baseline (the user's
model as given, same objectives) and exports + loads the smallest front point
within +3% test ELBO of the baseline.

Caveats: the user's model trains on the first images, and the search's test
split is drawn from the same file (shuffled), so with MNIST's test-set-only
folder the two overlap; the comparison with the baseline is relative
(every model descends from the same checkpoint). Compressed rows fine-tune,
so they can beat an under-trained checkpoint (as in the seed table).
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import yaml

MODEL = '''
import torch
from torch import nn


class SmallConvVAE(nn.Module):
    def __init__(self, latent=16, width=16, size=28):
        super().__init__()
        self.width, self.cells = width, size // 4
        flat = 2 * width * self.cells * self.cells
        self.enc = nn.Sequential(nn.Conv2d(1, width, 3, 2, 1), nn.ReLU(), nn.Conv2d(width, 2 * width, 3, 2, 1),
                                 nn.ReLU(), nn.Flatten())
        self.fc_mu, self.fc_logvar = nn.Linear(flat, latent), nn.Linear(flat, latent)
        self.fc_dec = nn.Linear(latent, flat)
        self.dec = nn.Sequential(nn.ReLU(), nn.ConvTranspose2d(2 * width, width, 4, 2, 1), nn.ReLU(),
                                 nn.ConvTranspose2d(width, 1, 4, 2, 1))

    def encode(self, x):
        h = self.enc(x)
        return self.fc_mu(h), self.fc_logvar(h)

    def decode(self, z):
        return self.dec(self.fc_dec(z).view(-1, 2 * self.width, self.cells, self.cells))


def build(latent=16, width=16, size=28):
    return SmallConvVAE(latent, width, size)
'''

TRAIN = '''
import sys, torch
from torch.nn import functional as F
from safetensors.torch import save_file
from vae_automl.data import load_images
sys.path.insert(0, sys.argv[1])
from my_vae import build
torch.manual_seed(0)
x = torch.tensor(load_images(sys.argv[3], sys.argv[4] or None, False)[:8000], dtype=torch.float32)
x = x.reshape(len(x), 1, x.shape[-2], x.shape[-1])
model = build(16, 16, x.shape[-1])
opt = torch.optim.Adam(model.parameters(), 2e-3)
for epoch in range(int(sys.argv[5])):
    for idx in torch.randperm(len(x)).split(64):
        mu, logvar = model.encode(x[idx])
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = F.binary_cross_entropy_with_logits(model.decode(z), x[idx], reduction="none").flatten(1).sum(1)
        loss = (rec + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean()
        opt.zero_grad(); loss.backward(); opt.step()
save_file(model.state_dict(), sys.argv[2])
'''


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="digits", choices=("digits", "mnist"))
    parser.add_argument("--data", default=None, help="folder of the MNIST IDX files (for --dataset mnist)")
    parser.add_argument("--epochs", type=int, default=25, help="plain-PyTorch training epochs of the user's model")
    parser.add_argument("--trials", type=int, default=12)
    parser.add_argument("--json", default=None, help="write the figures to this file")
    args = parser.parse_args(argv)

    import vae_automl
    from vae_automl.export import export_study

    size = 8 if args.dataset == "digits" else 28
    figures: dict[str, Any] = {"dataset": args.dataset, "epochs": args.epochs, "trials": args.trials}
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        (root / "my_vae.py").write_text(MODEL)
        (root / "train.py").write_text(TRAIN)
        started = time.perf_counter()
        subprocess.run([sys.executable, str(root / "train.py"), str(root), str(root / "ckpt.safetensors"),
                        args.dataset, args.data or "", str(args.epochs)], check=True)
        figures["user_training_s"] = time.perf_counter() - started
        dataset: dict[str, Any] = {"spec": args.dataset}
        if args.dataset == "mnist":
            dataset.update(data_dir=str(Path(args.data).resolve()), split={"limit": 10000})
        space = {
            "name": "byom", "dataset": dataset,
            "base_model": {"factory": "my_vae.py:build", "kwargs": {"latent": 16, "width": 16, "size": size},
                           "checkpoint": "ckpt.safetensors", "likelihood": "bernoulli"},
            "architecture": {"conv": {"blocks": 2, "base_channels": {"low": 4, "high": 12}, "latent_dim": 16}},
            "training": {"epochs": 5, "batch_size": 64},
            "compressors": [
                {"name": "distill", "optional": True, "params": {"epochs": 8}},
                {"name": "magnitude_prune", "optional": True,
                 "params": {"sparsity": {"low": 0.3, "high": 0.8}, "finetune_epochs": 3}},
                {"name": "uniform", "optional": True, "params": {"bits": {"low": 2, "high": 8}, "qat_epochs": {"low": 0, "high": 2}}},
            ],
            "objectives": ["test_elbo_nats", "size_bytes"], "latency": {"repeats": 3, "warmup": 1},
            "sampler": {"name": "nsga2", "seed": 0}, "trials": args.trials,
        }
        (root / "space.yaml").write_text(yaml.safe_dump(space, sort_keys=False))
        started = time.perf_counter()
        result = vae_automl.search(root / "space.yaml", out_dir=root / "run", show_progress=False)
        figures["search_s"] = time.perf_counter() - started
        checkpoint_bytes = (root / "ckpt.safetensors").stat().st_size
        baseline = result.baseline or {}
        figures.update(checkpoint_bytes=checkpoint_bytes, baseline=baseline, front=[])
        print(f"user model: {args.epochs} epochs of plain PyTorch in {figures['user_training_s']:.1f} s; checkpoint "
              f"{checkpoint_bytes:,} B; as given: test ELBO {baseline['test_elbo_nats']:.2f} nats, packed "
              f"{baseline['size_bytes']:,.0f} B")
        print(f"search: {result.completed} trials in {figures['search_s']:.0f} s\n")
        print("| trial | test ELBO nats | vs baseline | size bytes | vs checkpoint | pipeline |")
        print("| ---: | ---: | ---: | ---: | ---: | --- |")
        for entry in result.front:
            elbo, size_bytes = entry.objectives["test_elbo_nats"], entry.objectives["size_bytes"]
            steps = [s["compressor"] for s in entry.record["config"]["pipeline"]]
            delta = 100 * (elbo / baseline["test_elbo_nats"] - 1)
            figures["front"].append({"trial": entry.trial, "test_elbo_nats": elbo, "delta_elbo_pct": delta,
                                     "size_bytes": size_bytes, "pipeline": steps, "params": entry.params})
            print(f"| {entry.trial} | {elbo:.2f} | {delta:+.1f}% | {size_bytes:,.0f} | "
                  f"{checkpoint_bytes / size_bytes:.1f}x smaller | {' -> '.join(steps) or '(none)'} |")
        good = [e for e in figures["front"] if e["size_bytes"] < checkpoint_bytes and e["delta_elbo_pct"] <= 3.0]
        if good:
            best = min(good, key=lambda e: e["size_bytes"])
            figures["best_within_3pct"] = best
            folders = export_study(result.storage, result.study_name, root / "export", trials=[best["trial"]])
            model = vae_automl.load(folders[0])
            figures["exported"] = sorted(p.name for p in folders[0].iterdir())
            print(f"\nsmallest front point within +3% ELBO: trial {best['trial']}, "
                  f"{checkpoint_bytes / best['size_bytes']:.1f}x smaller than the checkpoint; exported "
                  f"{', '.join(figures['exported'])} and loaded back ({type(model).__name__})")
        else:
            print("\nno front point within +3% ELBO of the baseline and smaller than the checkpoint")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2, default=str))
    return 0


if __name__ == "__main__":
    sys.exit(main())
