"""Bring your own VAE: a conv VAE written outside the repository goes through search -> front -> export -> load."""

from __future__ import annotations

import hashlib
import json
import logging
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file, save_file

import vae_automl
from vae_automl.base_model import BaseModelArchitecture, BaseModelError
from vae_automl.components import Architecture
from vae_automl.config import load_space, load_space_text
from vae_automl.errors import ConfigError, PluginError
from vae_automl.export import export_study
from vae_automl.storage.format import deserialize_model, serialize_model, size_bytes
from vae_automl.study import open_study
from vae_automl.testing import ArchitectureContract, make_context, registry_with, tiny_model
from vae_automl.testing.compressors import tiny_data
from vae_automl.vae import VAE

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
    # Structured pruning is accepted: its units are traced when the model loads.
    space = load_space_text(space_yaml(base_model=base, architecture={}, compressors=["structured_prune"]), "s.yaml")
    assert space.base_model is not None and space.base_model.needs_channel_groups
    assert not load_space_text(space_yaml(base_model=base, architecture={}, compressors=["uniform"]),
                               "s.yaml").base_model.needs_channel_groups
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
    (user_dir / "api.yaml").write_text(space_yaml(base_model=None, architecture={}, trials=1,
                                                  compressors=[{"name": "uniform", "params": {"bits": 8}}]).replace(
        "base_model: null\n", ""))
    result = vae_automl.search(user_dir / "api.yaml", out_dir=tmp_path / "api", base_model=module, show_progress=False)
    assert result.completed == 1 and result.baseline is not None  # one point: a second trial would repeat it
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


# --------------------------------------------------------------------------- structured pruning of a user model


class TestUserModelArchitectureContract(ArchitectureContract):
    """The architecture contract on a user's conv VAE (a fixed view in decode) given as base_model:."""

    @pytest.fixture
    def architecture(self) -> Architecture:
        return BaseModelArchitecture()

    @pytest.fixture
    def model(self) -> VAE:
        return tiny_model("user")


def test_traced_groups_skip_the_hard_coded_view(caplog: pytest.LogCaptureFixture) -> None:
    from vae_automl.traced_pruning import traced_channel_groups

    model = tiny_model("user")  # width 4: enc.0 4 channels, enc.2 8 (2 x 2 cells each into the heads), latent 4
    with caplog.at_level(logging.INFO, logger="vae_automl.traced_pruning"):
        traced = traced_channel_groups(model.net, model.input_shape, prefix="net.")
    by_root = {g.plan_root: g for g in traced.groups}
    assert set(by_root) == {"enc.0", "enc.2", "dec.1"}
    assert [(g.size, g.producer) for g in (by_root["enc.0"], by_root["enc.2"], by_root["dec.1"])] == [
        (4, ("net.enc.0.weight", 0)), (8, ("net.enc.2.weight", 0)), (4, ("net.dec.1.weight", 1))]
    assert set(by_root["enc.2"].slices) == {("net.enc.2.weight", 0, 1), ("net.enc.2.bias", 0, 1),
                                            ("net.fc_mu.weight", 1, 4), ("net.fc_logvar.weight", 1, 4)}
    assert set(by_root["dec.1"].slices) == {("net.dec.1.weight", 1, 1), ("net.dec.1.bias", 0, 1), ("net.dec.3.weight", 0, 1)}
    assert traced.latent is not None and traced.latent.config_key == "latent_dim" and traced.latent.size == 4
    assert {s[0] for s in traced.latent.slices} >= {"net.fc_mu.weight", "net.fc_logvar.weight", "net.fc_dec.weight"}
    # A frozen model (distillation freezes its teacher) traces the same, and stays frozen.
    frozen = tiny_model("user").requires_grad_(False)
    assert traced_channel_groups(frozen.net, frozen.input_shape, prefix="net.") == traced
    assert not any(p.requires_grad for p in frozen.parameters())
    reasons = dict(traced.excluded)
    assert set(reasons) == {"fc_dec", "dec.3"}
    assert "fails once one unit is removed" in reasons["fc_dec"] and "[-1, 8, 2, 2]" in reasons["fc_dec"]
    assert reasons["dec.3"] == "a single unit"

    from vae_automl.traced_pruning import log_exclusions

    log_exclusions("test-key", "base_model 'x'", traced)
    log_exclusions("test-key", "base_model 'x'", traced)  # once per model
    warned = [r for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warned) == 1 and "fc_dec" in warned[0].getMessage()


def test_structured_prune_of_a_user_model_shrinks_and_packs() -> None:
    model = tiny_model("user")
    registry = registry_with(None)
    out = registry.compressors.get("structured_prune").apply(
        model, {"ratio": 0.5, "criterion": "magnitude", "batches": 1, "finetune_epochs": 1}, make_context(tiny_data()))
    net = out.net
    assert (net.enc[0].out_channels, net.enc[2].out_channels, net.dec[1].out_channels) == (2, 4, 2)
    assert net.fc_mu.in_features == 16 and net.fc_dec.out_features == 32 and out.latent_dim == 4  # the view's side is kept
    plan = out.config["pruning_plan"]
    assert sorted(layer for layer, _ in plan) == ["dec.1", "enc.0", "enc.2"]
    assert all(len(removed) == {"enc.2": 4}.get(layer, 2) for layer, removed in plan)
    data = serialize_model(out, registry.codec_map())
    assert size_bytes(out, registry.codec_map()) == len(data) < size_bytes(model, registry.codec_map())
    back = deserialize_model(data, registry)  # rebuilt from the factory, the plan replayed: no pickle
    assert back.config["pruning_plan"] == plan
    for name, tensor in out.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name
    x = tiny_data().test[:8]
    with torch.no_grad():
        assert torch.equal(back.reconstruct(x), out.reconstruct(x))


