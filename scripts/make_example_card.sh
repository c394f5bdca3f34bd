#!/usr/bin/env bash
# Makes the example variance cards in model_cards/ from the committed verification report
# (results/verify: the synthetic world, 5 seeds). Run after
#   varirm verify --config recipes/verify/synthetic.yaml --config recipes/verify/regularizers.yaml \
#     --seeds '[0, 1, 2, 3, 4]' --output_dir results/verify
#  - example_synthetic_rm.md: the 100%-on-policy BT RM (seed 0) with its evaluation under pi0;
#  - example_verified_rm.md: the regularized RM `bt_reg` (seed 0) with its evaluation under pi0 and
#    the verification result.
source "$(dirname "$0")/setup.sh"

# card REPORT_DIR RM NAME CARD [export arguments...]: export seed 0 of RM from a verification's
# directory with its evaluation under the policy, copy the card to model_cards/CARD
card() {
  local report=$1 rm=$2 name=$3 target=$4 out=artifacts/export/$3
  shift 4
  varirm export --checkpoint "$report/rms/$rm/seed0" --output "$out" \
    --evaluations "[\"$report/eval/$rm/seed0\"]" --repo_id "varirm/$name" --overwrite true "$@"
  cp "$out/README.md" "model_cards/$target"
  echo "card: model_cards/$target"
}

card results/verify onpolicy_100 synthetic-rm-onpolicy example_synthetic_rm.md
card results/verify bt_reg synthetic-rm-verified example_verified_rm.md --verification results/verify
# example_teacher_rm.md: the Plackett-Luce RM on a 10% label budget (seed 0) from the objectives study
# (results/objectives: harm-aware accuracy and the teacher score on the card). Run after
#   varirm verify --config recipes/verify/synthetic.yaml --config recipes/verify/objectives.yaml \
#     --seeds '[0, 1, 2, 3, 4, 5, 6, 7]' --output_dir results/objectives
card results/objectives listwise_200 synthetic-rm-listwise example_teacher_rm.md --verification results/objectives
