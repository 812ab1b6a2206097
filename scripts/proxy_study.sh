#!/usr/bin/env bash
# The proxy study: the paper's comparison of dynamic convolutions, run on a CPU (no ImageNet or GPU here), to see
# whether the ranking of static, CondConv, DyConv and ODConv holds on a small problem.
#
#     scripts/proxy_study.sh [OUT] [Hydra overrides for every run ...]
#
# Trains ResNet18 static, CondConv (8x), DyConv (4x), ODConv (1x) and ODConv (4x) on the embedded digits over
# three seeds with the demo's schedule (configs/trainer/demo.yaml, optim/demo.yaml, sched/cosine.yaml; for ODConv,
# the attention norm of configs/model/demo.yaml) plus the study's recipe below (lr warm-up, precise BN, the
# attention temperature annealed over the first half of training), then writes the report grouped over
# seeds to OUT/report/results.{md,html}. MODELS may add od1x_bn: ODConv 1x with the released attention BatchNorm, and
# the family's later members: kw1x, kw4x (KernelWarehouse 1x, 4x), dcd (DCD) and fdconv (FDConv, the static
# ResNet18 converted; models/fd.py).
#
# Each run is one `python train.py` on one thread in OUT/<label>-seed<seed>; JOBS of them run at once (default 2,
# one per core of the 2-core machine this was measured on), the most expensive first. A run whose directory
# already exists resumes from its last checkpoint (a finished one ends at once), so a stopped study is continued
# by running the same command again. OUT defaults to runs/proxy_study.
#
# Environment: SEEDS (default 0,1,2), MODELS (labels below; default the five above), JOBS, PYTHON (default python).
set -euo pipefail

repo=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
out=${1:-runs/proxy_study}
shift $(( $# > 0 ? 1 : 0 ))
python=${PYTHON:-python}
seeds=${SEEDS:-0,1,2}
models=${MODELS:-condconv8x,od4x,dyconv4x,static,od1x}
jobs=${JOBS:-2}

# The model options carry the paper's temperature schedule (30 -> 1 over 10 of 100 epochs, linear in T). The study
# anneals the attention temperature of every member that has one (ODConv, DyConv) 30 -> 1 over the first half of the
# demo's epochs, linear in 1/T (model.temperature_shape=reciprocal): at temperature 1 from the first step a new
# network's kernel attention is already near one-hot and the K = 4 members sat near chance for epochs, and the paper's
# ramp, linear in T, squeezed into the demo moves 1/T from 0.25 to 1 in its last tenth, where both K = 4 members
# collapsed (92 -> 44%). docs/training.md, "What makes the K = 4 members unstable".
# ODConv takes the demo's attention norm; od1x_bn is ODConv 1x with the released attention BatchNorm.
# KernelWarehouse's tau (the weight of the initial cell assignment, 1 -> 0) is a mixing weight, not a softmax
# temperature; it takes the same length: 1 -> 0 over the first half of the demo's epochs, linear as released. Its
# released length scaled to the demo (20 of 300 epochs -> 0.8 of 12, 18 steps) left KW 1x at 9-21% top-1 for five
# epochs, its training loss rising once tau reached 0 (docs/training.md): the attention takes over before it has
# learned anything, as ODConv's softmax did at temperature 1.
read -r temperature anneal norm kw_tau < <("$python" -c 'import sys, yaml
m, trainer = (yaml.safe_load(open(p)) for p in sys.argv[1:])
print("model.temperature_init=%s,model.temperature_epochs=%s" % (m["temperature_init"], m["temperature_epochs"]),
      "model.temperature_init=30,model.temperature_epochs=%g,model.temperature_shape=reciprocal" % (trainer["epochs"] / 2),
      "model.attention_norm=%s" % m.get("attention_norm", "batch"),
      "model.temperature_epochs=%g" % (trainer["epochs"] / 2))' \
  "$repo/configs/model/demo.yaml" "$repo/configs/trainer/demo.yaml")

# The study's recipe, the same for every model (static included): a linear lr warm-up over the first 2 of the 12
# epochs (the K = 4 models' training loss rose above chance in the first epoch at the full lr, and their outcome
# depended on float rounding), and precise BN: before each evaluation every BatchNorm's statistics are recomputed on
# 8 training batches, so an evaluation measures the network trained, not moving averages that lag it (DyConv 4x's
# eval-mode validation loss was 173 after epoch 1 against 2.7 with recalibrated statistics). docs/training.md.
recipe="sched.warmup_epochs=2 trainer.precise_bn_batches=8"

declare -A option=(
  [static]="model=resnet18"
  [condconv8x]="model=condconv_resnet18"
  [dyconv4x]="model=dyconv_resnet18"
  [od1x]="model=resnet18_od $norm"
  [od4x]="model=resnet18_od4x $norm"
  [od1x_bn]="model=resnet18_od model.attention_norm=batch"
  [kw1x]="model=kw_resnet18"
  [kw4x]="model=kw_resnet18_4x"
  [dcd]="model=dcd_resnet18"
  [fdconv]="model=fd_resnet18"
)
# Each label's temperature overrides: the study's annealing for ODConv and DyConv; KernelWarehouse's tau over the
# same half of the run; none for DCD and FDConv, which have no temperature (train.py refuses temperature keys for them). The
# static and CondConv rows, which have no temperature, were measured with the demo's keys, which nothing in them
# reads; they keep them so their runs stay the same configuration.
declare -A schedule=(
  [static]="${temperature//,/ }" [condconv8x]="${temperature//,/ }" [dyconv4x]="${anneal//,/ }"
  [od1x]="${anneal//,/ }" [od4x]="${anneal//,/ }" [od1x_bn]="${anneal//,/ }"
  [kw1x]="$kw_tau" [kw4x]="$kw_tau" [dcd]="" [fdconv]=""
)

mkdir -p "$out"
list="$out/jobs.txt"
: > "$list"
for seed in ${seeds//,/ }; do
  for label in ${models//,/ }; do
    [[ -n "${option[$label]:-}" ]] || { echo "error: MODELS: unknown label '$label' (one of ${!option[*]})" >&2; exit 2; }
    # One line per run: its directory, then its overrides (the study's, the model's, the caller's last, so that a
    # caller's value wins over the study's: e.g. model.temperature_epochs=4 for another temperature schedule).
    # No trailing blank: xargs -L would join the next line to this one.
    [[ -v "schedule[$label]" ]] || { echo "error: proxy_study.sh: label '$label' has no temperature entry" >&2; exit 2; }
    line="paths.run_dir=$out/$label-seed$seed trainer.seed=$seed trainer.threads=1 run_name=proxy_study $recipe ${schedule[$label]:+${schedule[$label]} }${option[$label]}"
    if (( $# > 0 )); then line+=" $*"; fi
    printf '%s\n' "$line" >> "$list"
  done
done

echo "proxy study: $(wc -l < "$list") runs, $jobs at a time, into $out"
# Each line's words are the arguments of one train.py (overrides must not contain spaces).
export OMP_NUM_THREADS=1
xargs -P "$jobs" -L 1 "$python" "$repo/train.py" < "$list" > "$out/train.log" 2>&1 \
  || { echo "error: a run failed; see $out/train.log" >&2; exit 1; }
"$python" "$repo/scripts/report.py" "$out" --out "$out/report" \
  --title "Proxy study: ResNet18 on the digits (${models//,/, })"
