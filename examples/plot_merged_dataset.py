"""
==========================================
The merged digit-sum dataset, end to end
==========================================

The report's task: 40x168 grayscale images of four handwritten digits side by
side, labelled with the sum of the digits (0..36, 37 classes). This example
loads the data, splits it 80/10/10 without losing the rare sums, fine-tunes,
draws the learning curves, the confusion matrix and the most confident
mistakes, and saves the model in a folder that runs no code when loaded.

Set ``RESNETCLF_MERGED_DIR`` to the folder of ``data0.npy`` .. ``lab2.npy``
to run it on the real files with the report's recipe (pretrained ResNet50, 50
epochs: a job for a GPU). Without it, the example makes **stand-in** images
and trains a small ResNet18 from random weights for about a minute: the
workflow runs end to end, but the accuracy stays near chance, since summing
four digits takes pretrained weights or far more training than that.
"""

# %%
# The data
# --------
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.metrics import ConfusionMatrixDisplay

from resnetclf import (
    ResNetFineTuneClassifier,
    load_model,
    plot_confident_mistakes,
    plot_history,
    save_model,
    train_val_test_split,
)
from resnetclf.datasets import load_merged, make_digit_sums

# The test suite sets this variable to run every example in a few seconds.
QUICK = os.environ.get("RESNETCLF_EXAMPLES_QUICK") == "1"

data_dir = os.environ.get("RESNETCLF_MERGED_DIR")
if data_dir:
    X, y = load_merged(data_dir)
    recipe = {}  # the defaults are the report's recipe
else:
    print("RESNETCLF_MERGED_DIR is not set: STAND-IN data, ResNet18 from scratch")
    X, y = make_digit_sums(60 if QUICK else 600, random_state=0)
    recipe = dict(arch="resnet18", weights=None, max_iter=1 if QUICK else 3)
print(f"X: {X.shape} {X.dtype}, {len(np.unique(y))} distinct sums")

# %%
# Training, validation and test parts
# -----------------------------------
# Sums near 0 and 36 are rare (one image in ten thousand sums to 0), too rare
# for ``train_test_split(..., stratify=y)``.
# :func:`~resnetclf.train_val_test_split` stratifies what it can and keeps a
# class too small to share in the training part.
split = train_val_test_split(y, val_size=0.1, test_size=0.1, random_state=0)
print(split.summary())
X_test, y_test = X[split.test], y[split.test]

# %%
# Fine-tuning
# -----------
# With ``X_val`` given, nothing more is held out of the training part; the
# weights of the epoch most accurate on ``X_val`` are kept, and written to
# ``checkpoint_path`` in torchvision's layout each time they improve.
out = Path(tempfile.mkdtemp(prefix="resnetclf-merged-"))
clf = ResNetFineTuneClassifier(
    checkpoint_path=out / "resnet-step.safetensors", random_state=0, verbose=1, **recipe
)
clf.fit(X[split.train], y[split.train], X_val=X[split.val], y_val=y[split.val])
print(f"best epoch {clf.best_epoch_}: validation accuracy {clf.best_score_:.3f}")
print(f"test accuracy: {clf.score(X_test, y_test):.3f}")

# %%
# Learning curves
# ---------------
# The report's Figures 1 and 2, from ``history_``.
plot_history(clf)

# %%
# Confusion matrix
# ----------------
# 37 classes are too many to print a count in each cell; the colours show
# where the predictions go.
ConfusionMatrixDisplay.from_estimator(
    clf, X_test, y_test, include_values=False, xticks_rotation="vertical"
)

# %%
# The most confident mistakes
# ---------------------------
# The counts say which sums get confused; the images say why. Each panel shows
# a test image the model gets wrong, its true sum, the predicted sum and the
# probability the model gave it.
plot_confident_mistakes(clf, X_test, y_test, n_images=8)

# %%
# Saving and loading
# ------------------
# :func:`~resnetclf.save_model` writes one safetensors file: the weights, and
# everything else as JSON in its metadata, so loading it runs no code, unlike
# a pickle. The loaded model predicts exactly as the saved one.
folder = save_model(clf, out / "model")
restored = load_model(folder)
same = np.array_equal(restored.predict_proba(X_test), clf.predict_proba(X_test))
print(f"saved to {folder}: {sorted(p.name for p in folder.iterdir())}")
print(f"the loaded model gives the same probabilities: {same}")
plt.show()

# %%
# The same from the command line
# ------------------------------
# ``resnetclf train --data-dir DIR --out OUT`` runs this workflow (with the
# report's recipe by default) and writes the figures, ``metrics.json`` and the
# saved model to ``OUT``; ``resnetclf predict --model OUT/model ...`` uses it.
