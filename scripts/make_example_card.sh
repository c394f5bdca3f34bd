#!/usr/bin/env bash
# Makes model_cards/example_synthetic_rm.md: the variance card of the regularized RM (seed 0) from
# scripts/compare_variance.py, exported with its measured evaluation under pi0. Run after
#   python scripts/compare_variance.py --seeds 0 1 2
source "$(dirname "$0")/setup.sh"
out=artifacts/export/synthetic-rm-variance
varirm export --checkpoint results/variance/runs/reg_seed0/checkpoints/last.ckpt --output "$out" \
  --evaluations '["results/variance/eval/reg_seed0"]' --repo_id varirm/synthetic-rm-variance --overwrite true
cp "$out/README.md" model_cards/example_synthetic_rm.md
echo "card: model_cards/example_synthetic_rm.md (model: $out)"
