"""
===========================================
Choosing the learning rate by grid search
===========================================

:class:`~sklearn.model_selection.GridSearchCV` tunes
:class:`~resnetclf.ResNetFineTuneClassifier` like any scikit-learn estimator:
every parameter of the constructor can be searched. Here we compare three
head learning rates (``lr``) on scikit-learn's 8x8 digits, with a ResNet18
trained from random weights.
"""

# %%
# Data
# ----
# 900 digits for the search, scaled to [0, 1], and the rest for a final test.
import os

from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from resnetclf import ResNetFineTuneClassifier

# The test suite sets this variable to run every example in a few seconds.
QUICK = os.environ.get("RESNETCLF_EXAMPLES_QUICK") == "1"

digits = load_digits()
X_search, X_test, y_search, y_test = train_test_split(
    digits.images / 16.0,
    digits.target,
    train_size=150 if QUICK else 900,
    stratify=digits.target,
    random_state=0,
)

# %%
# The search
# ----------
# Each candidate is fitted on two folds and scored on the third. The
# estimator's own validation split is turned off (``validation_fraction=0``):
# the cross-validation folds already play that role, so each fit trains on
# all of its fold for a fixed number of epochs.
estimator = ResNetFineTuneClassifier(
    arch="resnet18",
    weights=None,
    max_iter=1 if QUICK else 4,
    validation_fraction=0,
    random_state=0,
)
search = GridSearchCV(estimator, {"lr": [3e-4, 1e-3, 3e-3]}, cv=3)
search.fit(X_search, y_search)

# %%
# Scores of each candidate
# ------------------------
# ``cv_results_`` holds one entry per candidate; ``best_params_`` names the
# winner, which ``GridSearchCV`` then refitted on all 900 images. When the
# winner sits at the edge of the grid, widen the grid in that direction.
results = search.cv_results_
for params, mean, std in zip(
    results["params"], results["mean_test_score"], results["std_test_score"]
):
    print(f"{params}: {mean:.3f} +/- {std:.3f}")
print("best_params_:", search.best_params_)
print(f"test accuracy of the refitted best model: {search.score(X_test, y_test):.3f}")

# %%
# Searching more
# --------------
# Grids grow fast: each candidate costs ``cv`` fits. ``n_jobs=2`` runs two
# fits at once on one machine, and a Dask cluster spreads them over many (see
# the next example). ``layer_lr_decay``, ``lr_schedule`` and
# ``rotation_degrees`` are the next parameters worth a look, and with
# pretrained weights ``layer_lr_decay`` matters most.
