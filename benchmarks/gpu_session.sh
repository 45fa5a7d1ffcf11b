#!/usr/bin/env bash
# The GPU checks, in one go on a machine with CUDA: the CUDA tests, ResNet50 at
# 40x168 in bf16 against the report-style loop and the model-step bound, and
# what each CUDA means of fit is worth. Logs and JSON go to OUT_DIR.
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# SAMPLES (default 4096) sets the images of each timed fit.
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR}
samples=${SAMPLES:-4096}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$python" -c "import torch, torchvision, sklearn, numpy
print('torch', torch.__version__, 'torchvision', torchvision.__version__,
      'scikit-learn', sklearn.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$out/env.txt"

timeout 300 "$python" benchmarks/bench_fit.py --device cuda --arch resnet50 \
    --height 40 --width 168 --batch-size 64 --n-samples "$samples" --epochs 3 \
    --repeats 2 --step-iters 30 --predict-samples "$samples" \
    --json "$out/resnet50_40x168_cuda.json" 2>&1 | tee "$out/bench_fit.txt"

timeout 180 "$python" -m pytest -q -p no:cacheprovider -rs tests/test_cuda.py \
    2>&1 | tee "$out/test_cuda.txt"

timeout 240 "$python" benchmarks/bench_means.py --device cuda --arch resnet50 \
    --height 40 --width 168 --n-samples "$samples" --epochs 3 \
    --json "$out/means_resnet50_40x168_cuda.json" 2>&1 | tee "$out/bench_means.txt"
