"""Where a warning of the package should point: the user's line.

``warnings.warn(..., stacklevel=n)`` needs the number of frames between the
``warn`` call and the user's code, which changes whenever ``fit`` or
``predict`` is cut into steps differently, and the package's own frames are
not always contiguous (a module called through ``torch.nn.Module.__call__``
has torch's frames between it and the loop that called it). So the level is
found at call time: the caller of the outermost frame of the package, and
past scikit-learn's and joblib's frames, so that ``clf.score(X, y)``,
``cross_val_score(clf, X, y)`` or ``ConfusionMatrixDisplay.from_estimator``
name the user's line rather than scikit-learn's. (Python 3.12's
``skip_file_prefixes`` does part of this; the package supports 3.10.)
"""

from __future__ import annotations

import os
import sys

import joblib
import sklearn

__all__ = ["user_stacklevel"]


def _folder(module) -> str:
    return os.path.dirname(os.path.abspath(module.__file__)) + os.sep


_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep
# Libraries that call the estimator on the user's behalf.
_CALLER_DIRS = (_folder(sklearn), _folder(joblib))


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` point at the user's line.

    Call it in the argument list of ``warnings.warn``:
    ``warnings.warn(message, UserWarning, stacklevel=user_stacklevel())``.
    Level 1 is the function that calls ``warnings.warn``. The level returned
    names the caller of the outermost frame in this package, or, when that
    caller is scikit-learn or joblib, the first frame beyond them. When
    nothing lies beyond (the ``resnetclf`` command), the outermost frame is
    named.
    """
    files = []  # files[k - 1] is the frame that stacklevel=k names
    frame = sys._getframe(1)  # the function that warns
    while frame is not None:
        files.append(os.path.abspath(frame.f_code.co_filename))
        frame = frame.f_back
    in_package = [k for k, name in enumerate(files) if name.startswith(_PACKAGE_DIR)]
    index = (in_package[-1] if in_package else 0) + 1
    while index < len(files) and files[index].startswith(_CALLER_DIRS):
        index += 1
    return min(index, len(files) - 1) + 1