def test_replay_names_the_factory_when_the_code_changed() -> None:
    model = tiny_model("user")
    config = {**model.config, "pruning_plan": [["enc.9", [0]]]}
    with pytest.raises(BaseModelError, match=r"'vae_automl.testing.user_model:build': cannot replay the recorded"):
        registry_with(None).build_model(config)


def test_a_model_without_removable_units_is_refused_at_load(user_dir: Path, tmp_path: Path) -> None:
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry
    from vae_automl.trial import prepare

    (user_dir / "linear.py").write_text(textwrap.dedent('''
        from torch import nn
        class Linear(nn.Module):  # no hidden layer: the latent heads and the output layer only
            def __init__(self):
                super().__init__()
                self.mu, self.logvar, self.out = nn.Linear(64, 4), nn.Linear(64, 4), nn.Linear(4, 64)
            def encode(self, x):
                return self.mu(x.flatten(1)), self.logvar(x.flatten(1))
            def decode(self, z):
                return self.out(z).view(-1, 1, 8, 8)
        def build():
            return Linear()
    '''))
    (user_dir / "lin.yaml").write_text(space_yaml(base_model={"factory": "linear.py:build"}, architecture={},
                                                  compressors=["structured_prune"]))
    with pytest.raises(BaseModelError, match=r"linear.py:build'.*no units can be removed \(.*out: .*\); use unstructured"):
        prepare(load_space(user_dir / "lin.yaml"), tmp_path, get_registry(), get_plugin_manager(), device="cpu")


def test_structured_prune_search_export_load(user_dir: Path, tmp_path: Path) -> None:
    prune = {"name": "structured_prune", "params": {"ratio": 0.5, "finetune_epochs": 2}}
    (user_dir / "sp.yaml").write_text(space_yaml(name="sp", architecture={}, trials=2, compressors=[
        prune, {"name": "uniform", "optional": True, "params": {"bits": 8}}]))
    result = vae_automl.search(user_dir / "sp.yaml", out_dir=tmp_path / "sp", show_progress=False)
    assert result.completed == 2 and result.baseline is not None
    folders = export_study(result.storage, "sp", tmp_path / "export", trials=[e.trial for e in result.front])
    study = open_study(result.storage, "sp")
    assert folders and len(folders) == len(result.front)
    for folder in folders:
        manifest = json.loads((folder / "manifest.json").read_text())
        record = study.trials[manifest["trial"]].user_attrs["record"]
        assert (folder / "weights.safetensors").stat().st_size == record["objectives"]["size_bytes"]
        assert {c["file"] for c in manifest["checks"]} >= {"model.onnx", "model.pt"} and all(c["ok"] for c in manifest["checks"])
        plan = manifest["model_config"]["pruning_plan"]
        assert sorted(layer for layer, _ in plan) == ["dec.1", "enc.0", "enc.2"]
        model = vae_automl.load(folder)
        assert model.net.enc[0].out_channels == 8 and model.net.fc_dec.out_features == 128  # 16 -> 8; the view's side kept
        assert record["objectives"]["size_bytes"] < 0.6 * result.baseline["size_bytes"]
        x = torch.rand(3, 1, 8, 8)
        assert model.reconstruct(x).shape == x.shape


def test_the_baseline_row_is_measured_once_per_process(user_dir: Path, tmp_path: Path,
                                                         monkeypatch: pytest.MonkeyPatch) -> None:
    from vae_automl import trial as trial_mod
    from vae_automl.plugin_manager import get_plugin_manager
    from vae_automl.registry import get_registry

    (user_dir / "bl.yaml").write_text(space_yaml(architecture={}, compressors=["uniform"]))
    env = trial_mod.prepare(load_space(user_dir / "bl.yaml"), tmp_path, get_registry(), get_plugin_manager(), device="cpu")
    calls: list[tuple[str, ...]] = []
    real = trial_mod.measure
    monkeypatch.setattr(trial_mod, "measure", lambda e, m, names, seed: (calls.append(names), real(e, m, names, seed))[1])
    first = trial_mod.base_model_baseline(env)
    assert first is not None and trial_mod.base_model_baseline(env) is first and len(calls) == 1
    assert set(first["objectives"]) == {"test_elbo_nats", "size_bytes"}
    # the user's model as given: its dense float32 file, not a compressed one
    assert first["objectives"]["size_bytes"] > 4 * first["base_model"]["params"]
    assert first["base_model"]["checkpoint_sha256"] == hashlib.sha256((user_dir / "ckpt.safetensors").read_bytes()).hexdigest()
    env.base_model = None
    env.study_baseline = None
    assert trial_mod.base_model_baseline(env) is None


def test_without_a_checkpoint_every_process_starts_from_the_same_weights() -> None:
    from vae_automl.base_model import wrap
    from vae_automl.config import BaseModelConfig

    images = tiny_data().train[:16]
    torch.manual_seed(1)
    first = wrap(BaseModelConfig("vae_automl.testing.user_model:build"), images)
    torch.manual_seed(2)  # another process's random state
    state = torch.get_rng_state()
    second = wrap(BaseModelConfig("vae_automl.testing.user_model:build"), images)
    assert all(torch.equal(v, second.state_dict()[k]) for k, v in first.state_dict().items())
    assert torch.equal(torch.get_rng_state(), state), "building the base must leave the caller's random state alone"
