"""The built-in quantizers: grids per layer group, sizes, quality, QAT, onnxruntime's int8 grid, a search with them."""

from __future__ import annotations

import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from torch.nn.utils import parametrize

from vae_automl import packing
from vae_automl.builtin.quantization import KMeansQuantizer, Pow2Quantizer, UniformQuantizer
from vae_automl.builtin.quantization_impl import uniform_grid
from vae_automl.config import load_space_text
from vae_automl.data import SplitConfig, make_splits
from vae_automl.registry import get_registry
from vae_automl.api import search
from vae_automl.testing import make_context, tiny_model
from vae_automl.testing.compressors import TINY_ARCHITECTURES, tiny_data
from vae_automl.train import evaluate_elbo
from vae_automl.vae import VAE
from conftest import recording_fine_tune

SEED_MLP = {"hidden_layers": 1, "hidden_width": 400, "width_decay": 1.0, "latent_dim": 20,
            "activation": "relu", "likelihood": "bernoulli"}


@pytest.fixture(scope="module")
def seed_mlp_and_ctx() -> tuple[VAE, object]:
    """The untrained 784-400-20 MLP and a context with random 28x28 images (sizes do not depend on training)."""
    arch = get_registry().architectures.get("mlp")
    torch.manual_seed(0)
    model = arch.build(arch.config_from_params(SEED_MLP, (1, 28, 28)))
    images = np.random.default_rng(0).random((300, 1, 28, 28), dtype=np.float32)
    return model, make_context(make_splits(images, SplitConfig(), "cpu", spec="random"))


def test_bits_per_layer_group(seed_mlp_and_ctx: tuple[VAE, object]) -> None:
    model, ctx = seed_mlp_and_ctx
    out = UniformQuantizer().apply(model, {"bits": 8, "bits_heads": 6, "bits_decoder": 3, "calibration": "mse"}, ctx)
    bits = {name: spec["bits"] for name, spec in out.encodings.items()}
    assert bits == {"encoder.0.weight": 8, "mu.weight": 6, "logvar.weight": 6, "decoder.0.weight": 3, "decoder.2.weight": 3}
    for name, tensor in out.state_dict().items():
        if name.endswith("bias"):
            assert name not in out.encodings and torch.equal(tensor, model.state_dict()[name])


@pytest.mark.parametrize(("compressor", "params", "low", "high"), [
    (UniformQuantizer(), {"bits": 8, "calibration_samples": 64}, 3.8, 4.0),
    (UniformQuantizer(), {"bits": 4, "calibration_samples": 64}, 7.5, 8.0),
    (UniformQuantizer(), {"bits": 2, "symmetric": False, "granularity": "per_tensor", "calibration": "mse"}, 14.5, 16.0),
    (KMeansQuantizer(), {"bits": 4}, 7.7, 8.0),
    (Pow2Quantizer(), {"bits": 3, "calibration": "mse"}, 10.0, 10.7),
])
def test_size_drops_by_the_expected_ratio(seed_mlp_and_ctx: tuple[VAE, object], compressor: object,
                                          params: dict, low: float, high: float) -> None:
    """Weights are 99% of the 784-400-20 VAE: n bits cut size about 32/n, less the float32 biases and the scales."""
    model, ctx = seed_mlp_and_ctx
    out = compressor.apply(model, params, ctx)
    ratio = packing.size_bytes(model) / packing.size_bytes(out)
    assert low < ratio < high
    assert packing.size_bytes(out) * 8 > packing.theoretical_bits(out)


def test_eight_bit_post_training_keeps_elbo_within_one_percent() -> None:
    model = tiny_model("mlp")
    data = tiny_data()
    out = UniformQuantizer().apply(model, {"bits": 8}, make_context(data))
    before, after = evaluate_elbo(model, data.test), evaluate_elbo(out, data.test)
    assert abs(after - before) / before < 0.01
    assert not torch.equal(out.encoder[0].weight, model.encoder[0].weight)


