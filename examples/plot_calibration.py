"""
=====================================================
Calibrated probabilities: temperature scaling on top
=====================================================

A network's probabilities need not match how often it is right: a class
given 0.9 may be right 99 times in 100, or 70. Calibration measures this on
images the network never trained on, and corrects it without touching the
network: :class:`~sklearn.calibration.CalibratedClassifierCV` on a
:class:`~sklearn.frozen.FrozenEstimator` of the fitted classifier learns one
temperature (scikit-learn >= 1.8; a sigmoid per class before) on held-out
images. Here a ResNet18 trained from random weights on scikit-learn's 8x8
digits.
"""

# %%
# Three parts: training, calibration, test
# ----------------------------------------
# The calibration images must be new to the network: its own training
# images, or the validation images that chose its best epoch, would
# flatter it.
import os

import matplotlib.pyplot as plt
import sklearn
from sklearn.calibration import CalibratedClassifierCV, CalibrationDisplay
from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.metrics import log_loss
from sklearn.model_selection import train_test_split

from resnetclf import ResNetFineTuneClassifier

# The test suite sets this variable to run every example in a few seconds.
QUICK = os.environ.get("RESNETCLF_EXAMPLES_QUICK") == "1"
# Temperature scaling came with scikit-learn 1.8.
NEW_SKLEARN = tuple(int(p) for p in sklearn.__version__.split(".")[:2]) >= (1, 8)
METHOD = "temperature" if NEW_SKLEARN else "sigmoid"

digits = load_digits()
X, y = digits.images / 16.0, digits.target
X_train, X_rest, y_train, y_rest = train_test_split(
    X, y, test_size=0.4, stratify=y, random_state=0
)
X_calib, X_test, y_calib, y_test = train_test_split(
    X_rest, y_rest, test_size=0.5, stratify=y_rest, random_state=0
)

# %%
# The network, then its calibration
# ---------------------------------
# ``FrozenEstimator`` keeps the fitted network as it is: the calibrator is
# fitted on its probabilities for the calibration images, and
# ``CalibratedClassifierCV`` predicts through it. One temperature divides
# every logit, so the predicted classes, and the accuracy, stay the same.
clf = ResNetFineTuneClassifier(
    arch="resnet18", weights=None, max_iter=1 if QUICK else 10, random_state=0
)
clf.fit(X_train, y_train)
calibrated = CalibratedClassifierCV(FrozenEstimator(clf), method=METHOD)
calibrated.fit(X_calib, y_calib)
models = {"network": clf, f"{METHOD} scaling": calibrated}
for name, model in models.items():
    proba = model.predict_proba(X_test)
    print(
        f"{name:>20}: test log loss {log_loss(y_test, proba):.3f}, "
        f"accuracy {model.score(X_test, y_test):.3f}"
    )

# %%
# Reliability of the top class
# ----------------------------
# For each test image: the probability of the predicted class against
# whether it was right, in bins of images with similar confidence. On the
# diagonal, a confidence of 0.8 is right 8 times in 10; below it, the model
# is over-confident.
fig, ax = plt.subplots(figsize=(5, 5))
for name, model in models.items():
    proba = model.predict_proba(X_test)
    right = model.classes_[proba.argmax(axis=1)] == y_test
    CalibrationDisplay.from_predictions(
        right, proba.max(axis=1), n_bins=8, strategy="quantile", name=name, ax=ax
    )
ax.set(
    xlabel="confidence (probability of the predicted class)",
    ylabel="share of right predictions",
    title="ResNet18 on 8x8 digits, test images",
)
plt.show()
print("calibrated with:", METHOD)
