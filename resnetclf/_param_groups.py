"""ResNet stages -> per-stage learning rates -> optimizer parameter groups."""

from __future__ import annotations

from collections.abc import Mapping
from numbers import Real

import torch
from torch import nn
from torch.nn.utils import parametrize

from resnetclf._switches import current as switches

__all__ = [
    "OPTIMIZERS",
    "STAGES",
    "StageParamGroups",
    "check_layer_lr_decay",
    "freeze_stages",
    "make_optimizer",
    "set_frozen_to_eval",
    "stage_learning_rates",
    "stage_modules",
    "trainable_stages",
    "training_phases",
]

# From the input to the head. Learning rates grow along this order.
STAGES = ("stem", "layer1", "layer2", "layer3", "layer4", "fc")
# What ``make_optimizer`` builds, by name.
OPTIMIZERS = ("adam", "adamw", "sgd")


def check_layer_lr_decay(layer_lr_decay) -> None:
    """Raise ValueError/TypeError unless ``layer_lr_decay`` is a valid value."""
    if isinstance(layer_lr_decay, Mapping):
        unknown = sorted(set(layer_lr_decay) - set(STAGES), key=str)
        if unknown:
            raise ValueError(
                f"layer_lr_decay has unknown stage names {unknown}; "
                f"expected names among {list(STAGES)}"
            )
        for stage, rate in layer_lr_decay.items():
            if not isinstance(rate, Real) or isinstance(rate, bool) or rate < 0:
                raise ValueError(
                    f"layer_lr_decay[{stage!r}] must be a learning rate >= 0; "
                    f"got {rate!r}"
                )
        return
    if not isinstance(layer_lr_decay, Real) or isinstance(layer_lr_decay, bool):
        raise TypeError(
            "layer_lr_decay must be a float in [0, 1] or a dict mapping stage "
            f"names to learning rates; got {type(layer_lr_decay).__name__}"
        )
    if not 0 <= layer_lr_decay <= 1:
        raise ValueError(f"layer_lr_decay must be in [0, 1]; got {layer_lr_decay!r}")


def stage_learning_rates(lr: float, layer_lr_decay) -> dict[str, float]:
    """Learning rate of each stage, head first in importance.

    A float ``d`` gives the stage ``k`` steps below the head ``lr * d**k``; a
    mapping gives the rates directly and stages it leaves out train at ``lr``.
    """
    if isinstance(layer_lr_decay, Mapping):
        return {s: float(layer_lr_decay.get(s, lr)) for s in STAGES}
    depth = len(STAGES) - 1
    return {
        stage: float(lr * layer_lr_decay ** (depth - i))
        for i, stage in enumerate(STAGES)
    }


def trainable_stages(stage_lrs: Mapping[str, float]) -> list[str]:
    """The stages whose learning rate is above 0, input to head."""
    return [stage for stage, rate in stage_lrs.items() if rate > 0]


def training_phases(
    stage_lrs: Mapping[str, float], freeze_epochs: int, max_iter: int
) -> list[tuple[int, dict[str, float]]]:
    """``(epochs, stage rates)`` of each phase of a fit: the head alone for
    ``freeze_epochs`` epochs (gradual unfreezing), then every stage at its
    rate; phases of no epoch are left out."""
    head_only = {stage: (rate if stage == "fc" else 0.0) for stage, rate in
                 stage_lrs.items()}  # fmt: skip
    phases = [(freeze_epochs, head_only), (max_iter - freeze_epochs, stage_lrs)]
    return [(n, lrs) for n, lrs in phases if n > 0]


def stage_modules(model: nn.Module) -> dict[str, list[nn.Module]]:
    """The submodules of a torchvision ResNet that make up each stage."""
    return {
        "stem": [model.conv1, model.bn1],
        "layer1": [model.layer1],
        "layer2": [model.layer2],
        "layer3": [model.layer3],
        "layer4": [model.layer4],
        "fc": [model.fc],
    }


def freeze_stages(model: nn.Module, stage_lrs: Mapping[str, float]) -> list[str]:
    """Stop gradients for the stages whose rate is 0; return their names.

    With no gradient required, autograd neither stores activations for nor
    back-propagates into the frozen stages before the first trainable one.
    """
    frozen = [stage for stage in STAGES if stage_lrs[stage] == 0]
    for stage, modules in stage_modules(model).items():
        for module in modules:
            module.requires_grad_(stage not in frozen)
    # A weight under a parametrization (LoRA's pretrained weight) trains only
    # through it, whichever stages are frozen now.
    for weight in parametrized_originals(model):
        weight.requires_grad_(False)
    return frozen


def parametrized_originals(model: nn.Module) -> list[nn.Parameter]:
    """The tensors stored under parametrizations: with LoRA, the frozen
    pretrained weights, which only their adapters change."""
    return [
        parametrization.original
        for module in model.modules()
        if parametrize.is_parametrized(module)
        for parametrization in module.parametrizations.values()
        if hasattr(parametrization, "original")
    ]


