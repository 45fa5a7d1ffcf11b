"""``python -m resnetclf``: the ``resnetclf`` command (see :mod:`resnetclf.cli`)."""

from resnetclf.cli import main

if __name__ == "__main__":
    raise SystemExit(main())
