"""Run examples and save the figures they draw into ``docs/images/``.

The documentation shows figures of the examples as they come out of a run
anyone can repeat::

    python docs/make_figures.py plot_digits

runs ``examples/plot_digits.py`` as a script (off screen) and saves its
figures, in the order it drew them, as ``docs/images/plot_digits_1.png``,
``plot_digits_2.png``, ... It prints what it wrote.
"""

from __future__ import annotations

import runpy
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
IMAGES = ROOT / "docs" / "images"


def save_figures_of(name: str) -> list[Path]:
    """Run ``examples/<name>.py`` and save every figure it leaves open."""
    plt.close("all")
    runpy.run_path(str(ROOT / "examples" / f"{name}.py"), run_name="__main__")
    written = []
    for number in plt.get_fignums():
        path = IMAGES / f"{name}_{number}.png"
        plt.figure(number).savefig(path, dpi=100)
        written.append(path)
    plt.close("all")
    return written


def main(names: list[str]) -> int:
    if not names:
        print(__doc__)
        return 2
    for name in names:
        for path in save_figures_of(name):
            print(f"wrote {path.relative_to(ROOT)}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
