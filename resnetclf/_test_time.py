"""The test-time views a fitted estimator averages over (its ``tta`` parameter).

Which views help depends on what the network was trained to ignore: a
mirror image is one more example of its class only where training flipped
images (the ``"photo"`` augmentation), and a rotated view looks like a
training image only where training rotated. :class:`ViewSettings` reads that
off the training augmentation once, at fit time; the views themselves are
:func:`resnetclf._tta.tta_views`.
"""

from __future__ import annotations

from dataclasses import dataclass
from numbers import Integral

import torch

from resnetclf._augment import PhotoAugmentation, RotationAugmentation
from resnetclf._tta import DEFAULT_DEGREES, tta_view_names, tta_views

__all__ = ["TestTimeViews", "ViewSettings"]


@dataclass(frozen=True)
class ViewSettings:
    """The test-time views of a model trained with one augmentation.

    Attributes
    ----------
    flips : bool
        Whether mirror images are views: only when training flipped.
    degrees : float
        Angle of the rotated views: the training's largest rotation, at
        most 5 degrees; 0 (no rotated views) when
        training did not rotate (``augmentation=None`` or a callable, whose
        geometry is unknown).
    """

    flips: bool
    degrees: float

    @classmethod
    def after(cls, augmentation) -> ViewSettings:
        """The views that stay within what ``augmentation`` (resolved by
        :func:`~resnetclf._augment.resolve_augmentation`) trained on."""
        if isinstance(augmentation, PhotoAugmentation):
            degrees = augmentation.rotation_degrees
            return cls(augmentation.flip > 0, min(DEFAULT_DEGREES, degrees))
        if isinstance(augmentation, RotationAugmentation):
            return cls(False, min(DEFAULT_DEGREES, augmentation.degrees))
        return cls(False, 0.0)

    def names(self) -> list[str]:
        """Every view available, in order (``tta`` takes the first ones)."""
        return tta_view_names(None, self.flips, degrees=self.degrees)

    def check(self, tta) -> int:
        """``tta`` as an int, or a ValueError naming it and the views."""
        names = self.names()
        if (
            not isinstance(tta, Integral)
            or isinstance(tta, bool)
            or not 1 <= tta <= len(names)
        ):
            raise ValueError(
                f"tta={tta!r}: this model has {len(names)} test-time views "
                f"({', '.join(names)}); tta must be None or an int from 1 to "
                f"{len(names)}"
            )
        return int(tta)

    def views_of(self, tta: int) -> TestTimeViews:
        """The first ``tta`` views, as a function of a batch."""
        return TestTimeViews(self, self.check(tta))


@dataclass(frozen=True)
class TestTimeViews:
    """``batch -> [view, ...]``: the first ``n_views`` views of a batch in
    [0, 1] (resized, not normalised), each image's made from itself alone.
    ``len()`` is the number of views, so the number of forward passes."""

    settings: ViewSettings
    n_views: int

    def __len__(self) -> int:
        return self.n_views

    def __call__(self, batch: torch.Tensor) -> list[torch.Tensor]:
        return tta_views(
            batch, self.n_views, self.settings.flips, degrees=self.settings.degrees
        )
