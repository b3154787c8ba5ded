"""Bring your own VAE: a conv VAE written outside the repository goes through search -> front -> export -> load."""

from __future__ import annotations

import hashlib
import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import vae_automl
from vae_automl.base_model import BaseModelError
from vae_automl.config import load_space, load_space_text
from vae_automl.errors import ConfigError, PluginError
from vae_automl.export import export_study
from vae_automl.study import open_study

USER_MODEL = '''
"""A user's conv VAE, written without vae-automl."""
import torch
from torch import nn


class SmallConvVAE(nn.Module):
    def __init__(self, latent=8, width=16, size=8):
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


def build(latent=8, width=16, size=8):
    return SmallConvVAE(latent, width, size)


class NoDecode(nn.Module):
    def __init__(self):
        super().__init__()
        self.net = SmallConvVAE()

    def encode(self, x):
        return self.net.encode(x)


def no_decode():
    return NoDecode()


class Flat(SmallConvVAE):
    def decode(self, z):
        return super().decode(z).flatten(1)


def flat():
    return Flat()
'''

TRAIN = '''
import sys, torch
from torch.nn import functional as F
from safetensors.torch import save_file
from sklearn.datasets import load_digits
sys.path.insert(0, sys.argv[1])
from my_vae import build
torch.manual_seed(0)
x = torch.tensor(load_digits().images / 16.0, dtype=torch.float32).unsqueeze(1)
model = build()
opt = torch.optim.Adam(model.parameters(), 2e-3)
for epoch in range(int(sys.argv[3])):
    for idx in torch.randperm(len(x)).split(64):
        mu, logvar = model.encode(x[idx])
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        rec = F.binary_cross_entropy_with_logits(model.decode(z), x[idx], reduction="none").flatten(1).sum(1)
        loss = (rec + 0.5 * (mu.pow(2) + logvar.exp() - 1 - logvar).sum(1)).mean()
        opt.zero_grad(); loss.backward(); opt.step()
save_file(model.state_dict(), sys.argv[2])
'''


@pytest.fixture(scope="module")
def user_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A temp dir outside the repo with the user's model file and a checkpoint trained by plain PyTorch."""
    root = tmp_path_factory.mktemp("user")
    (root / "my_vae.py").write_text(USER_MODEL)
    (root / "train.py").write_text(TRAIN)
    subprocess.run([sys.executable, str(root / "train.py"), str(root), str(root / "ckpt.safetensors"), "25"],
                   check=True, env={"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"})
    return root


def space_yaml(**overrides: object) -> str:
    space = {
        "name": "byom",
        "dataset": "digits",
        "base_model": {"factory": "my_vae.py:build", "kwargs": {"latent": 8, "width": 16},
                       "checkpoint": "ckpt.safetensors", "likelihood": "bernoulli"},
        "architecture": {"conv": {"blocks": 2, "base_channels": {"low": 4, "high": 8}, "latent_dim": 8}},
        "training": {"epochs": 5, "batch_size": 64},
        "compressors": [
            {"name": "distill", "optional": True, "params": {"epochs": 8}},
            {"name": "magnitude_prune", "optional": True, "params": {"sparsity": {"low": 0.3, "high": 0.7},
                                                                      "finetune_epochs": 3}},
            {"name": "uniform", "optional": True, "params": {"bits": {"low": 4, "high": 8}}},
        ],
        "objectives": ["test_elbo_nats", "size_bytes"],
        "latency": {"repeats": 2, "warmup": 1},
        "sampler": {"name": "random", "seed": 1},
        "trials": 8,
    }
    space.update(overrides)
    return yaml.safe_dump(space, sort_keys=False)


