#!/usr/bin/env bash
# The proxy study (issue 11, item 4): the paper's comparison of dynamic convolutions, run on a CPU.
#
#     scripts/proxy_study.sh [OUT] [Hydra overrides for every run ...]
#
# Trains static, CondConv (8x), DyConv (4x), ODConv (1x) and ODConv (4x) ResNet18 on the embedded digits over three
# seeds with the demo's schedule (configs/trainer/demo.yaml, optim/demo.yaml, sched/cosine.yaml and the temperature
# of configs/model/demo.yaml), one Hydra multirun after the other in this process, then writes the report grouped
# over seeds to OUT/report/results.{md,html}. OUT defaults to runs/proxy_study; it must not hold an older study,
# whose runs the report would group with the new ones.
#
# Environment: SEEDS (default 0,1,2), MODELS (configs/model options, default the five above), PYTHON (default
# python). Seeds form the outer loop, so a study stopped early holds complete seeds of every model.
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-runs/proxy_study}
shift $(( $# > 0 ? 1 : 0 ))
python=${PYTHON:-python}
seeds=${SEEDS:-0,1,2}
models=${MODELS:-resnet18,condconv_resnet18,dyconv_resnet18,resnet18_od,resnet18_od4x}

# The model options carry the paper's temperature schedule (10 of 100 epochs); every model here takes the demo's.
temperature=$("$python" -c 'import sys, yaml; m = yaml.safe_load(open(sys.argv[1]))
print("model.temperature_init=%s model.temperature_epochs=%s" % (m["temperature_init"], m["temperature_epochs"]))' \
  "$repo/configs/model/demo.yaml")

# shellcheck disable=SC2086  # $temperature is two overrides
"$python" "$repo/train.py" -m "trainer.seed=$seeds" "model=$models" $temperature run_name=proxy_study \
  "hydra.sweep.dir=$out" "$@"
"$python" "$repo/scripts/report.py" "$out" --out "$out/report" \
  --title "Proxy study: ResNet18 on the digits (static, CondConv 8x, DyConv 4x, ODConv 1x/4x)"