def test_calibration_clips_low_bit_grids() -> None:
    """At 3 bits the min-output-error clip lies inside the weight range and lowers the layer's output error."""
    model, data = tiny_model("mlp"), tiny_data()
    ctx = make_context(data)
    clipped = UniformQuantizer().apply(model, {"bits": 3, "calibration": "output"}, ctx)
    minmax = UniformQuantizer().apply(model, {"bits": 3, "calibration": "minmax"}, ctx)
    w = model.encoder[0].weight.detach()
    scales = torch.tensor(clipped.encodings["encoder.0.weight"]["scale"])
    assert bool((scales * 3 < w.abs().amax(1) * 0.999).any())
    x = data.train[:256].flatten(1)

    def output_error(q: VAE) -> float:
        return float((x @ (q.encoder[0].weight.detach() - w).T).pow(2).sum())

    assert output_error(clipped) < output_error(minmax)


def test_qat_leaves_a_plain_vae_on_the_grid() -> None:
    model, data = tiny_model("conv"), tiny_data()
    out = UniformQuantizer().apply(model, {"bits": 2, "qat_epochs": 2}, make_context(data))
    assert not any(parametrize.is_parametrized(m) for m in out.modules())
    assert set(out.state_dict()) == set(model.state_dict())
    data_bytes = packing.serialize_model(out)  # raises if a weight is off its grid
    assert packing.serialize_model(packing.deserialize_model(data_bytes)) == data_bytes
    assert type(out) is type(model)


def test_one_bit_with_pruned_zeros_turns_on_the_sparse_mask() -> None:
    model = tiny_model("mlp")
    with torch.no_grad():
        model.encoder[0].weight[:, ::2] = 0
    out = UniformQuantizer().apply(model, {"bits": 1}, make_context(tiny_data()))
    spec = out.encodings["encoder.0.weight"]
    assert spec["sparse"] is True and spec["bits"] == 1
    assert torch.all(out.encoder[0].weight[:, ::2] == 0)
    assert set(out.encoder[0].weight[:, 1::2].abs().flatten().tolist()) <= set(map(abs, spec["scale"]))


def test_kmeans_is_seeded() -> None:
    model, ctx0, ctx1 = tiny_model("mlp"), make_context(tiny_data(), seed=0), make_context(tiny_data(), seed=1)
    params = {"bits": 3, "init": "kmeans++"}
    a = packing.serialize_model(KMeansQuantizer().apply(model, params, ctx0))
    assert a == packing.serialize_model(KMeansQuantizer().apply(model, params, ctx0))
    assert a != packing.serialize_model(KMeansQuantizer().apply(model, params, ctx1))


def test_onnxruntime_dynamic_int8_reproduces_the_grid(tmp_path: Path) -> None:
    """quantize_dynamic(per_channel=True, QInt8) on our 8-bit weights finds our scales and codes exactly."""
    onnx = pytest.importorskip("onnx")
    from onnx import TensorProto, helper, numpy_helper
    from onnxruntime.quantization import QuantType, quantize_dynamic

    out = UniformQuantizer().apply(tiny_model("mlp"), {"bits": 8, "symmetric": True}, make_context(tiny_data()))
    weight = out.encoder[0].weight.detach()
    spec = out.encodings["encoder.0.weight"]
    assert (spec["codec"], spec["bits"], spec["symmetric"], spec["axis"]) == ("uniform", 8, True, 0)
    n_out, n_in = weight.shape
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["X", "W"], ["Y"])], "layer",
        [helper.make_tensor_value_info("X", TensorProto.FLOAT, [1, n_in])],
        [helper.make_tensor_value_info("Y", TensorProto.FLOAT, [1, n_out])],
        [numpy_helper.from_array(weight.T.numpy().copy(), "W")])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), tmp_path / "f.onnx")
    quantize_dynamic(tmp_path / "f.onnx", tmp_path / "q.onnx", per_channel=True, weight_type=QuantType.QInt8)
    inits = {i.name: numpy_helper.to_array(i) for i in onnx.load(tmp_path / "q.onnx").graph.initializer}
    scale = torch.from_numpy(inits["W_scale"].copy())
    codes = torch.from_numpy(inits["W_quantized"].astype(np.int64)).T
    assert torch.equal(scale, torch.tensor(spec["scale"], dtype=torch.float32))
    assert torch.equal(codes.float() * scale[:, None], weight)
    ours, _, _ = uniform_grid(weight, 8, True, True, torch.ones(n_out), "float16")
    assert torch.equal(ours, weight)


