"""The codec task: entropy coding, per-image bitstreams, container files, objectives, and a search end to end."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from vae_automl.codec import HEADER_BYTE, CodecVAE
from vae_automl.codec_file import (
    decode_bytes,
    decode_file,
    encode_file,
    encode_images,
    load_codec_model,
    save_codec_model,
)
from vae_automl.components import MeasureContext
from vae_automl.config import load_space_text
from vae_automl.data import SplitConfig, load_images, load_labels, make_splits
from vae_automl.entropy import PRECISION_BITS, Coder, FrequencyTables, quantize_pmf
from vae_automl.errors import CodecError, ConfigError
from vae_automl.metrics import psnr_db, ssim
from vae_automl.registry import get_registry
from vae_automl.train import TrainConfig, train

REPO = Path(__file__).resolve().parents[1]


def digits_splits() -> Any:
    images = load_images("digits")
    return make_splits(images, SplitConfig(validation=0.1, test=0.2, seed=0), "cpu", spec="digits",
                       labels=load_labels("digits", len(images)))


def trained_codec(lmbda: float = 0.05, seed: int = 0, epochs: int = 3) -> CodecVAE:
    registry = get_registry()
    arch = registry.architectures.get("codec_mlp")
    # With a post-filter, so every round trip below also runs its convolutions.
    values = arch.resolve_params({"hidden_layers": 1, "hidden_width": 32, "latent_dim": 8, "lmbda": lmbda,
                                  "postfilter_layers": 2, "postfilter_channels": 4})
    torch.manual_seed(seed)
    model = arch.build(arch.config_from_params(values, (1, 8, 8)))
    task = registry.tasks.get("codec")
    train(model, digits_splits(), TrainConfig(epochs=epochs, batch_size=64, lr=3e-3), seed=seed, task=task)
    task.finalize(model)
    assert isinstance(model, CodecVAE)
    return model


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    directory = tmp_path_factory.mktemp("codec-model")
    save_codec_model(trained_codec(), directory)
    return directory


@pytest.fixture(scope="module")
def images_npz(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("images") / "digits.npz"
    test = digits_splits().test
    np.savez(path, images=np.round(test[:, 0].numpy() * 255).astype(np.uint8))
    return path


# --- entropy coding ---

def test_quantized_tables_are_exact_integers_with_no_zero() -> None:
    freq = quantize_pmf(np.array([0.5, 0.25, 1e-12, 0.25, 0.0]))
    assert int(freq.sum()) == 1 << PRECISION_BITS and int(freq.min()) >= 1
    assert freq[0] > freq[1] > freq[2] and freq[1] == pytest.approx(freq[3], abs=2)
    with pytest.raises(ValueError):
        quantize_pmf(np.array([0.0, 0.0]))


def test_coder_round_trips_every_value_and_escapes_outliers() -> None:
    rng = np.random.default_rng(0)
    pmfs = [np.exp(-np.abs(np.arange(-20, 21)) / (1 + d)) for d in range(6)]
    coder = Coder(FrequencyTables.from_pmfs(pmfs, [-20] * 6))
    values = np.round(rng.laplace(0, 3, size=(300, 6))).astype(np.int64)
    values[0] = [0, 0, 0, 0, 0, 0]
    values[1] = [-20, 20, 21, -21, 5000, -32768]  # table edges, just outside, and far outside (escaped)
    for v in values:
        assert np.array_equal(coder.decode(coder.encode(v)), v)
    with pytest.raises(ValueError, match="outside the codable range"):
        coder.encode(np.array([0, 0, 0, 0, 0, 40000]))


def test_likely_values_cost_fewer_bytes_than_unlikely_ones() -> None:
    tables = FrequencyTables.from_pmfs([np.exp(-np.abs(np.arange(-50, 51)) / 2.0)] * 16, [-50] * 16)
    coder = Coder(tables)
    for values in (np.zeros(16, np.int64), np.full(16, 30, np.int64)):
        ideal_bytes = tables.ideal_bits(values) / 8
        # A range coder spends its information content plus at most a few bytes to flush its state.
        assert ideal_bytes <= len(coder.encode(values)) <= ideal_bytes + 5
    assert tables.ideal_bits(np.full(16, 30, np.int64)) > 5 * tables.ideal_bits(np.zeros(16, np.int64))


# --- the codec model ---

def test_bitstreams_decode_to_the_latents_and_are_counted_by_the_rate_objective(model_dir: Path) -> None:
    codec = load_codec_model(model_dir)
    data = digits_splits()
    latents = codec.model.latents(data.test)
    streams = codec.model.encode_latents(latents)
    assert len(streams) == len(data.test) and all(s[0] == HEADER_BYTE for s in streams)
    assert np.array_equal(codec.model.decode_latents(streams), latents)
    ctx = MeasureContext(model=codec.model, data=data, device=torch.device("cpu"), seed=0)
    registry = get_registry()
    rate = registry.objectives.get("rate_bytes_per_image").measure(ctx)
    assert rate == pytest.approx(np.mean([len(s) for s in streams]))
    # The container holds exactly those bitstreams.
    data_bytes, lengths = encode_images(codec, data.test.numpy())
    assert np.mean(lengths) == pytest.approx(rate)
    assert len(data_bytes) == 8 + 1 + 32 + 6 + 4 + sum(lengths) + len(lengths)  # lengths < 128: one varint byte each
    # The decoded images are the model's reconstructions (on 8-bit levels).
    decoded = decode_bytes(codec, data_bytes)
    expected = torch.round(codec.model.reconstruct(data.test) * 255).to(torch.uint8).numpy()
    assert np.array_equal(decoded, expected)
    psnr = registry.objectives.get("psnr_db").measure(ctx)
    assert psnr == pytest.approx(float(psnr_db(torch.round(data.test * 255) / 255,
                                                torch.from_numpy(decoded).double() / 255).mean()), abs=1e-6)


ENCODE_SNIPPET = """
import sys
from vae_automl.codec_file import encode_file
encode_file(sys.argv[1], sys.argv[2], sys.argv[3])
"""


def test_round_trip_is_bit_exact_across_two_processes(model_dir: Path, images_npz: Path, tmp_path: Path) -> None:
    there = tmp_path / "there.codec"
    subprocess.run([sys.executable, "-c", ENCODE_SNIPPET, str(model_dir), str(images_npz), str(there)],
                   check=True, cwd=REPO, timeout=120)
    here = encode_file(model_dir, images_npz, tmp_path / "here.codec")
    assert there.read_bytes() == here.path.read_bytes()
    decoded = decode_file(model_dir, there, tmp_path / "out.npz")
    with np.load(tmp_path / "out.npz") as archive:
        assert np.array_equal(archive["images"], decoded)
    assert decoded.shape == (here.n_images, 8, 8) and decoded.dtype == np.uint8
    again = subprocess.run([sys.executable, "-c",
                            "import sys, numpy as np\nfrom vae_automl.codec_file import decode_file\n"
                            "print(decode_file(sys.argv[1], sys.argv[2], sys.argv[3]).tobytes().hex())",
                            str(model_dir), str(there), str(tmp_path / "out2.npz")],
                           check=True, cwd=REPO, timeout=120, capture_output=True, text=True)
    assert bytes.fromhex(again.stdout.strip()) == decoded.tobytes()


def test_truncated_foreign_and_wrong_size_inputs_are_refused(model_dir: Path, images_npz: Path, tmp_path: Path) -> None:
    good = encode_file(model_dir, images_npz, tmp_path / "good.codec").path.read_bytes()
    bad = tmp_path / "bad.codec"
    for cut, message in ((10, "truncated or not a codec file"), (60, "truncated"), (len(good) - 1, "truncated")):
        bad.write_bytes(good[:cut])
        with pytest.raises(CodecError, match=message):
            decode_file(model_dir, bad, tmp_path / "never.npz")
    bad.write_bytes(good + b"\0")
    with pytest.raises(CodecError, match="unexpected bytes after the last"):
        decode_file(model_dir, bad, tmp_path / "never.npz")
    bad.write_bytes(b"JPEGJPEG" + good[8:])
    with pytest.raises(CodecError, match="not a vae-automl codec file"):
        decode_file(model_dir, bad, tmp_path / "never.npz")
    other = tmp_path / "other-model"
    save_codec_model(trained_codec(seed=1, epochs=1), other)
    with pytest.raises(CodecError, match="written by another model"):
        decode_file(other, tmp_path / "good.codec", tmp_path / "never.npz")
    np.savez(tmp_path / "big.npz", images=np.zeros((3, 28, 28), np.uint8))
    with pytest.raises(CodecError, match="images of shape 1x28x28, but the model codes 1x8x8"):
        encode_file(model_dir, tmp_path / "big.npz", tmp_path / "never.codec")
    # Nothing partial was left behind by any refusal.
    assert not (tmp_path / "never.npz").exists() and not (tmp_path / "never.codec").exists()
    assert not list(tmp_path.glob(".*tmp"))


def test_a_model_that_is_not_a_codec_is_refused(tmp_path: Path) -> None:
    from vae_automl import packing

    arch = get_registry().architectures.get("mlp")
    model = arch.build(arch.config_from_params(arch.resolve_params({"hidden_width": 8, "latent_dim": 2}), (1, 8, 8)))
    (tmp_path / "weights.safetensors").write_bytes(packing.serialize_model(model))
    with pytest.raises(CodecError, match="is not a codec"):
        load_codec_model(tmp_path)


# --- metrics ---

def test_ssim_matches_scikit_image() -> None:
    metrics = pytest.importorskip("skimage.metrics")
    rng = np.random.default_rng(0)
    a = rng.random((3, 1, 28, 28))
    b = np.clip(a + rng.normal(0, 0.1, a.shape), 0, 1)
    ours = ssim(torch.from_numpy(a), torch.from_numpy(b)).numpy()
    oracle = [metrics.structural_similarity(a[i, 0], b[i, 0], win_size=7, data_range=1.0) for i in range(3)]
    assert ours == pytest.approx(oracle, abs=1e-9)
    assert float(ssim(torch.from_numpy(a), torch.from_numpy(a))[0]) == pytest.approx(1.0)


def test_psnr_is_per_image_then_averaged() -> None:
    ref = torch.zeros(2, 1, 4, 4)
    test = ref.clone()
    test[0] += 0.1  # MSE 0.01 -> 20 dB
    test[1] += 0.01  # MSE 1e-4 -> 40 dB
    assert psnr_db(ref, test).tolist() == pytest.approx([20.0, 40.0])


# --- through the ordinary hooks ---

CODEC_SPACE = """
task: codec
dataset: {spec: digits, split: {test: 0.2, validation: 0.1, limit: 400}}
device: cpu
architecture:
  codec_mlp: {hidden_layers: 1, hidden_width: 16, latent_dim: 4, lmbda: {low: 0.01, high: 1.0, log: true}}