def test_search_front_export_load(user_dir: Path, tmp_path: Path) -> None:
    (user_dir / "space.yaml").write_text(space_yaml())
    out = tmp_path / "run"
    result = vae_automl.search(user_dir / "space.yaml", out_dir=out, show_progress=False)
    assert result.completed == 8
    baseline = result.baseline
    assert baseline is not None
    checkpoint_bytes = (user_dir / "ckpt.safetensors").stat().st_size
    # The front holds points smaller than the checkpoint at no more than +3% test ELBO against its own.
    good = [e for e in result.front if e.objectives["size_bytes"] < checkpoint_bytes
            and e.objectives["test_elbo_nats"] <= 1.03 * baseline["test_elbo_nats"]]
    assert good, (baseline, checkpoint_bytes, [e.objectives for e in result.front])
    study = open_study(result.storage, "byom")
    all_pipelines = {c["compressor"] for t in study.trials if t.state.name == "COMPLETE"
                     for c in t.user_attrs["record"]["config"]["pipeline"]}
    assert all_pipelines == {"distill", "magnitude_prune", "uniform"}, all_pipelines
    sha = study.user_attrs["vae_automl_base_model"]["checkpoint_sha256"]
    assert sha == hashlib.sha256((user_dir / "ckpt.safetensors").read_bytes()).hexdigest()
    plugins = study.user_attrs["vae_automl_plugins"]
    assert plugins["vae_automl.builtin.quantization"]["distribution"] == "vae-automl"
    assert plugins["vae_automl.builtin.quantization"]["version"] == vae_automl.__version__

    folders = export_study(result.storage, "byom", tmp_path / "export", trials=[good[0].trial])
    manifest = json.loads((folders[0] / "manifest.json").read_text())
    assert manifest["base_model"] == {"factory": f"{user_dir / 'my_vae.py'}:build", "checkpoint_sha256": sha}
    assert manifest["plugins"]["vae_automl.builtin.architectures"]["distribution"] == "vae-automl"
    model = vae_automl.load(folders[0])
    x = torch.rand(3, 1, 8, 8)
    assert model.reconstruct(x).shape == x.shape

    # A plugin the model was made with but that is not loaded is named, with its package.
    manifest["plugins"]["my_plugin"] = {"distribution": "vae-automl-mine", "version": "1.2", "module": "mine.plugin"}
    (folders[0] / "manifest.json").write_text(json.dumps(manifest))
    from vae_automl.loading import check_plugins

    with pytest.raises(PluginError, match=r"plugin 'my_plugin' from vae-automl-mine 1.2 \(pip install 'vae-automl-mine==1.2'\)"):
        check_plugins(folders[0] / "manifest.json", manifest, {"vae_automl.builtin.architectures"})

    # The same study with another checkpoint is refused.
    other = user_dir / "other.safetensors"
    save_file({k: v + 0.01 for k, v in load_file(user_dir / "ckpt.safetensors").items()}, other)
    (user_dir / "space2.yaml").write_text(space_yaml(base_model={"factory": "my_vae.py:build", "kwargs": {"latent": 8},
                                                                 "checkpoint": "other.safetensors"}))
    with pytest.raises(ConfigError, match="was started from base_model checkpoint sha256"):
        vae_automl.search(user_dir / "space2.yaml", out_dir=out, study_name="byom", show_progress=False, trials=1)


def test_load_names_a_factory_it_cannot_import(user_dir: Path) -> None:
    from vae_automl.base_model import import_factory

    with pytest.raises(BaseModelError, match=r"base_model.factory 'no_such_pkg.models:build': cannot import"):
        import_factory("no_such_pkg.models:build")
    with pytest.raises(BaseModelError, match=r"has no callable 'nope'"):
        import_factory(f"{user_dir / 'my_vae.py'}:nope")


def _prepare(user_dir: Path, tmp_path: Path, **base: object) -> None:
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.trial import prepare

    model = {"factory": "my_vae.py:build", "checkpoint": "ckpt.safetensors", **base}
    text = space_yaml(base_model=model, architecture={}, compressors=["uniform"])
    (user_dir / "s.yaml").write_text(text)
    prepare(load_space(user_dir / "s.yaml"), tmp_path, get_registry(), get_plugin_manager(), device="cpu")


@pytest.mark.parametrize(("base", "message"), [
    ({"factory": "my_vae.py:no_decode", "checkpoint": None}, r"'.*my_vae.py:no_decode': the model has no decode\(\)"),
    ({"factory": "my_vae.py:flat", "checkpoint": None}, r"my_vae.py:flat': decode\(z\) must give the images' shape"),
    ({"kwargs": {"size": 28}, "checkpoint": None}, r"my_vae.py:build': encode failed on a batch .* another image size"),
    ({"kwargs": {"latent": 4}}, r"checkpoint .*ckpt.safetensors does not fit the model"),
    ({"checkpoint": "missing.safetensors"}, r"no such file"),
])
def test_protocol_errors_name_the_factory(user_dir: Path, tmp_path: Path, base: dict, message: str) -> None:
    with pytest.raises(BaseModelError, match=message):
        _prepare(user_dir, tmp_path, **base)


