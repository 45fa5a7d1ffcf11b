#!/usr/bin/env bash
# Fine-tuning recipes at the report's scale, on a lent GPU:
# four-digit sums at 40x168 (37 classes), 30,000 images, 30 epochs, one seed
# per recipe, ResNet18 then ResNet50; from a stand-in backbone pretrained on
# the device at a matching size (single digits of the source half at 40x40),
# and from random initialisation at the same budget. `PART=recipes bash
# benchmarks/gpu_session.sh OUT_DIR` runs it; logs and JSON go to OUT_DIR.
#
#   bash benchmarks/gpu_recipes.sh OUT_DIR
#
# Sized for about 10 minutes of an H200 (benchmarks/results/
# resnet50_40x168_h200_bf16.json: the library fits ResNet50 at about 11,400
# images/s there, so one 30-epoch fit of 24,000 training images takes about
# a minute). The report-style loop ran at about 1,100 images/s on that GPU
# (per-sample transforms on one CPU core): 30 epochs of it take about 11
# minutes a network, more than a session's device time, so it runs only
# with REPORT_LOOP=1.
#
# SAMPLES (30000), EPOCHS (30), ARCHS ("resnet18 resnet50"), BEST (the methods
# of the "best" recipe, chosen on the CPU runs' validation: the cosine
# schedule, chosen on both tasks at 600 images, docs/benchmarks.md),
# STANDIN_SAMPLES (20000), STANDIN_EPOCHS (8), DEVICE (cuda), BATCH (64),
# RUN_TIMEOUT (seconds per network, 300).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_recipes.sh OUT_DIR}
samples=${SAMPLES:-30000}
epochs=${EPOCHS:-30}
archs=${ARCHS:-resnet18 resnet50}
best=${BEST:-lr_schedule=cosine}
standin_samples=${STANDIN_SAMPLES:-20000}
standin_epochs=${STANDIN_EPOCHS:-8}
device=${DEVICE:-cuda}
batch=${BATCH:-64}
run_timeout=${RUN_TIMEOUT:-300}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

recipes="defaults,best,scratch:defaults"
if [[ ${REPORT_LOOP:-0} == 1 ]]; then
    recipes="report_loop,$recipes,scratch:report_loop"
fi

for arch in $archs; do
    timeout "$run_timeout" "$python" benchmarks/bench_recipes.py --task sums \
        --arch "$arch" --init standin --device "$device" --seeds 1 \
        --n-samples "$samples" --epochs "$epochs" --batch-size "$batch" \
        --standin-samples "$standin_samples" --standin-epochs "$standin_epochs" \
        --standin-cache "$out/standin" --recipes "$recipes" --best "$best" \
        --json "$out/recipes_${arch}_sums_40x168_${device}.json" \
        2>&1 | tee "$out/recipes_${arch}.txt"
done
