"""Fine-tune pretrained torchvision ResNets on numpy image arrays, sklearn-style."""

from resnetclf._backbone import WeightsUnavailableError
from resnetclf._estimator import ResNetFineTuneClassifier
from resnetclf.plotting import plot_history

__version__ = "0.1.0"

__all__ = [
    "ResNetFineTuneClassifier",
    "WeightsUnavailableError",
    "plot_history",
    "__version__",
]
