"""
===============================================
A ResNet learns handwritten digits in seconds
===============================================

The quickest way to see :class:`~resnetclf.ResNetFineTuneClassifier` learn:
a ResNet18 trained **from random weights** (no download, no GPU) on
scikit-learn's bundled 8x8 images of handwritten digits. Ten epochs take
about 20 seconds on two idle CPU cores and reach a test accuracy above 0.9,
where guessing scores 0.1.
"""

# %%
# The data
# --------
# ``load_digits`` holds 1,797 grayscale images of 8x8 pixels with values
# 0..16. The estimator takes float images as already scaled to [0, 1] (only
# ``uint8`` images are divided by 255), so we divide by 16; it warns when
# float images go above 1. A quarter of the images is kept aside for testing.
import os

import matplotlib.pyplot as plt
from sklearn.datasets import load_digits
from sklearn.metrics import ConfusionMatrixDisplay
from sklearn.model_selection import train_test_split

from resnetclf import ResNetFineTuneClassifier, plot_history

# The test suite sets this variable to run every example in a few seconds.
QUICK = os.environ.get("RESNETCLF_EXAMPLES_QUICK") == "1"

digits = load_digits()
X = digits.images / 16.0  # (1797, 8, 8) floats in [0, 1]
y = digits.target
X_train, X_test, y_train, y_test = train_test_split(
    X, y, test_size=0.25, stratify=y, random_state=0
)
print(f"{len(X_train)} training and {len(X_test)} test images of {X.shape[1:]}")

# %%
# Train a ResNet18 from scratch
# -----------------------------
# ``weights=None`` starts from random weights, so nothing is downloaded.
# ``fit`` holds 10% of the training images out (stratified) and keeps the
# weights of the epoch that scores best on them.
clf = ResNetFineTuneClassifier(
    arch="resnet18",
    weights=None,
    max_iter=1 if QUICK else 10,
    random_state=0,
)
clf.fit(X_train, y_train)
print(f"best epoch {clf.best_epoch_}, validation accuracy {clf.best_score_:.3f}")
print(f"test accuracy: {clf.score(X_test, y_test):.3f}")

# %%
# Learning curves
# ---------------
# :func:`~resnetclf.plot_history` draws the loss and accuracy of each epoch
# from ``history_``; the dotted line marks the epoch whose weights were kept.
plot_history(clf, title="ResNet18 from scratch on 8x8 digits")

# %%
# Which digits get confused
# -------------------------
# The estimator is an ordinary scikit-learn classifier, so scikit-learn's
# displays work on it directly.
ConfusionMatrixDisplay.from_estimator(clf, X_test, y_test, colorbar=False)
plt.show()

# %%
# Going further
# -------------
# The same estimator fine-tunes *pretrained* ImageNet weights (the default,
# ``weights="DEFAULT"``) on larger images, such as the merged digit-sum
# dataset of the next example.