training: {epochs: 1, batch_size: 64, lr: 3.0e-3}
compressors:
  - {name: uniform, optional: true, params: {bits: 8}}
objectives: [rate_bytes_per_image, psnr_db, decoder_bytes]
record: [ssim, recognition_accuracy, size_bytes]
trials: 3
sampler: {name: random, seed: 0}
"""


def test_codec_components_register_through_the_hooks() -> None:
    registry = get_registry()
    for name in ("rate_bytes_per_image", "psnr_db", "ssim", "decoder_bytes", "recognition_accuracy"):
        assert registry.objectives.plugin_of(name) == "vae_automl.builtin.codec"
    assert registry.tasks.plugin_of("codec") == "vae_automl.builtin.codec"
    assert registry.architectures.get("codec_conv").tasks == ("codec",)
    space = load_space_text(CODEC_SPACE, "c.yaml")
    assert space.needs_labels and "test_elbo_nats" not in space.record
    with pytest.raises(ConfigError, match="c.yaml: architecture.mlp: architecture 'mlp' does not support task 'codec'"):
        load_space_text(CODEC_SPACE.replace("codec_mlp: {", "mlp: {hidden_width: 8}\n  codec_mlp: {"), "c.yaml")


def test_small_codec_search_end_to_end(tmp_path: Path) -> None:
    from vae_automl.api import search

    path = tmp_path / "codec.yaml"
    path.write_text(CODEC_SPACE)
    result = search(path, out_dir=tmp_path / "run", show_progress=False)
    assert result.completed == 3 and result.front
    from vae_automl.study import completed_trials, open_study, RECORD_ATTR

    trials = completed_trials(open_study(result.storage, result.study_name))
    assert len(trials) == 3
    for trial in trials:
        record = trial.user_attrs[RECORD_ATTR]
        metrics = record["metrics"]
        assert metrics["rate_bytes_per_image"] >= 1 and 0 < metrics["ssim"] <= 1
        assert 0 <= metrics["recognition_accuracy"] <= 1
        assert metrics["decoder_bytes"] < metrics["size_bytes"]
    # An exported front model is a complete codec: it encodes and decodes files.
    from vae_automl.export import export_study

    folders = export_study(result.storage, result.study_name, tmp_path / "exported", formats=("safetensors",))
    assert folders
    codec = load_codec_model(folders[0])
    x = digits_splits().test[:5]
    blob, lengths = encode_images(codec, x.numpy())
    assert decode_bytes(codec, blob).shape == (5, 1, 8, 8) and min(lengths) >= 1


def test_cli_encodes_and_decodes_and_reports_refusals(model_dir: Path, images_npz: Path, tmp_path: Path,
                                                      capsys: pytest.CaptureFixture[str]) -> None:
    from vae_automl.cli import main

    out = tmp_path / "x.codec"
    assert main(["codec", "encode", str(model_dir), str(images_npz), str(out)]) == 0
    assert "bytes per image bitstream" in capsys.readouterr().out
    assert main(["codec", "decode", str(model_dir), str(out), str(tmp_path / "x.npz")]) == 0
    out.write_bytes(out.read_bytes()[:-3])
    assert main(["codec", "decode", str(model_dir), str(out), str(tmp_path / "y.npz")]) == 1
    assert "truncated" in capsys.readouterr().err and not (tmp_path / "y.npz").exists()


@pytest.mark.parametrize("postfilter_layers", [0, 3])
def test_pca_init_starts_the_mlp_codec_at_transform_coding(postfilter_layers: int) -> None:
    registry = get_registry()
    arch = registry.architectures.get("codec_mlp")
    params = {"hidden_width": 16, "latent_dim": 6, "lmbda": 0.1, "postfilter_layers": postfilter_layers}
    model = arch.build(arch.config_from_params(arch.resolve_params(params), (1, 8, 8)))
    # A post-filter starts as the identity (its last convolution is zero), so PCA init still means transform coding.
    assert (model.postfilter is None) == (postfilter_layers == 0)
    data = digits_splits()
    registry.tasks.get("codec").prepare(model, data)
    x = data.train.flatten(1).double()
    mean = x.mean(0)
    basis = torch.linalg.svd(x - mean, full_matrices=False)[2][:6]
    with torch.no_grad():
        y = model.analyze(data.test)
        projection = (data.test.flatten(1).double() - mean) @ basis.T @ basis + mean
        # Unrounded, the codec is the PCA projection; its step is high-rate theory's for lmbda.
        assert torch.allclose(model.synthesize(y).flatten(1).double(), projection, atol=1e-4)
    step = float(torch.exp(-model.gain[0].detach()))
    assert step == pytest.approx((6 / (0.1 * 255**2 * np.log(2))) ** 0.5)


def test_the_post_filter_is_trained_and_shipped_with_the_decoder(model_dir: Path) -> None:
    model = load_codec_model(model_dir).model
    assert model.config["postfilter_layers"] == 2 and model.postfilter is not None
    last = model.postfilter.net[-1]
    assert float(last.weight.detach().abs().sum()) > 0  # training moved it off its zero (identity) start
    part = model.decoder_part()
    assert any(k.startswith("postfilter.") for k in part.state_dict())
    z = torch.from_numpy(model.latents(digits_splits().test[:4])).float()
    assert torch.equal(part.synthesize(z), model.synthesize(z))


def test_the_benchmarks_byte_breakdown_adds_up_to_the_bitstreams(model_dir: Path) -> None:
    sys.path.insert(0, str(REPO))
    try:
        from benchmarks import codec_rd
    finally:
        sys.path.remove(str(REPO))
    model = load_codec_model(model_dir).model
    latents = model.latents(digits_splits().test)
    streams = model.encode_latents(latents)
    parts = codec_rd.breakdown(model, latents, streams)
    total = parts.header_bytes + parts.latent_ideal_bytes + parts.coder_overhead_bytes
    assert total == pytest.approx(np.mean([len(s) for s in streams]))
    assert parts.header_bytes == 1.0 and parts.latent_ideal_bytes > 0
    # The range coder's flush costs at most its two 32-bit words (trailing zero bytes are cut).
    assert -1.0 < parts.coder_overhead_bytes <= 8.0
    assert parts.nonzero_latents == pytest.approx(float((latents != 0).sum(1).mean()))