def test_a_quantize_stage_in_a_yaml_search_runs(tmp_path: Path) -> None:
    space = load_space_text("""
name: quant-e2e
dataset: {spec: digits, split: {validation: 0.1, test: 0.2, seed: 0}}
device: cpu
architecture:
  mlp: {hidden_width: 32, latent_dim: 4}
training: {epochs: 2, batch_size: 64}
compressors:
  - choices:
      - {name: uniform, params: {bits: {low: 2, high: 8}, bits_decoder: {low: 2, high: 4}, qat_epochs: {low: 0, high: 1}}}
      - {name: kmeans, params: {bits: {low: 2, high: 4}}}
objectives: [test_elbo_nats, size_bytes]
sampler: {name: random, seed: 0}
latency: {repeats: 2, warmup: 1}
trials: 2
""", "quant-e2e.yaml")
    result = search(space, trials=2, out_dir=tmp_path, show_progress=False)
    assert result.completed == 2
    paths = sorted((tmp_path / "models").glob("trial-*.safetensors"))
    assert len(paths) == 2  # the loop below must see every trial's file
    for path in paths:
        header = packing.read_header(path.read_bytes())
        codecs = {t["spec"].get("codec") for t in header["tensors"].values()}
        assert codecs & {"uniform", "codebook"}
    sizes = [e.objectives["size_bytes"] for e in result.front]
    assert max(sizes) < packing.size_bytes(tiny_model("mlp"))


@pytest.mark.parametrize("compressor", [KMeansQuantizer(), UniformQuantizer(), Pow2Quantizer()])
@pytest.mark.parametrize("bias_bits", [3, 8])
def test_bias_bits_puts_the_biases_on_a_uniform_grid_and_stores_them_in_fewer_bytes(compressor: object, bias_bits: int) -> None:
    model = tiny_model("mlp")
    with torch.no_grad():
        model.decoder[0].bias[0] = -3.0  # the largest magnitude sets the grid: it must come back exactly
    ctx = make_context(tiny_data())
    plain = compressor.apply(model, {"bits": 4}, ctx)
    out = compressor.apply(model, {"bits": 4, "bias_bits": bias_bits}, ctx)
    biases = [name for name in out.state_dict() if name.endswith(".bias")]
    assert biases
    top = (1 << (bias_bits - 1)) - 1
    for name in biases:
        spec, before, after = out.encodings[name], model.state_dict()[name], out.state_dict()[name]
        assert (spec["codec"], spec["bits"], spec["axis"]) == ("uniform", bias_bits, None)
        # an independent oracle of the grid: steps of max|b| / top, in float16, each value within half a step
        step = float(torch.tensor(float(before.abs().max()) / top, dtype=torch.float16))
        assert spec["scale"] == [step]
        assert torch.all((after / step).round() == after / step)
        assert float((after - before).abs().max()) <= step / 2 + 1e-6
        assert len(torch.unique(after)) <= 2 * top + 1
    step = out.encodings["decoder.0.bias"]["scale"][0]
    assert float(out.decoder[0].bias.detach()[0]) == -top * step  # the largest magnitude is the grid's end
    for name, tensor in out.state_dict().items():  # the weights are those of the run without bias_bits
        if not name.endswith(".bias"):
            assert torch.equal(tensor, plain.state_dict()[name]), name
    plain.container = out.container = "compact"  # safetensors' ~60 B of JSON per part would hide the saving
    data = packing.serialize_model(out)
    assert len(data) < len(packing.serialize_model(plain))
    back = packing.deserialize_model(data)
    for name, tensor in out.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_bias_bits_out_of_range_is_refused() -> None:
    with pytest.raises(ValueError, match="bias_bits"):
        KMeansQuantizer().validate_params({"bits": 3, "bias_bits": 9})


@pytest.mark.parametrize("container", ["safetensors", "compact"])
def test_a_float8_codebook_takes_a_byte_per_entry_and_round_trips_exactly(container: str) -> None:
    model, ctx = tiny_model("mlp"), make_context(tiny_data())
    half = KMeansQuantizer().apply(model, {"bits": 3}, ctx)
    out = KMeansQuantizer().apply(model, {"bits": 3, "codebook_dtype": "float8_e4m3"}, ctx)
    layers = [name for name, spec in out.encodings.items() if spec.get("codec") == "codebook"]
    assert layers
    for name in layers:
        table = torch.tensor(out.encodings[name]["codebook"])
        assert torch.equal(table.to(torch.float8_e4m3fn).double(), table)  # every entry is a float8 value
        assert set(out.state_dict()[name].unique().tolist()) <= set(table.tolist())
    half.container = out.container = container
    data = packing.serialize_model(out)
    if container == "compact":  # the same parts but the codebooks, 8 entries x 1 byte less each (headers differ a little)
        assert len(packing.serialize_model(half)) - len(data) >= 8 * len(layers) - 8
    back = packing.deserialize_model(data)
    assert packing.serialize_model(back) == data
    for name, tensor in out.state_dict().items():
        assert torch.equal(back.state_dict()[name], tensor), name


