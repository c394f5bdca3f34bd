#!/usr/bin/env bash
# Set up .venv (see setup.sh), then the main job, ending with what it found in plain words:
#  1. build the world: a tiny model, the synthetic task (gold reward known; strong off-policy pairs),
#     a weak pi0 by SFT, pi0 samples;
#  2. overview, one seed: train six RMs (0-100% on-policy pairs; BT + variance regularizer), take the
#     gold reward and two perfectly accurate low-variance squashings of it; evaluate each under pi0;
#     RLOO from pi0 against each, gold reward measured on held-out prompts; report (one seed decides
#     nothing: its checks stay INCONCLUSIVE);
#  3. decisive, four seeds of RLOO only: Theorem 1, gold against the paper's perfectly accurate
#     low-variance reward (recipes/verify/theorem1.yaml), with a 95% paired interval;
#  4. export the regularized RM with its variance model card and verification result;
#  5. the findings of 2 and 3, and of the committed 8-seed run of the overview's RMs.
# Time: see the README's first section (measured, with the CPU).
source "$(dirname "$0")/setup.sh"
out=runs/verify_synthetic
thm=runs/theorem1
for d in "$out" "$thm"; do   # keep earlier runs; never write over them
  if [ -e "$d" ]; then mv "$d" "$d.$(date +%Y%m%d-%H%M%S)"; fi
done
start=$SECONDS

varirm verify --config recipes/verify/synthetic.yaml --output_dir "$out"
varirm verify --config recipes/verify/theorem1.yaml --output_dir "$thm"
varirm export --checkpoint "$out/rms/bt_reg/seed0" --output "$out/export_bt_reg" \
  --evaluations "[\"$out/eval/bt_reg/seed0\"]" --verification "$out"

echo
echo "== What the demo found ($(( SECONDS - start )) s after set-up) =="
echo "1. Decisive: Theorem 1, RLOO only, several seeds (PASS/MISS only when the 95% interval is clear of 1)."
echo "2. Overview of the trained RMs, one seed: one seed decides nothing."
echo "3. The same RMs over 8 seeds (committed: results/verify_two_policies, RLOO from pi0)."
varirm findings --reports "[\"$thm\", \"$out\", \"results/verify_two_policies\"]" --policy pi0
echo
echo "Theorem 1 report and plot: $thm/report.md, $thm/gold_curves.png (gold per half of the prompts, 95% bands)"
echo "overview report:           $out/report.md (gold_curves.png, variance_vs_gain.png, accuracy_vs_gain.png)"
echo "exported RM + card:        $out/export_bt_reg/README.md"
