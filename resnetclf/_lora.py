"""Low-rank adapters (LoRA) on a ResNet's convolution weights.

Each adapted convolution keeps its weight ``W`` frozen and trains a low-rank
change of it, ``W + scale * up @ down``: ``down`` of shape ``(rank, in, kh,
kw)`` is a ``rank``-channel convolution of the input and ``up`` of shape
``(out, rank, 1, 1)`` mixes those channels into the outputs (peft's layout).
``up`` starts at zero, so an adapted network starts as the network it adapts.

The change is a ``torch.nn.utils.parametrize`` parametrization: the module
tree stays torchvision's, the convolution computes its weight on each access,
and :func:`merge_lora_adapters` turns it back into a plain weight in one call.
While adapted, the state dict names a weight
``<conv>.parametrizations.weight.original`` and its factors
``<conv>.parametrizations.weight.0.down``/``.up``; :func:`merged_state_dict`
gives the plain torchvision names without touching the model.
"""

from __future__ import annotations

import math
from collections.abc import Iterable
from numbers import Integral, Real

import torch
from torch import nn
from torch.nn.utils import parametrize

from resnetclf._param_groups import STAGES, stage_modules

__all__ = [
    "LowRankAdapter",
    "add_lora_adapters",
    "check_lora_rank",
    "count_trainable_parameters",
    "has_lora_adapters",
    "merge_lora_adapters",
    "merged_state_dict",
]


class LowRankAdapter(nn.Module):
    """The parametrization ``weight -> weight + scale * up @ down``.

    Parameters
    ----------
    weight : Tensor of shape (out, in, kh, kw)
        The convolution weight to adapt; the factors take its device and dtype.
    rank : int
        Rank of the change.
    scale : float
        Factor of the change (LoRA's ``alpha / rank``).

    Attributes
    ----------
    down : nn.Parameter of shape (rank, in, kh, kw)
        Input-side factor, initialised as ``nn.Conv2d`` initialises a kernel.
    up : nn.Parameter of shape (out, rank, 1, 1)
        Output-side factor, initialised to zero.
    """

    def __init__(self, weight: torch.Tensor, rank: int, scale: float) -> None:
        super().__init__()
        out_channels, *input_side = weight.shape
        factory = {"device": weight.device, "dtype": weight.dtype}
        down = torch.empty(rank, *input_side, **factory)
        if _channels_last(weight):
            down = down.contiguous(memory_format=torch.channels_last)
        self.down = nn.Parameter(down)
        self.up = nn.Parameter(torch.zeros(out_channels, rank, 1, 1, **factory))
        self.scale = float(scale)
        nn.init.kaiming_uniform_(self.down, a=math.sqrt(5))

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        rank = self.down.shape[0]
        up = self.up.reshape(-1, rank)
        if _channels_last(weight):
            # The product is taken in the weight's (out, kh, kw, in) order, so
            # that neither it nor the weight gradient is copied to another
            # memory format, forwards or backwards.
            down = self.down.permute(0, 2, 3, 1)
            change = (up @ down.reshape(rank, -1)).view(-1, *down.shape[1:])
            change = change.permute(0, 3, 1, 2)
        else:
            change = (up @ self.down.reshape(rank, -1)).view(weight.shape)
        return torch.add(weight, change, alpha=self.scale)

    def extra_repr(self) -> str:
        return f"rank={self.down.shape[0]}, scale={self.scale}"


def add_lora_adapters(
    model: nn.Module,
    rank: int,
    stages: Iterable[str],
    alpha: float | None = None,
) -> list[nn.Parameter]:
    """Adapt every ``nn.Conv2d`` of ``stages`` with a rank-``rank`` change.

    The adapted convolutions' weights are frozen (``requires_grad=False``); the
    factors are new trainable parameters on the weights' device. Nothing else
    changes: batch norms and the head keep their ``requires_grad`` (the caller
    decides, e.g. with ``freeze_stages``). ``"fc"`` holds no convolution, so
    the head is never adapted: it is trained as a whole. The model is
    checked before anything changes, so an error leaves it as it was.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision ResNet without adapters.
    rank : int
        Rank of each change, from 1 to the smallest ``min(out, in * kh * kw)``
        of the adapted convolutions.
    stages : iterable of str
        Stage names among ``"stem"``, ``"layer1"`` .. ``"layer4"``, ``"fc"``.
    alpha : float, default=None
        The change is scaled by ``alpha / rank``; None means ``alpha = rank``,
        a scale of 1.

    Returns
    -------
    factors : list of nn.Parameter
        The ``down`` and ``up`` factors of every adapted convolution.
    """
    stages = list(stages)
    convs = check_lora_rank(model, rank, stages)
    if alpha is None:
        alpha = rank
    if not isinstance(alpha, Real) or isinstance(alpha, bool) or not alpha > 0:
        raise ValueError(f"lora_alpha must be a number > 0; got {alpha!r}")
    if has_lora_adapters(model):
        raise ValueError(
            "the model already has LoRA adapters; merge them with "
            "merge_lora_adapters before adding new ones"
        )
    factors = []
    for conv in convs.values():
        conv.weight.requires_grad_(False)
        adapter = LowRankAdapter(conv.weight, rank, alpha / rank)
        parametrize.register_parametrization(conv, "weight", adapter)
        factors += [adapter.down, adapter.up]
    return factors


