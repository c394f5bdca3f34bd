#!/usr/bin/env bash
# Set up .venv (see setup.sh), then the main job on the synthetic task (CPU, about 5 minutes):
#  1. build a tiny model and the synthetic task (gold reward known);
#  2. train a reward model from recipes/quickstart.yaml and test it on held-out pairs;
#  3. SFT the fixed policy pi0 and sample from it;
#  4. plain BT vs BT + variance regularizer (one seed), each evaluated under pi0;
#  5. export the regularized RM with its variance model card.
source "$(dirname "$0")/setup.sh"
stamp=$(date +%Y%m%d-%H%M%S)
for dir in runs/quickstart runs/demo_variance; do
  if [ -e "$dir" ]; then mv "$dir" "$dir.$stamp"; fi   # keep earlier runs; never train over them
done
varirm make-tiny-model --output artifacts/tiny-llama
varirm make-synthetic --output_dir artifacts/synthetic

run=runs/quickstart
varirm fit --config recipes/quickstart.yaml --trainer.default_root_dir "$run"
varirm test --config "$run/config.yaml" --ckpt_path "$run/checkpoints/last.ckpt" --trainer.logger false

rm -rf runs/sft_synthetic artifacts/pi0 artifacts/samples
varirm sft --config recipes/sft_synthetic.yaml
python scripts/compare_variance.py --seeds 0 --out runs/demo_variance   # samples pi0, trains, evaluates

varirm export --checkpoint runs/demo_variance/runs/reg_seed0 --output runs/demo_variance/export \
  --evaluations '["runs/demo_variance/eval/reg_seed0"]' --overwrite true
echo
echo "quickstart RM:     $run (config.yaml, checkpoints/, csv/version_0/metrics.csv, data_stats.json)"
echo "variance results:  runs/demo_variance/variance_comparison.md (evaluation plots in runs/demo_variance/eval/)"
echo "exported RM+card:  runs/demo_variance/export/README.md"
