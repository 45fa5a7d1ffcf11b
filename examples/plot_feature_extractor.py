"""
====================================================================
Pretrained features and a linear model, searched with features once
====================================================================

:class:`~resnetclf.ResNetFeatureExtractor` turns images into a ResNet's
pooled features without training the network, and a linear model learns on
them in a fraction of a second. Here a ResNet18 reads scikit-learn's 8x8
digits, and a grid search chooses the logistic regression's ``C`` with the
features computed once, not once per fit. The network has random weights,
so that nothing is downloaded; with ``weights="DEFAULT"`` the features are
ImageNet's (and normalised with ImageNet's statistics).
"""

# %%
# A feature extractor and a logistic regression in a pipeline
# -----------------------------------------------------------
# ``fit`` only checks the images and builds the network; the features are
# the map of ``layer`` averaged over its positions. 8x8 images leave a
# single position after ``layer3``, so the second stage's 128 features keep
# more of them.
import os
import time

from sklearn.datasets import load_digits
from sklearn.frozen import FrozenEstimator
from sklearn.linear_model import LogisticRegression
from sklearn.model_selection import GridSearchCV, train_test_split
from sklearn.pipeline import make_pipeline

from resnetclf import ResNetFeatureExtractor

# The test suite sets this variable to run every example in a few seconds.
QUICK = os.environ.get("RESNETCLF_EXAMPLES_QUICK") == "1"

digits = load_digits()
X_train, X_test, y_train, y_test = train_test_split(
    digits.images / 16.0,  # floats in [0, 1]
    digits.target,
    train_size=150 if QUICK else 600,
    stratify=digits.target,
    random_state=0,
)
extractor = ResNetFeatureExtractor(
    arch="resnet18", weights=None, layer="layer2", random_state=0
)
pipeline = make_pipeline(extractor, LogisticRegression(max_iter=1000))
pipeline.fit(X_train, y_train)
print(f"pipeline with C=1: test accuracy {pipeline.score(X_test, y_test):.3f}")

# %%
# The features once, for the whole search
# ---------------------------------------
# Searched as it is, the pipeline computes the features in each of the
# search's fits and scores: 3 folds x 4 values of ``C``, each extracting the
# fold's training part and its held-out part. ``Pipeline(memory=...)`` would
# cache the training part's features (once per fold, reused by every ``C``)
# but not the held-out part's, which each candidate's scoring extracts
# again. The extractor learns nothing from the images, so an image's
# features are the same in every fold: computed once for all the training
# images, they are exactly what every fit and score of the search would
# compute. Here both searches run, to compare.
grid = {"C": [0.1, 1.0, 10.0, 100.0]}
start = time.perf_counter()
features = pipeline[0].transform(X_train)  # the fitted extractor's output
search = GridSearchCV(LogisticRegression(max_iter=1000), grid, cv=3)
search.fit(features, y_train)
once = time.perf_counter() - start

start = time.perf_counter()
pipeline_grid = {"logisticregression__C": grid["C"]}
per_fit = GridSearchCV(pipeline, pipeline_grid, cv=3).fit(X_train, y_train)
every_time = time.perf_counter() - start
for C, a, b in zip(
    grid["C"],
    search.cv_results_["mean_test_score"],
    per_fit.cv_results_["mean_test_score"],
):
    print(f"C={C:<6g} features once: {a:.3f}  features per fit: {b:.3f}")
print(f"search time: {once:.1f} s with the features once, {every_time:.1f} s per fit")

# %%
# The chosen model, for new images
# --------------------------------
# :class:`~sklearn.frozen.FrozenEstimator` keeps the fitted extractor as it
# is inside the final pipeline (its ``fit`` does nothing), next to the
# logistic regression the search refitted with the best ``C``.
best = make_pipeline(FrozenEstimator(pipeline[0]), search.best_estimator_)
print("best_params_:", search.best_params_)
print(f"test accuracy of the best C: {best.score(X_test, y_test):.3f}")

# %%
# Going further
# -------------
# The same pattern holds for the features of a fine-tuned
# :class:`~resnetclf.ResNetFineTuneClassifier`: once fitted, its
# ``transform`` returns the pooled last stage, and
# ``FrozenEstimator(clf)`` makes it a pipeline step that is never refitted.
