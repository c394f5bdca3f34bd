#!/usr/bin/env bash
# Makes the example variance cards in model_cards/ from the committed verification report
# (results/verify: the synthetic world, 5 seeds). Run after
#   varirm verify --config recipes/verify/synthetic.yaml --config recipes/verify/regularizers.yaml \
#     --seeds '[0, 1, 2, 3, 4]' --output_dir results/verify
#  - example_synthetic_rm.md: the 100%-on-policy BT RM (seed 0) with its evaluation under pi0;
#  - example_verified_rm.md: the regularized RM `bt_reg` (seed 0) with its evaluation under pi0 and
#    the verification result.
source "$(dirname "$0")/setup.sh"
out=artifacts/export/synthetic-rm-onpolicy
varirm export --checkpoint results/verify/rms/onpolicy_100/seed0 --output "$out" \
  --evaluations '["results/verify/eval/onpolicy_100/seed0"]' --repo_id varirm/synthetic-rm-onpolicy --overwrite true
cp "$out/README.md" model_cards/example_synthetic_rm.md
out=artifacts/export/synthetic-rm-verified
varirm export --checkpoint results/verify/rms/bt_reg/seed0 --output "$out" \
  --evaluations '["results/verify/eval/bt_reg/seed0"]' --verification results/verify \
  --repo_id varirm/synthetic-rm-verified --overwrite true
cp "$out/README.md" model_cards/example_verified_rm.md
echo "cards: model_cards/example_synthetic_rm.md, model_cards/example_verified_rm.md"
# example_teacher_rm.md: the Plackett-Luce RM on a 10% label budget (seed 0) from the objectives study
# (results/objectives: harm-aware accuracy and the teacher score on the card). Run after
#   varirm verify --config recipes/verify/synthetic.yaml --config recipes/verify/objectives.yaml \
#     --seeds '[0, 1, 2, 3, 4, 5, 6, 7]' --output_dir results/objectives
out=artifacts/export/synthetic-rm-listwise
varirm export --checkpoint results/objectives/rms/listwise_200/seed0 --output "$out" \
  --evaluations '["results/objectives/eval/listwise_200/seed0"]' --verification results/objectives \
  --repo_id varirm/synthetic-rm-listwise --overwrite true
cp "$out/README.md" model_cards/example_teacher_rm.md
echo "card: model_cards/example_teacher_rm.md"
