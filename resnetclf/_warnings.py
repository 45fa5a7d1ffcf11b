"""Where a warning of the package should point: the user's line.

``warnings.warn(..., stacklevel=n)`` needs the number of frames between the
``warn`` call and the user's code, which changes whenever ``fit`` or
``predict`` is cut into steps differently. Counting the package's own frames
at call time keeps every warning on the line that called into the package
(a user's script, a test, or scikit-learn's ``cross_validate``), however deep
the call that warns. (Python 3.12's ``skip_file_prefixes`` does the same; the
package supports 3.10.)
"""

from __future__ import annotations

import os
import sys

__all__ = ["user_stacklevel"]

_PACKAGE_DIR = os.path.dirname(os.path.abspath(__file__)) + os.sep


def user_stacklevel() -> int:
    """The ``stacklevel`` that makes a ``warnings.warn`` point outside the package.

    Call it in the argument list of ``warnings.warn``:
    ``warnings.warn(message, UserWarning, stacklevel=user_stacklevel())``.
    Level 1 is the function that calls ``warnings.warn``; each enclosing frame
    in the package adds one. When the whole stack is the package's (the
    ``resnetclf`` command), the outermost frame is named.
    """
    frame = sys._getframe(1)  # the function that warns
    level = 1
    while frame.f_back is not None and _in_package(frame.f_code.co_filename):
        frame = frame.f_back
        level += 1
    return level


def _in_package(filename: str) -> bool:
    return os.path.abspath(filename).startswith(_PACKAGE_DIR)
