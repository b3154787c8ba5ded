#!/usr/bin/env bash
# The checks only a CUDA machine can run, in one go, so a short loan of a GPU is spent on them and not on typing:
# the CUDA tests, the throughput benchmark on cuda, and a search-then-export on cuda of a plain space and of one
# whose fine-tuning re-applies pruning masks (captured in a CUDA graph) and runs k-means QAT with distillation.
#
#   tools/gpu_check.sh OUT_DIR [MNIST_DIR]
#
# Needs vae-automl installed (or on PYTHONPATH) and a torch that sees a GPU, in $PYTHON (default python3);
# run from the checkout's root; writes logs and JSON under OUT_DIR; exits 2 where torch sees no GPU.
set -u
out=${1:?usage: tools/gpu_check.sh OUT_DIR [MNIST_DIR]}
mnist=${2:-../shared/data/mnist}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1
start=$(date +%s)
step() { echo "=== $1 (+$(( $(date +%s) - start )) s)"; }
if ! "$python" -c "import sys, torch; sys.exit(0 if torch.cuda.is_available() else 1)"; then
    echo "tools/gpu_check.sh: $python's torch sees no CUDA device (set PYTHON to another interpreter?)" >&2
    exit 2
fi

step "CUDA tests"
"$python" -m pytest -q -p no:randomly -p no:cacheprovider -rs tests/test_devices.py tests/test_train.py tests/test_lr_schedule.py 2>&1 \
    | tee "$out/cuda_tests.log" | tail -4

step "throughput on cuda"
"$python" benchmarks/throughput.py --device cuda --data-dir "$mnist" --json "$out/throughput_cuda.json" 2>&1 \
    | tee "$out/throughput.log" | tail -12

spaces=$(mktemp -d)
trap 'rm -rf "$spaces"' EXIT
# The shipped quick space on cuda; then one whose compressors fine-tune (pruning masks, k-means QAT + distillation).
sed 's/^device: cpu/device: cuda/' search_spaces/quick.yaml > "$spaces/quick_cuda.yaml"
cat > "$spaces/finetune_cuda.yaml" <<'YAML'
name: finetune_cuda
dataset: {spec: digits, split: {validation: 0.1, test: 0.2, seed: 0}}
device: cuda
seed: 0
architecture: {mlp: {hidden_layers: {low: 1, high: 2}, hidden_width: {low: 16, high: 256, log: true}, latent_dim: {low: 2, high: 16, log: true}}}
training: {epochs: 10, batch_size: 64, lr: 3.0e-3}
compressors:
  - {name: magnitude_prune, params: {sparsity: {low: 0.3, high: 0.7}, finetune_epochs: 3}}
  - {name: kmeans, optional: true, params: {bits: {low: 2, high: 4}, qat_epochs: 3, distill_alpha: 0.5, qat_codebook: {choices: [fixed, lloyd]}}}
objectives: [test_elbo_nats, size_bytes]
pruner: {name: none}
trials: 8
YAML
for space in quick_cuda finetune_cuda; do
    step "search then export on cuda: $space"
    "$python" -m vae_automl.cli search "$spaces/$space.yaml" --n-trials 8 --out "$out/runs/$space" 2>&1 \
        | grep -vE '^\[' | tee "$out/search_$space.log" | grep -E 'finished|capture|rror'
    "$python" -m vae_automl.cli export --out "$out/runs/$space" 2>&1 | tee "$out/export_$space.log" | grep -cE 'verified' \
        | sed 's/$/ trials exported and verified against the search/'
done
step "done"
