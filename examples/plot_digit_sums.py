"""
=====================================================
Reading four digits from their sums alone
=====================================================

The report's images hold four handwritten digits and are labelled with their
sum (0..36). A whole-image classifier must discover from 37 sum classes that
the picture is four digits and that the label adds them. ``head="digit-sum"``
builds that structure in: each of four slots reads one digit, and the sum's
distribution is the convolution of the four digits' distributions, so the
digits are learnt **from the sums alone**.

This example first teaches a ResNet18 single digits (a stand-in for
pretrained weights, which cannot be downloaded everywhere), then fine-tunes it
on four-digit sums with the digit-sum head, and shows the digits it reads
next to the sums. About 10 minutes on two CPU cores.
"""

# %%
# A backbone that knows digits
# ----------------------------
# ``make_digit_sums(n_digits=1)`` composes 40x40 images of one handwritten
# digit each (from scikit-learn's ``load_digits``), labelled with the digit.
# The digits are split first, so that the sums below are written by other
# hands. The best epoch's weights are written with ``checkpoint_path``.
import os
import tempfile
from pathlib import Path

import matplotlib.pyplot as plt
import numpy as np
from sklearn.datasets import load_digits
from sklearn.model_selection import train_test_split

from resnetclf import ResNetFineTuneClassifier
from resnetclf.datasets import make_digit_sums

# The test suite sets this variable to run every example in a few seconds.
QUICK = os.environ.get("RESNETCLF_EXAMPLES_QUICK") == "1"
N_SINGLE, N_SUMS, N_TEST = (64, 64, 32) if QUICK else (3000, 2000, 1000)

rows = np.arange(len(load_digits().target))
pretrain_rows, sum_rows = train_test_split(rows, test_size=0.5, random_state=0)
train_rows, test_rows = train_test_split(sum_rows, test_size=0.5, random_state=0)

X_single, y_single = make_digit_sums(
    N_SINGLE, n_digits=1, image_shape=(40, 40), random_state=0,
    digit_indices=pretrain_rows,
)  # fmt: skip
weights = Path(tempfile.mkdtemp()) / "single-digits.safetensors"
single = ResNetFineTuneClassifier(
    arch="resnet18",
    weights=None,
    max_iter=1 if QUICK else 4,
    batch_size=32,
    checkpoint_path=weights,
    random_state=0,
)
single.fit(X_single, y_single)
print(f"single digits: validation accuracy {single.best_score_:.3f}")

# %%
# Fine-tune on four-digit sums
# ----------------------------
# The training sums draw their digits from one pool of handwriting, the test
# sums from another. ``weights`` takes the single-digit file: every tensor
# but its 10-way head, which the digit-sum head replaces. Small batches give
# more steps on a few thousand images.
X, y = make_digit_sums(N_SUMS, random_state=1, digit_indices=train_rows)
X_test, y_test, truth = make_digit_sums(
    N_TEST, random_state=2, digit_indices=test_rows, return_layout=True
)
clf = ResNetFineTuneClassifier(
    arch="resnet18",
    weights=weights,
    head="digit-sum",
    max_iter=1 if QUICK else 6,
    batch_size=16,
    random_state=0,
)
clf.fit(X, y)
digits = clf.predict_digits(X_test)
print(f"sum accuracy on unseen handwriting: {clf.score(X_test, y_test):.3f}")
print(f"digits read right: {(digits == truth.digits).mean():.3f}")

# %%
# The digits it reads
# -------------------
# :meth:`~resnetclf.ResNetFineTuneClassifier.predict_digits` gives the four
# digits read, left to right. No digit label was ever seen in training.
predicted = clf.predict(X_test)
fig, axes = plt.subplots(4, 2, figsize=(9, 4.5))
for ax, image, read, label, guess in zip(
    axes.ravel(), X_test, digits, y_test, predicted
):
    ax.imshow(image, cmap="gray")
    ok = "" if guess == label else f" (predicted {guess})"
    ax.set_title(f"read {' + '.join(map(str, read))}; sum {label}{ok}", fontsize=9)
    ax.axis("off")
fig.tight_layout()
plt.show()

# %%
# Going further
# -------------
# The same head takes ``DigitSumHead(n_digits=k)`` for other counts; the
# benchmarks page compares it with whole-image classifiers, from random
# weights and from a pretrained backbone.
