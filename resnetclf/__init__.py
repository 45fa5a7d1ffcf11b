"""Fine-tune pretrained torchvision ResNets on numpy image arrays, sklearn-style."""

from resnetclf._backbone import WeightsUnavailableError
from resnetclf._estimator import ResNetFineTuneClassifier
from resnetclf._persistence import load_model, save_model
from resnetclf._regressor import ResNetFineTuneRegressor
from resnetclf._split import (
    SplitIndices,
    SplitInfo,
    stratified_subsample,
    train_val_test_split,
)
from resnetclf._version import __version__
from resnetclf.export import export_onnx
from resnetclf.feature_extractor import ResNetFeatureExtractor
from resnetclf.heads import DigitSumHead
from resnetclf.plotting import plot_confident_mistakes, plot_history

__all__ = [
    "DigitSumHead",
    "ResNetFeatureExtractor",
    "ResNetFineTuneClassifier",
    "ResNetFineTuneRegressor",
    "SplitIndices",
    "SplitInfo",
    "WeightsUnavailableError",
    "export_onnx",
    "load_model",
    "plot_confident_mistakes",
    "plot_history",
    "save_model",
    "stratified_subsample",
    "train_val_test_split",
    "__version__",
]
