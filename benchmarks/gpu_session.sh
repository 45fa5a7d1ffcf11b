#!/usr/bin/env bash
# The GPU checks, in one go on a machine with CUDA, most telling first: the
# CUDA-graph tests; ResNet50 at 40x168 in bf16 against the report-style loop,
# the model-step bound and the library without CUDA graphs (speed, and GPU
# memory); predict against a plain eval loop; the memory fit and predict add;
# the other CUDA tests. Logs and JSON go to OUT_DIR.
#
#   bash benchmarks/gpu_session.sh OUT_DIR
#
# SAMPLES (default 4096) sets the images of each timed fit; VARIANTS the
# library variants fitted besides it (bench_fit.py --variants; default
# no_cuda_graphs). PART=recipes runs instead the fine-tuning recipes at the
# report's scale (gpu_recipes.sh, about 10 minutes: one device session holds
# one part or the other, not both).
set -uo pipefail
out=${1:?usage: bash benchmarks/gpu_session.sh OUT_DIR}
if [[ ${PART:-speed} == recipes ]]; then
    exec bash "$(dirname "$0")/gpu_recipes.sh" "$out"
fi
samples=${SAMPLES:-4096}
variants=${VARIANTS:-no_cuda_graphs}
python=${PYTHON:-python3}
mkdir -p "$out"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
pytest=("$python" -m pytest -q -p no:cacheprovider -rs)

{
    nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv
    "$python" -c "import torch, torchvision, sklearn, numpy
print('torch', torch.__version__, 'torchvision', torchvision.__version__,
      'scikit-learn', sklearn.__version__, 'numpy', numpy.__version__)"
} 2>&1 | tee "$out/env.txt"

timeout 120 "${pytest[@]}" tests/test_cuda.py -k graph 2>&1 | tee "$out/test_cuda_graphs.txt"

timeout 300 "$python" benchmarks/bench_fit.py --device cuda --arch resnet50 \
    --height 40 --width 168 --batch-size 64 --n-samples "$samples" --epochs 3 \
    --repeats 2 --step-iters 30 --variants "$variants" \
    --json "$out/fit_resnet50_40x168_cuda.json" 2>&1 | tee "$out/bench_fit.txt"

timeout 120 "$python" benchmarks/bench_predict.py --device cuda --arch resnet50 \
    --height 40 --width 168 --batch-size 64 --predict-samples "$samples" \
    --repeats 2 \
    --json "$out/predict_resnet50_40x168_cuda.json" 2>&1 | tee "$out/bench_predict.txt"

timeout 180 "$python" benchmarks/bench_memory.py --device cuda --height 40 \
    --width 168 --json "$out/memory_40x168_cuda.json" 2>&1 | tee "$out/bench_memory.txt"

timeout 240 "${pytest[@]}" tests/test_cuda.py -k "not graph" 2>&1 | tee "$out/test_cuda.txt"
