"""
=====================================================
Cross-validating a preprocessing + ResNet pipeline
=====================================================

:class:`~resnetclf.ResNetFineTuneClassifier` is a scikit-learn classifier, so
it can be the last step of a :class:`~sklearn.pipeline.Pipeline` and be
scored by :func:`~sklearn.model_selection.cross_validate` like any other
model. Here the images arrive as flat rows of pixels, as a table would hand
them on, and the classifier is told the image shape behind each row.
"""

# %%
# Flat rows of pixels
# -------------------
# ``load_digits(return_X_y=True)`` gives each 8x8 image as a row of 64 values
# in 0..16. We keep 900 images so that three folds train in about a minute.
import os

import numpy as np
from sklearn.datasets import load_digits
from sklearn.dummy import DummyClassifier
from sklearn.model_selection import StratifiedKFold, cross_validate
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import FunctionTransformer

from resnetclf import ResNetFineTuneClassifier

# The test suite sets this variable to run every example in a few seconds.
QUICK = os.environ.get("RESNETCLF_EXAMPLES_QUICK") == "1"

X, y = load_digits(return_X_y=True)
X, y = X[:900], y[:900]
print(f"X: {X.shape} rows of pixels, values {X.min():g}..{X.max():g}")

# %%
# The pipeline
# ------------
# A :class:`~sklearn.preprocessing.FunctionTransformer` scales the rows to
# [0, 1] (float images are taken as already in that range), and
# ``image_shape=(8, 8)`` tells the classifier how to read each row.
# ``validation_fraction=0`` trains on every image of the fold and keeps the
# last epoch: the number of epochs is fixed in advance.


def scale_to_unit(X):
    return X / 16.0


pipeline = make_pipeline(
    FunctionTransformer(scale_to_unit),
    ResNetFineTuneClassifier(
        arch="resnet18",
        weights=None,
        image_shape=(8, 8),
        max_iter=1 if QUICK else 6,
        validation_fraction=0,
        random_state=0,
    ),
)

# %%
# Three folds
# -----------
# Each fold fine-tunes its own copy of the pipeline (a fresh ResNet18) on two
# thirds of the images and scores it on the rest. The same folds scored by a
# most-frequent-class baseline show what guessing gets.
cv = StratifiedKFold(n_splits=3, shuffle=True, random_state=0)
resnet = cross_validate(pipeline, X, y, cv=cv, return_train_score=True)
baseline = cross_validate(DummyClassifier(), X, y, cv=cv)

for fold, (train, test) in enumerate(
    zip(resnet["train_score"], resnet["test_score"]), start=1
):
    print(f"fold {fold}: train accuracy {train:.3f}, test accuracy {test:.3f}")
print(
    f"ResNet18: {np.mean(resnet['test_score']):.3f} "
    f"+/- {np.std(resnet['test_score']):.3f} "
    f"({np.mean(resnet['fit_time']):.0f} s per fit)"
)
print(f"most frequent class: {np.mean(baseline['test_score']):.3f}")

# %%
# Running the folds in parallel
# -----------------------------
# ``cross_validate(..., n_jobs=2)`` fits two folds at once in worker
# processes; joblib gives each worker its share of the CPU threads, so the
# fits do not compete for cores. See the parallel model selection page of the
# documentation for GPUs and Dask clusters.