def test_pt_checkpoint_loads_with_weights_only(user_dir: Path, tmp_path: Path) -> None:
    torch.save(load_file(user_dir / "ckpt.safetensors"), user_dir / "ckpt.pt")
    _prepare(user_dir, tmp_path, checkpoint="ckpt.pt")
    (user_dir / "evil.pt").write_bytes(b"not a pickle")
    with pytest.raises(BaseModelError, match="cannot read"):
        _prepare(user_dir, tmp_path, checkpoint="evil.pt")


def test_yaml_load_refusals(user_dir: Path) -> None:
    base = {"factory": "my_vae.py:build", "checkpoint": "ckpt.safetensors"}
    with pytest.raises(ConfigError, match="base_model.*cannot declare; use unstructured pruning"):
        load_space_text(space_yaml(base_model=base, architecture={}, compressors=["structured_prune"]), "s.yaml")
    with pytest.raises(ConfigError, match="architecture: names distillation students"):
        load_space_text(space_yaml(base_model=base, compressors=["uniform"]), "s.yaml")
    with pytest.raises(ConfigError, match="a distill stage trains a student of a built-in family"):
        load_space_text(space_yaml(base_model=base, architecture={}, compressors=["distill"]), "s.yaml")
    with pytest.raises(ConfigError, match=r"base_model\.checkpoint: ckpt.bin: a state_dict in \.safetensors"):
        load_space_text(space_yaml(base_model={**base, "checkpoint": "ckpt.bin"}, architecture={}), "s.yaml")


def test_group_bits_use_the_traced_or_named_groups(user_dir: Path, tmp_path: Path) -> None:
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.trial import prepare

    uniform = {"name": "uniform", "params": {"bits": 8, "bits_encoder": 4, "bits_heads": 6}}
    base = {"factory": "my_vae.py:build", "checkpoint": "ckpt.safetensors"}
    (user_dir / "g.yaml").write_text(space_yaml(base_model=base, architecture={}, compressors=[uniform]))
    env = prepare(load_space(user_dir / "g.yaml"), tmp_path, get_registry(), get_plugin_manager(), device="cpu")
    groups = get_registry().architectures.get("base_model").layer_groups(env.base_model)
    assert groups == {"encoder": ("net.enc.0", "net.enc.2"), "heads": ("net.fc_mu", "net.fc_logvar"),
                      "decoder": ("net.fc_dec", "net.dec.1", "net.dec.3")}
    from vae_automl.testing import make_context

    out = get_registry().compressors.get("uniform").apply(env.base_model, uniform["params"],
                                                          make_context(env.data))
    assert out.encodings["net.enc.0.weight"]["bits"] == 4 and out.encodings["net.fc_mu.weight"]["bits"] == 6
    assert out.encodings["net.dec.1.weight"]["bits"] == 8

    # A model where the rule finds no groups: per-group bits are an error at load, naming groups are the way out.
    shared = textwrap.dedent('''
        import torch
        from torch import nn
        class Shared(nn.Module):
            def __init__(self):
                super().__init__()
                self.lin = nn.Linear(64, 64)
                self.head = nn.Linear(64, 4)
            def encode(self, x):
                h = self.lin(x.flatten(1))
                return self.head(h), self.head(h) * 0
            def decode(self, z):
                return self.lin(torch.cat([z] * 16, 1)).view(-1, 1, 8, 8)
        def build():
            return Shared()
    ''')
    (user_dir / "shared.py").write_text(shared)
    (user_dir / "g2.yaml").write_text(space_yaml(base_model={"factory": "shared.py:build"}, architecture={},
                                                 compressors=[uniform]))
    with pytest.raises(BaseModelError, match="finds no encoder / heads / decoder groups"):
        prepare(load_space(user_dir / "g2.yaml"), tmp_path, get_registry(), get_plugin_manager(), device="cpu")
    named = {"factory": "shared.py:build", "groups": {"encoder": ["lin"], "heads": ["head"], "decoder": ["lin"]}}
    (user_dir / "g3.yaml").write_text(space_yaml(base_model=named, architecture={}, compressors=[uniform]))
    prepare(load_space(user_dir / "g3.yaml"), tmp_path, get_registry(), get_plugin_manager(), device="cpu")


