#!/usr/bin/env bash
# Run the core tests on the oldest versions pyproject.toml allows, as
# scikit-learn tests its minimum dependencies: the floors there are versions a
# run of this script has passed on, not guesses.
#
#   bash tools/check_min_versions.sh            # venv in build/min-venv, then tests
#
# Downloads several GB (torch 2.10.0's wheel pulls the CUDA libraries even where
# no GPU is used). Keep MIN_PINS in step with [project] dependencies: torch 2.10
# is the first with the fixes for CVE-2025-32434 and CVE-2026-24747 in
# torch.load(weights_only=True), and torchvision 0.25.0 is the one built for it.
set -euo pipefail
cd "$(dirname "$0")/.."

MIN_PINS=(
    "torch==2.10.0"
    "torchvision==0.25.0"
    "safetensors==0.4.3"
    "scikit-learn==1.6.1"
    "numpy==1.24.4"
    "joblib==1.3.0"
)
VENV=${MIN_VENV:-build/min-venv}  # build/ is git-ignored

python3 -m venv "$VENV"
"$VENV/bin/python" -m pip install --quiet --upgrade pip
"$VENV/bin/python" -m pip install --quiet "${MIN_PINS[@]}" "pytest>=7" "hypothesis>=6.100"
# The project itself, without letting pip move any pinned version.
"$VENV/bin/python" -m pip install --quiet --no-deps -e .
"$VENV/bin/python" - <<'PY'
import joblib, numpy, safetensors, sklearn, torch, torchvision
print("minimum versions:", torch.__version__, torchvision.__version__,
      safetensors.__version__, sklearn.__version__, numpy.__version__,
      joblib.__version__)
PY
# check_class_weight_classifiers sets max_iter=1000: a thousand epochs, too
# slow for this run; class weights are tested in the project's own files.
CI=true "$VENV/bin/python" -m pytest -q -p no:cacheprovider -W ignore::UserWarning \
    tests/test_core_behaviour.py tests/test_properties.py tests/test_checkpoint.py \
    tests/test_persistence.py tests/test_hostile_files.py \
    tests/test_images.py tests/test_schedules.py tests/test_robustness.py \
    tests/test_estimator.py tests/test_backbone.py tests/test_sklearn_checks.py \
    -k "not check_class_weight_classifiers"
