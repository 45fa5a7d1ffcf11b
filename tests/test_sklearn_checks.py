"""scikit-learn's own estimator checks on a small, fast configuration."""

import pytest
from sklearn.utils import estimator_checks
from sklearn.utils.estimator_checks import parametrize_with_checks

from resnetclf import (
    ResNetFeatureExtractor,
    ResNetFineTuneClassifier,
    ResNetFineTuneRegressor,
)


def _small_classifier():
    # The checks pass 2-D arrays: a row of n features is read as one 1 x n image.
    # Training only the head (layer_lr_decay=0) on a random ResNet18 keeps each
    # of the checks' many fits fast while still reaching check_classifiers_train's
    # 0.83 training accuracy on its blobs; rotation would only smear 1-pixel-high
    # images. Full fine-tuning is covered by test_estimator.py.
    return ResNetFineTuneClassifier(
        arch="resnet18",
        weights=None,
        max_iter=3,
        batch_size=32,
        lr=3e-2,
        layer_lr_decay=0.0,
        rotation_degrees=0,
        random_state=0,
    )


def _small_extractor():
    # Random weights: nothing to download, and features all the same.
    return ResNetFeatureExtractor(
        arch="resnet18", weights=None, batch_size=32, random_state=0
    )


def _expected_failed_checks(estimator):
    # The classifier and the regressor are also transformers (transform
    # gives the pooled features, as LinearDiscriminantAnalysis is both), so
    # the transformer checks run on them too and pass: fit_transform fits as
    # fit does and, with random_state fixed, a refit transforms as the first
    # fit did.
    # The extractor trains nothing and passes every check.
    if isinstance(estimator, ResNetFeatureExtractor):
        return {}
    return {
        # Weight k must equal k repeats of a sample: repeats change the data's
        # size, so its shuffling, validation split and batches; a stochastic
        # mini-batch trainer meets this only in expectation.
        "check_sample_weight_equivalence_on_dense_data": (
            "stochastic mini-batch training: repeated samples change the "
            "shuffling, the validation split and the batches"
        ),
    }


# check_class_weight_classifiers sets max_iter=1000 (a thousand epochs, twice)
# for iterative linear models; a few epochs show the class weights at work.
_EPOCHS_FOR_CLASS_WEIGHT_CHECK = 10


def _check_name(check) -> str:
    return getattr(getattr(check, "func", check), "__name__", "")


@parametrize_with_checks(
    [_small_classifier(), _small_extractor()],
    expected_failed_checks=_expected_failed_checks,
)
def test_sklearn_compatible_estimator(estimator, check, monkeypatch):
    if _check_name(check) == "check_class_weight_classifiers":
        set_params = ResNetFineTuneClassifier.set_params

        def capped_set_params(self, **params):
            if params.get("max_iter") == 1000:
                params["max_iter"] = _EPOCHS_FOR_CLASS_WEIGHT_CHECK
            return set_params(self, **params)

        monkeypatch.setattr(ResNetFineTuneClassifier, "set_params", capped_set_params)
    check(estimator)


def _small_regressor():
    # As _small_classifier: the checks' rows are 1 x n images, and only the
    # head trains, on a random ResNet18's features computed once (the frozen
    # fast path), so 20 epochs cost little and reach check_regressors_train's
    # R^2 of 0.5 on its 50 samples.
    return ResNetFineTuneRegressor(
        arch="resnet18",
        weights=None,
        max_iter=20,
        batch_size=32,
        lr=3e-2,
        layer_lr_decay=0.0,
        rotation_degrees=0,
        random_state=0,
    )


@parametrize_with_checks(
    [_small_regressor()], expected_failed_checks=_expected_failed_checks
)
def test_sklearn_compatible_regressor(estimator, check):
    check(estimator)


# Checks of set_output and get_feature_names_out that parametrize_with_checks
# leaves out (scikit-learn runs them on its own transformers); the pandas
# ones skip themselves without pandas.
_OUTPUT_CHECKS = [
    "check_set_output_transform",
    "check_set_output_transform_pandas",
    "check_global_output_transform_pandas",
    "check_transformer_get_feature_names_out",
    "check_transformer_get_feature_names_out_pandas",
]


@pytest.mark.parametrize("check_name", _OUTPUT_CHECKS)
@pytest.mark.parametrize(
    "make_estimator",
    [_small_classifier, _small_regressor, _small_extractor],
    ids=["classifier", "regressor", "extractor"],
)
def test_transform_output_checks(make_estimator, check_name):
    estimator = make_estimator()
    if not isinstance(estimator, ResNetFeatureExtractor):
        estimator.set_params(max_iter=1)  # the features' names, not learning
    check = getattr(estimator_checks, check_name)
    check(type(estimator).__name__, estimator)
