#!/usr/bin/env bash
# Set up .venv (see setup.sh), then the main job: build a tiny model and the synthetic task,
# train a reward model on it from recipes/quickstart.yaml and test it on held-out pairs.
source "$(dirname "$0")/setup.sh"
run=runs/quickstart
varirm make-tiny-model --output artifacts/tiny-llama
varirm make-synthetic --output_dir artifacts/synthetic
if [ -e "$run" ]; then
  mv "$run" "$run.$(date +%Y%m%d-%H%M%S)"   # keep the earlier run; never train over it
fi
varirm fit --config recipes/quickstart.yaml --trainer.default_root_dir "$run"
varirm test --config recipes/quickstart.yaml --trainer.default_root_dir "$run" --ckpt_path "$run/checkpoints/last.ckpt" \
  --trainer.logger false
echo "quickstart done: run directory $run (config.yaml, checkpoints/, csv/version_0/metrics.csv, data_stats.json)"