def set_frozen_to_eval(model: nn.Module, frozen: list[str]) -> None:
    """Keep frozen stages' batch-norm statistics fixed while the rest trains."""
    modules = stage_modules(model)
    for stage in frozen:
        for module in modules[stage]:
            module.eval()


class StageParamGroups:
    """Optimizer parameter groups, two per trainable stage.

    Weights of convolutions and linear layers get ``weight_decay``; norm weights
    and biases (1-D parameters) get none, since shrinking them only hurts. Each
    group's ``lr`` is written directly, so stock ``torch.optim.lr_scheduler``
    classes scale all stages together and keep their ratios.

    A stem folded from ``stem_fold`` identical input channels into one (see
    ``build_resnet``) stands for ``stem_fold`` kernels that the unfolded
    network would each move by the same step, since they see the same input
    and so get the same gradient. Its kernel therefore trains at
    ``stem_fold`` times the stem's rate with ``1 / stem_fold`` of the weight
    decay: the folded network then follows the channel-repeated one step for
    step (exactly for SGD and AdamW, and for Adam without weight decay).

    With low-rank adapters (see ``resnetclf._lora``), the frozen weights under
    them are left out; the factors are weights like any other (decayed, which
    pulls the change towards the pretrained weights), and in a folded stem
    only the input-side factor ``down`` takes the scaled rate and decay.

    Parameters
    ----------
    model : torch.nn.Module
        A torchvision ResNet.
    stage_lrs : mapping of str to float
        Learning rate of each stage; 0 leaves a stage out.
    weight_decay : float
        Weight decay of convolution and linear weights.
    stem_fold : int, default=1
        Input channels folded into ``conv1``: 3 for a folded grayscale stem.

    Attributes
    ----------
    groups : list of dict
        The groups to hand to a ``torch.optim.Optimizer``.
    stages : list of str
        The stage of each group, aligned with ``groups``.
    """

    def __init__(
        self,
        model: nn.Module,
        stage_lrs: Mapping[str, float],
        weight_decay: float,
        stem_fold: int = 1,
    ) -> None:
        self.groups: list[dict] = []
        self.stages: list[str] = []
        originals = {id(p) for p in parametrized_originals(model)}
        folded = {id(k) for k in _folded_kernels(model.conv1)}
        for stage, modules in stage_modules(model).items():
            if stage_lrs[stage] == 0:
                continue
            params = [
                p for m in modules for p in m.parameters() if id(p) not in originals
            ]
            scaled = [p for p in params if stage == "stem" and id(p) in folded]
            decayed = [p for p in params if p.ndim > 1 and id(p) not in folded]
            not_decayed = [p for p in params if p.ndim <= 1]
            lr = stage_lrs[stage]
            for group_params, group_lr, decay in (
                (scaled, lr * stem_fold, weight_decay / stem_fold),
                (decayed, lr, weight_decay),
                (not_decayed, lr, 0.0),
            ):
                if group_params:
                    self.groups.append(
                        {"params": group_params, "lr": group_lr, "weight_decay": decay}
                    )
                    self.stages.append(stage)

    @property
    def n_parameters(self) -> int:
        """Number of values the groups train."""
        return sum(p.numel() for group in self.groups for p in group["params"])

    def current_rates(self, optimizer) -> dict[str, float]:
        """Each stage's current learning rate (0.0 for frozen stages).

        The rate of the stage's norms and biases: for a folded stem, the rate
        the user set, not its kernel's scaled one.
        """
        rates = dict.fromkeys(STAGES, 0.0)
        for stage, group in zip(self.stages, optimizer.param_groups):
            rates[stage] = float(group["lr"])  # the 1-D group comes last
        return rates


def _folded_kernels(conv: nn.Conv2d) -> list[nn.Parameter]:
    """What a folded stem trains across its input channels: the kernel or,
    under a low-rank adapter, the adapter's input-side factor ``down`` (its
    ``up`` factor gets the summed gradient once, so it needs no scaling)."""
    if not parametrize.is_parametrized(conv, "weight"):
        return [conv.weight]
    return [p.down for p in conv.parametrizations.weight if hasattr(p, "down")]


def make_optimizer(
    name: str, groups: list[dict], device: torch.device
) -> torch.optim.Optimizer:
    """The optimizer ``name`` ("adam", "adamw" or "sgd") over ``groups``."""
    if switches().decay_norms_and_biases:
        decay = max(group["weight_decay"] for group in groups)
        for group in groups:
            group["weight_decay"] = decay
    if name == "sgd":
        return torch.optim.SGD(groups, momentum=0.9)
    optimizer_class = torch.optim.Adam if name == "adam" else torch.optim.AdamW
    # The fused kernels halve the optimizer step (CPU and CUDA since torch 2.4,
    # below the 2.5.1 floor).
    fused = device.type in ("cpu", "cuda") and switches().fused_optimizer
    return optimizer_class(groups, fused=fused or None)