def check_lora_rank(
    model: nn.Module, rank, stages: Iterable[str]
) -> dict[str, nn.Conv2d]:
    """Raise unless ``rank`` suits every convolution of ``stages``.

    A rank above ``min(out, in * kh * kw)`` adds parameters without adding
    anything the change could express, so it is refused.

    Returns
    -------
    convs : dict of str to nn.Conv2d
        The convolutions to adapt, by their name in ``model``.
    """
    if not isinstance(rank, Integral) or isinstance(rank, bool):
        raise TypeError(f"lora_rank must be an int >= 1; got {rank!r}")
    if rank < 1:
        raise ValueError(f"lora_rank must be an int >= 1; got {rank!r}")
    convs = _stage_convolutions(model, stages)
    if not convs:
        return convs
    limits = {name: _rank_limit(conv) for name, conv in convs.items()}
    smallest = min(limits, key=limits.get)
    if rank > limits[smallest]:
        shape = "x".join(str(size) for size in convs[smallest].weight.shape)
        raise ValueError(
            f"lora_rank={rank} is larger than the convolution '{smallest}' "
            f"(weight {shape}) allows: at most {limits[smallest]} "
            "(min(out_channels, in_channels * kernel height * kernel width)). "
            f"Pass lora_rank <= {limits[smallest]}."
        )
    return convs


def merge_lora_adapters(model: nn.Module) -> nn.Module:
    """Fold every adapter into its weight, in place; return ``model``.

    Afterwards ``model`` is a plain torchvision ResNet again: plain
    ``nn.Conv2d`` modules, torchvision's state dict keys, the same outputs. The
    merged weights train again (``requires_grad=True``), as a fitted model's
    weights do; the weight tensors keep their identity and memory format.
    """
    for conv in _adapted_modules(model).values():
        parametrize.remove_parametrizations(conv, "weight", leave_parametrized=True)
        conv.weight.requires_grad_(True)
    return model


def merged_state_dict(model: nn.Module) -> dict[str, torch.Tensor]:
    """``model``'s state dict with every adapter merged, ``model`` untouched.

    Keys and their order are those of the merged model; merged weights are new
    tensors, every other value is the model's own (detached) tensor, as
    ``state_dict()`` gives it. Without adapters it is ``model.state_dict()``.
    """
    state = model.state_dict()
    adapted = _adapted_modules(model)
    if not adapted:
        return state
    replaced = {
        _joined(name, "parametrizations.weight."): (_joined(name, "weight"), conv)
        for name, conv in adapted.items()
    }
    merged = {}
    for key, value in state.items():
        head, found, _ = key.partition("parametrizations.weight.")
        if not found or head + found not in replaced:
            merged[key] = value
            continue
        # The original weight and the factors give way to the merged weight,
        # at the place of the first of them, as a plain model would list it.
        weight_key, conv = replaced[head + found]
        if weight_key not in merged:
            with torch.no_grad():
                merged[weight_key] = conv.weight.detach()
    return merged


def has_lora_adapters(model: nn.Module) -> bool:
    """Whether any module of ``model`` has a :class:`LowRankAdapter`."""
    return bool(_adapted_modules(model))


def count_trainable_parameters(model: nn.Module) -> int:
    """Number of parameter values that ``requires_grad``."""
    return sum(p.numel() for p in model.parameters() if p.requires_grad)


def _stage_convolutions(model: nn.Module, stages: list[str]) -> dict[str, nn.Conv2d]:
    unknown = [stage for stage in stages if stage not in STAGES]
    if unknown:
        raise ValueError(
            f"unknown stage names {unknown}; expected names among {list(STAGES)}"
        )
    names = {id(module): name for name, module in model.named_modules()}
    modules = stage_modules(model)
    return {
        names[id(module)]: module
        for stage in STAGES
        if stage in stages
        for top in modules[stage]
        for module in top.modules()
        if isinstance(module, nn.Conv2d)
    }


def _rank_limit(conv: nn.Conv2d) -> int:
    out_channels, *input_side = conv.weight.shape
    return min(out_channels, math.prod(input_side))


def _channels_last(weight: torch.Tensor) -> bool:
    return (
        weight.ndim == 4
        and not weight.is_contiguous()
        and weight.is_contiguous(memory_format=torch.channels_last)
    )


def _joined(module_name: str, attribute: str) -> str:
    return f"{module_name}.{attribute}" if module_name else attribute


def _adapted_modules(model: nn.Module) -> dict[str, nn.Module]:
    return {
        name: module
        for name, module in model.named_modules()
        if parametrize.is_parametrized(module, "weight")
        and any(isinstance(p, LowRankAdapter) for p in module.parametrizations.weight)
    }