def test_python_api_takes_a_module_instance(user_dir: Path, tmp_path: Path) -> None:
    sys.path.insert(0, str(user_dir))
    try:
        import my_vae  # noqa: PLC0415
    finally:
        sys.path.remove(str(user_dir))
    module = my_vae.build()
    module.load_state_dict(load_file(user_dir / "ckpt.safetensors"))
    (user_dir / "api.yaml").write_text(space_yaml(base_model=None, architecture={}, trials=2,
                                                  compressors=[{"name": "uniform", "params": {"bits": 8}}]).replace(
        "base_model: null\n", ""))
    result = vae_automl.search(user_dir / "api.yaml", out_dir=tmp_path / "api", base_model=module, show_progress=False)
    assert result.completed == 2 and result.baseline is not None
    assert result.front[0].objectives["test_elbo_nats"] == pytest.approx(result.baseline["test_elbo_nats"], rel=0.02)


def test_gaussian_base_model_gets_a_fitted_scale(user_dir: Path, tmp_path: Path) -> None:
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.train import evaluate_elbo
    from vae_automl.trial import prepare

    base = {"factory": "my_vae.py:build", "checkpoint": "ckpt.safetensors", "likelihood": "gaussian"}
    (user_dir / "gauss.yaml").write_text(space_yaml(base_model=base, architecture={}, compressors=["uniform"]))
    env = prepare(load_space(user_dir / "gauss.yaml"), tmp_path, get_registry(), get_plugin_manager(), device="cpu")
    model = env.base_model
    assert model.likelihood == "gaussian"
    fitted = evaluate_elbo(model, env.data.test)
    with torch.no_grad():
        model.log_sigma.fill_(-2.0)  # the VAE default, not fitted to this model's errors
    assert fitted < evaluate_elbo(model, env.data.test)


def test_stored_space_holds_resolved_paths(user_dir: Path) -> None:
    (user_dir / "rel.yaml").write_text(space_yaml(architecture={}, compressors=["uniform"]))
    space = load_space(user_dir / "rel.yaml")
    again = load_space_text(space.source, "stored", base_dir=Path("/"))
    assert again.base_model == space.base_model
    assert again.base_model.checkpoint == str(user_dir / "ckpt.safetensors")


def test_worker_runs_a_base_model_study_and_refuses_another_checkpoint(user_dir: Path, tmp_path: Path) -> None:
    import shutil

    from vae_automl.worker import run_worker

    work = tmp_path / "user"
    shutil.copytree(user_dir, work)
    (work / "w.yaml").write_text(space_yaml(architecture={}, compressors=[{"name": "uniform", "params": {"bits": 6}}]))
    created = vae_automl.search(work / "w.yaml", out_dir=tmp_path / "w", trials=0, show_progress=False)
    result = run_worker(created.storage, "byom", trials=1, show_progress=False)
    assert result.completed == 1
    save_file({k: v * 0.5 for k, v in load_file(work / "ckpt.safetensors").items()}, work / "ckpt.safetensors")
    with pytest.raises(ConfigError, match="was started from base_model checkpoint sha256"):
        run_worker(created.storage, "byom", trials=1, show_progress=False)


def test_fine_tune_of_the_base_is_cached_by_checkpoint(user_dir: Path, tmp_path: Path) -> None:
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.trial import prepare

    base = {"factory": "my_vae.py:build", "checkpoint": "ckpt.safetensors", "fine_tune_epochs": 1}
    (user_dir / "ft.yaml").write_text(space_yaml(base_model=base, architecture={}, compressors=["uniform"]))
    space = load_space(user_dir / "ft.yaml")
    env = prepare(space, tmp_path, get_registry(), get_plugin_manager(), device="cpu")
    cached = tmp_path / "cache" / f"base-{env.base_model_info['cache_key']}.safetensors"
    assert cached.is_file() and env.base_model_info["fine_tune_epochs"] == 1
    given = load_file(user_dir / "ckpt.safetensors")
    tuned = env.base_model.state_dict()
    assert any(not torch.equal(tuned[f"net.{k}"], v) for k, v in given.items()), "the base was not fine-tuned"
    stamp = cached.stat().st_mtime_ns
    again = prepare(space, tmp_path, get_registry(), get_plugin_manager(), device="cpu")
    assert cached.stat().st_mtime_ns == stamp
    assert all(torch.equal(again.base_model.state_dict()[k], v) for k, v in tuned.items())