def test_lloyd_step_moves_each_centroid_to_the_mean_of_its_values() -> None:
    from vae_automl.builtin.quantization_impl import lloyd_step

    values = torch.tensor([0.0, 1.0, 2.0, 10.0, 11.0])
    # bounds at 5 and 25: {0, 1, 2} -> 1, {10, 11} -> 10.5; the centroid at 40 has no value and stays
    assert lloyd_step(values, torch.tensor([40.0, 0.0, 10.0])).tolist() == [1.0, 10.5, 40.0]
    assert lloyd_step(torch.tensor([4.0, 6.0]), torch.tensor([5.0])).tolist() == [5.0]


def _qat_with_latent(latent: torch.Tensor, params: dict[str, object], model: VAE | None = None) -> tuple[VAE, VAE]:
    """k-means QAT of ``model`` (default: the tiny MLP) whose 'training' sets encoder.0's latent weight to
    ``latent`` and takes one step."""
    model = model if model is not None else tiny_model("mlp")
    base = make_context(tiny_data())

    def one_step(m: VAE, epochs: int, extra_loss: object = None, after_step: object = None, lr: object = None) -> VAE:
        with torch.no_grad():
            m.encoder[0].parametrizations.weight.original.copy_(latent)
        after_step(m)  # type: ignore[operator]
        return m

    ctx = make_context(tiny_data())
    ctx.fine_tune = one_step
    post = KMeansQuantizer().apply(model, {"bits": 2}, base)
    return post, KMeansQuantizer().apply(model, {"bits": 2, "qat_epochs": 1, **params}, ctx)


def test_qat_codebook_lloyd_moves_the_codebook_with_the_latent_weights() -> None:
    from vae_automl.builtin.quantization_impl import fp_codebook, lloyd_step

    model = tiny_model("mlp")
    latent = model.encoder[0].weight.detach().clone() * 0.5  # every weight halved: the centroids must follow
    post, fixed = _qat_with_latent(latent, {})
    _, lloyd = _qat_with_latent(latent, {"qat_codebook": "lloyd"})
    table = torch.tensor(post.encodings["encoder.0.weight"]["codebook"])
    assert fixed.encodings["encoder.0.weight"]["codebook"] == table.tolist()
    want = fp_codebook(lloyd_step(latent, table).float(), "float16")
    got = lloyd.encodings["encoder.0.weight"]["codebook"]
    assert got == want.double().tolist() and got != table.tolist()
    assert set(lloyd.encoder[0].weight.flatten().tolist()) <= set(got)
    data_bytes = packing.serialize_model(lloyd)  # raises if a weight is off its stored codebook
    assert packing.serialize_model(packing.deserialize_model(data_bytes)) == data_bytes


def test_qat_codebook_lloyd_leaves_pruned_weights_out_of_the_means() -> None:
    """A pruned weight stays zero and is stored by the sparse mask, not by a centroid: the Lloyd step averages
    the kept latent weights only (zeros would drag the centroid nearest 0 towards it)."""
    from vae_automl.builtin.quantization_impl import fp_codebook, lloyd_step

    model = tiny_model("mlp")
    weight = model.encoder[0].weight
    keep = torch.rand(weight.shape, generator=torch.Generator().manual_seed(0)) > 0.5
    with torch.no_grad():
        weight.mul_(keep)
    # 'training' moves the kept weights and revives the pruned ones: the step's mask puts those back to zero
    latent = torch.where(keep, weight.detach() * 0.5, torch.full_like(weight, 0.3))
    post, lloyd = _qat_with_latent(latent, {"qat_codebook": "lloyd"}, model)
    table = torch.tensor(post.encodings["encoder.0.weight"]["codebook"])
    want = fp_codebook(lloyd_step(latent[keep], table).float(), "float16")
    assert lloyd.encodings["encoder.0.weight"]["codebook"] == want.double().tolist()
    assert want.tolist() != fp_codebook(lloyd_step(latent * keep, table).float(), "float16").tolist()  # zeros would move it
    assert torch.equal(lloyd.encoder[0].weight[~keep], torch.zeros(int((~keep).sum())))


