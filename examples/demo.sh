#!/usr/bin/env bash
# The main job until `modelsoup reproduce` lands: a tiny sweep of fine-tunes, then every
# recipe and baseline on it. Usage: bash examples/demo.sh [OUTDIR]   (default runs/demo)
set -euo pipefail
out=${1:-runs/demo}
rm -rf "$out/run"  # the sweep is retrained below, so an old journal would not match it
python examples/tiny_sweep.py "$out"
ev=(--model examples/tiny_sweep.py:model --data examples/tiny_sweep.py:data)
modelsoup uniform "$out"/ft*.safetensors -o "$out/uniform.safetensors" --force
# The baselines first: they cache every ingredient's logits on every split, so the
# greedy soup's scoring pass then reads no checkpoint.
modelsoup ensemble "$out"/ft*.safetensors "${ev[@]}" --run-dir "$out/run"
modelsoup greedy "$out"/ft*.safetensors -o "$out/greedy.safetensors" "${ev[@]}" \
    --run-dir "$out/run" --force
modelsoup inspect "$out"/ft*.safetensors "$out/greedy.safetensors" \
    --base "$out/base.safetensors" -q
modelsoup learned "$out"/ft*.safetensors -o "$out/learned.safetensors" "${ev[@]}" --force -q
modelsoup model-stock "$out"/ft*.safetensors --base "$out/base.safetensors" \
    -o "$out/model_stock.safetensors" --force -q
modelsoup wiseft "$out/base.safetensors" "$out/greedy.safetensors" \
    -o "$out/wiseft.safetensors" "${ev[@]}" --force -q
