#!/usr/bin/env bash
# Wheels for the GPU machine, which reaches no package index: the locked versions (requirements.lock, hashes
# checked) of what varirm needs and its image lacks or holds at another version, for its CPython 3.12. They go to
# .whl/ (git-ignored), which the device tool carries (carry: [".whl"]) and scripts/gpu_check.sh installs from.
# The image's own torch (a CUDA build), Lightning, torchmetrics, tokenizers, safetensors, numpy, pandas and pyarrow
# are used as they are; so the GPU check runs varirm's tested set except for those (gpu_check's env part lists the
# versions it ran with). The device tool carries at most 64 MiB with the working tree: this prints the total.
set -euo pipefail
cd "$(dirname "$0")/.."
carry="bitsandbytes transformers huggingface-hub httpx2 httpcore2 truststore peft datasets dill multiprocess
       jsonargparse docstring-parser typeshed-client"
requirements=$(mktemp); trap 'rm -f "$requirements"' EXIT
for name in $carry; do  # each package's entry of the lock: the pin and its hashes
  awk -v name="$name" 'tolower($0) ~ "^"name"==" {on=1; print; next} on && /^ +--hash/ {print; next} {on=0}' \
    requirements.lock >> "$requirements"
done
rm -rf .whl && mkdir .whl
platforms=""
for p in manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_24_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64; do
  platforms="$platforms --platform $p"
done
log=$(mktemp)
if ! python3 -m pip download -q --no-deps --require-hashes --only-binary=:all: --python-version 3.12 --implementation cp \
    $platforms -d .whl -r "$requirements" > "$log" 2>&1; then
  grep -v "^WARNING: Location" "$log" >&2; rm -f "$log"
  echo "gpu_wheels: pip download failed; .whl/ is incomplete" >&2; exit 1
fi
rm -f "$log"
ls .whl | sed 's/^/  /'
wanted=$(echo $carry | wc -w)
if [ "$(ls .whl | wc -l)" -ne "$wanted" ]; then echo "gpu_wheels: expected $wanted wheels" >&2; exit 1; fi
echo "gpu_wheels: $(ls .whl | wc -l) wheels, $(du -sm .whl | cut -f1) MiB; with the working tree $(( $(du -sm .whl | cut -f1) + $(git ls-files -z | xargs -0 du -cm 2>/dev/null | tail -1 | cut -f1) )) MiB of the 64 the device tool carries"