def test_distill_alpha_adds_the_teachers_logit_loss_to_qat() -> None:
    from vae_automl.classifier import logit_distillation

    registry = get_registry()
    arch = registry.architectures.get("lenet_300_100")
    torch.manual_seed(0)
    teacher = arch.build(arch.config_from_params({"width": 0.05, "activation": "relu", "num_classes": 10}, (1, 28, 28)))
    ctx = make_context(tiny_data(), teacher=teacher)
    seen = recording_fine_tune(ctx)
    KMeansQuantizer().apply(teacher, {"bits": 3, "qat_epochs": 1}, ctx)
    KMeansQuantizer().apply(teacher, {"bits": 3, "qat_epochs": 1, "distill_alpha": 2.0, "distill_temperature": 3.0}, ctx)
    assert seen[0] is None and callable(seen[1])
    x = torch.rand(5, 1, 28, 28)
    with torch.no_grad():
        assert float(seen[1](teacher, x)) == pytest.approx(0.0, abs=1e-6)
        student = arch.build(teacher.config)  # other weights: the loss is alpha x Hinton's, against the teacher
        want = 2.0 * logit_distillation(student(x), teacher(x), 3.0)
        assert float(seen[1](student, x)) == pytest.approx(float(want), rel=1e-5) and float(want) > 0
    with pytest.raises(ValueError, match="teacher"):
        KMeansQuantizer().apply(teacher, {"bits": 3, "qat_epochs": 1, "distill_alpha": 1.0}, make_context(tiny_data()))


def test_distill_alpha_on_a_vae_matches_the_teachers_posterior() -> None:
    teacher = tiny_model("mlp")
    student = KMeansQuantizer().apply(teacher, {"bits": 2}, make_context(tiny_data()))
    ctx = make_context(tiny_data(), teacher=teacher)
    losses = recording_fine_tune(ctx)
    KMeansQuantizer().apply(teacher, {"bits": 2, "qat_epochs": 1, "distill_alpha": 2.0}, ctx)
    loss = losses[0]
    x = tiny_data().train[:8]
    # The KL term vanishes for the teacher itself; the 2-bit model's posterior is farther from the teacher's.
    with torch.no_grad():
        assert float(loss(student, x)) > float(loss(teacher, x))
        # oracle: alpha x (KL(student posterior || teacher posterior) + Bernoulli NLL of the teacher's mean image
        # under the student's decoder at its posterior mean), per image, averaged over the batch
        mu_t, logvar_t = teacher.encode(x)
        mu_s, logvar_s = student.encode(x)
        kl = torch.distributions.kl_divergence(
            torch.distributions.Normal(mu_s, (0.5 * logvar_s).exp()), torch.distributions.Normal(mu_t, (0.5 * logvar_t).exp())
        ).sum(1)
        teacher_image = torch.sigmoid(teacher.decode(mu_t))
        student_image = torch.distributions.Bernoulli(logits=student.decode(mu_s), validate_args=False)
        nll = -student_image.log_prob(teacher_image).flatten(1).sum(1)
        assert float(loss(student, x)) == pytest.approx(float(2.0 * (kl + nll).mean()), rel=1e-5)
    other = tiny_model("conv")
    if other.latent_dim == teacher.latent_dim:
        other = copy.deepcopy(teacher)
        other.latent_dim += 1
    with pytest.raises(ValueError, match="latent"):
        loss(other, x)
    # a model whose latent an earlier distill stage shrank is refused before its QAT starts
    arch = get_registry().architectures.get("mlp")
    shrunk = arch.build(arch.config_from_params({**TINY_ARCHITECTURES["mlp"], "latent_dim": 3}, tiny_data().input_shape))
    with pytest.raises(ValueError, match=r"distill_alpha\) needs its latent size, but the model has 3 latent units and the teacher 4"):
        KMeansQuantizer().apply(shrunk, {"bits": 2, "qat_epochs": 1, "distill_alpha": 1.0}, ctx)
    assert len(losses) == 1
