"""Build a torchvision ResNet by name or callable, load its weights, fit its stem
and head."""

from __future__ import annotations

import functools
import os
import pickle
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

import torch
import torchvision
from torch import nn
from torchvision.models import WeightsEnum

from resnetclf._checkpoint import load_state_dict_file
from resnetclf._lora import check_lora_rank, merged_state_dict
from resnetclf.heads import resolve_head

__all__ = [
    "RESNET_ARCHS",
    "MapHeadResNet",
    "WeightsUnavailableError",
    "attach_head",
    "build_resnet",
    "check_arch",
    "check_kept_network",
    "check_new_network",
    "feature_map",
    "head_fits",
    "layer4_channels",
    "make_head",
    "read_digits",
    "reads_digits",
    "rebuilt_network",
    "resolve_weights",
    "spread_over_rgb",
    "to_torchvision_layout",
]

# The torchvision builders that share ResNet's layout (conv1, bn1, layer1..4, fc).
RESNET_ARCHS = (
    "resnet18",
    "resnet34",
    "resnet50",
    "resnet101",
    "resnet152",
    "resnext50_32x4d",
    "resnext101_32x8d",
    "resnext101_64x4d",
    "wide_resnet50_2",
    "wide_resnet101_2",
)


# The weights file of a save_model folder.
MODEL_FOLDER_WEIGHTS = ("model.safetensors",)


class WeightsUnavailableError(RuntimeError):
    """Pretrained weights could neither be found in the cache nor downloaded."""


# What a network needs for stages, the grayscale stem and the head.
_RESNET_LAYOUT = (
    ("conv1", nn.Conv2d),
    ("bn1", nn.Module),
    ("layer1", nn.Module),
    ("layer2", nn.Module),
    ("layer3", nn.Module),
    ("layer4", nn.Module),
    ("fc", nn.Linear),
)

Arch = str | Callable[[], nn.Module]


def check_arch(arch) -> Arch:
    """Return ``arch`` if it names a torchvision ResNet builder or is callable.

    What a callable returns is checked when :func:`build_resnet` calls it.
    """
    if isinstance(arch, str):
        if arch not in RESNET_ARCHS:
            raise ValueError(
                f"arch must be one of {', '.join(RESNET_ARCHS)}, or a callable "
                f"that returns a torchvision ResNet; got {arch!r}. Other "
                "torchvision models lack ResNet's conv1/layer1..4/fc layout."
            )
        return arch
    if not callable(arch):
        raise TypeError(
            "arch must be the name of a torchvision ResNet builder or a callable "
            f"that returns a torchvision.models.ResNet; got {type(arch).__name__}"
        )
    return arch


def resolve_weights(arch: Arch, weights) -> WeightsEnum | Path | None:
    """Turn the ``weights`` parameter into a torchvision enum, a file path or None.

    Nothing is downloaded or read here, so that bad values fail fast. A
    callable ``arch`` builds a network torchvision has no weights for: it
    takes None or a state dict file.
    """
    if weights is None:
        return None
    if not isinstance(arch, str):
        return _resolve_file_weights(arch, weights)
    weights_enum = torchvision.models.get_model_weights(arch)
    if isinstance(weights, WeightsEnum):
        if not isinstance(weights, weights_enum):
            raise ValueError(
                f"weights={weights} belongs to another architecture than "
                f"arch={arch!r}; use one of {_weight_names(weights_enum)}"
            )
        return weights
    if not isinstance(weights, (str, os.PathLike)):
        raise TypeError(
            "weights must be None, a torchvision weights name such as 'DEFAULT', "
            f"or a path to a state dict; got {type(weights).__name__}"
        )
    if isinstance(weights, str) and weights in weights_enum.__members__:
        return weights_enum[weights]
    path = Path(weights)
    if path.is_file():
        return path
    if path.is_dir():
        return _weights_in_folder(path)
    if isinstance(weights, str) and not _looks_like_path(weights):
        raise ValueError(
            f"weights={weights!r} is not a weights name for arch={arch!r} "
            f"(expected one of {_weight_names(weights_enum)}, None, "
            "or a path to a state dict file)"
        )
    raise FileNotFoundError(f"weights file not found: '{path}'")


def _resolve_file_weights(arch: Callable, weights) -> Path:
    if not isinstance(weights, (str, os.PathLike, WeightsEnum)):
        raise TypeError(
            "weights must be None or a path to a state dict when arch is a "
            f"callable; got {type(weights).__name__}"
        )
    if not isinstance(weights, WeightsEnum):
        path = Path(weights)
        if path.is_file():
            return path
        if path.is_dir():
            return _weights_in_folder(path)
        if not isinstance(weights, str) or _looks_like_path(weights):
            raise FileNotFoundError(f"weights file not found: '{path}'")
    raise ValueError(
        f"weights={weights!r} names torchvision weights, which only an arch "
        f"given by name has; arch={_arch_label(arch)} is a callable. Pass "
        "weights=None (random initialisation) or a path to a state dict "
        "file that fits the network it builds."
    )


def _weights_in_folder(folder: Path) -> Path:
    """The weights file of a ``save_model`` folder."""
    for name in MODEL_FOLDER_WEIGHTS:
        if (folder / name).is_file():
            return folder / name
    raise FileNotFoundError(
        f"weights='{folder}' is a folder without a weights file; expected a "
        f"folder written by resnetclf.save_model (holding "
        f"{' or '.join(MODEL_FOLDER_WEIGHTS)}) or a state dict file"
    )


def build_resnet(
    arch: Arch,
    weights: WeightsEnum | Path | None,
    n_classes: int,
    in_channels: int,
    verbose: int = 0,
    *,
    head=None,
    classes=None,
) -> nn.Module:
    """Build ``arch`` with ``weights``, a new ``n_classes`` head and a stem for
    ``in_channels`` (1 or 3) input channels.

    A named ``arch`` is torchvision's builder; a callable one is called with
    no arguments and must return a ``torchvision.models.ResNet`` with an RGB
    ``conv1`` (a TypeError or ValueError names ``arch`` otherwise).

    ``head`` is a head :func:`~resnetclf.heads.resolve_head` gave: None
    keeps torchvision's linear ``fc`` (replaced when its size is not
    ``n_classes``); any other head is built for ``classes`` by
    :func:`attach_head`.

    A grayscale stem is the pretrained RGB ``conv1`` summed over its input
    channels: feeding it one channel gives exactly what the RGB stem gives for
    that channel repeated three times, at a third of the stem's cost.

    Weights from another task give every tensor but the head: the file's head
    is taken only when it fits the new one exactly (same tensors, same
    shapes), else the head stays new; a file without a head (an encoder) is
    taken too. At ``verbose >= 1`` a line says what was taken and what was not.
    """
    model = _new_network(arch)
    if head is not None:
        attach_head(model, head, classes)
    elif model.fc.out_features != n_classes:
        model.fc = nn.Linear(model.fc.in_features, n_classes)
    if weights is not None:
        state_dict = _read_weights(weights)
        dropped = _load_weights(model, state_dict, arch, weights)
    if in_channels == 1:
        model.conv1 = _fold_to_one_channel(model.conv1)
    if weights is not None and verbose >= 1:
        # Written as the progress reporter writes its lines (stdout, flushed).
        sys.stdout.write(_loaded_summary(weights, state_dict, dropped, n_classes))
        sys.stdout.write("\n")
        sys.stdout.flush()
    return model


class MapHeadResNet(torchvision.models.ResNet):
    """A torchvision ResNet whose head (``fc``) reads the last stage's map.

    torchvision's forward pools and flattens before ``fc``; here ``fc``
    receives ``layer4``'s output ``(N, C, h, w)`` as it is. The module tree
    and state-dict keys are torchvision's, so stages, freezing, checkpoints
    and low-rank adapters treat the head as they treat ``fc``.
    """

    def _forward_impl(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(feature_map(self, x))


def feature_map(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The last stage's map of a torchvision ResNet for input ``x``."""
    x = model.maxpool(model.relu(model.bn1(model.conv1(x))))
    return model.layer4(model.layer3(model.layer2(model.layer1(x))))


def attach_head(model: nn.Module, head, classes) -> nn.Module:
    """Put the module ``head(feature_channels, classes)`` in ``model.fc``,
    fed with the last stage's map (``head``: what :func:`resolve_head` gave,
    not None)."""
    if type(model) not in (torchvision.models.ResNet, MapHeadResNet):
        raise TypeError(
            "a head other than 'linear' needs a network of the class "
            "torchvision.models.ResNet itself; the arch built a "
            f"{type(model).__name__}"
        )
    model.fc = make_head(head, layer4_channels(model), classes)
    model.__class__ = MapHeadResNet
    return model


def make_head(head, feature_channels: int, classes) -> nn.Module:
    """The head module for ``classes`` of ``head``, what :func:`resolve_head`
    gave: a ``Linear`` for None (``"linear"``), else
    ``head(feature_channels, classes)``, which must be a module (a TypeError
    otherwise)."""
    if head is None:
        return nn.Linear(feature_channels, len(classes))
    module = head(feature_channels, classes)
    if not isinstance(module, nn.Module):
        raise TypeError(
            f"head={head!r} returned {type(module).__name__}; a head called as "
            "head(feature_channels, classes) must return a torch.nn.Module"
        )
    return module


def head_fits(model: nn.Module, head, classes) -> bool:
    """Whether ``model``'s head is the module ``head`` (resolved) asks for
    ``classes`` (the same tensors of the same shapes), built on the meta
    device."""
    with torch.device("meta"):
        wanted = make_head(head, layer4_channels(model), classes).state_dict()
    kept = model.fc.state_dict()
    return {k: v.shape for k, v in wanted.items()} == {
        k: v.shape for k, v in kept.items()
    }


def check_new_network(
    arch: Arch,
    head,
    classes,
    in_channels: int,
    *,
    lora_rank: int | None = None,
    trainable: Sequence[str] = (),
    image_size: tuple[int, int] | None = None,
) -> None:
    """Check what only the network can tell, on a weightless copy of it (on
    the meta device): that a callable ``arch`` builds a ResNet, that
    ``lora_rank`` suits the convolutions of the ``trainable`` stages, and
    (given an ``image_size``) that ``head`` (resolved, as for
    :func:`build_resnet`) gives one output per class."""
    probe_head = image_size is not None and head is not None
    if lora_rank is None and not callable(arch) and not probe_head:
        return
    n_classes = len(classes)
    with torch.device("meta"):
        probe = build_resnet(
            arch, None, n_classes, in_channels, head=head, classes=classes
        )
        if probe_head:
            output = probe(torch.empty(2, in_channels, *image_size))
            if tuple(output.shape) != (2, n_classes):
                raise ValueError(
                    f"head={head!r} returned logits of shape "
                    f"{tuple(output.shape)} for 2 images; expected (2, {n_classes}): "
                    "one per class"
                )
    if lora_rank is not None:
        check_lora_rank(probe, lora_rank, trainable)


def check_kept_network(module: nn.Module, in_channels: int, head, classes) -> None:
    """Refuse a warm start whose data or ``head`` (resolved) the fitted
    network cannot take."""
    if module.conv1.in_channels != in_channels:
        raise ValueError(
            "warm_start=True continues the fitted network, whose stem takes "
            f"{module.conv1.in_channels} channel(s); this fit needs "
            f"{in_channels}. The stem's channels follow the images and "
            "normalization (1 for grayscale normalised alike in every channel, "
            "else 3): keep the first fit's normalization, or set warm_start=False"
        )
    if not head_fits(module, head, classes):
        raise ValueError(
            "warm_start=True continues the fitted network, whose head differs "
            "from the one the head parameter asks for: keep the first fit's "
            "head, or set warm_start=False"
        )


def reads_digits(model: nn.Module) -> bool:
    """Whether ``model``'s head reads digits (``read_digits``)."""
    return hasattr(model.fc, "read_digits")


def read_digits(model: nn.Module, inputs: torch.Tensor) -> torch.Tensor:
    """The digits ``model``'s head reads in ``inputs``, as floats."""
    return model.fc.read_digits(feature_map(model, inputs))


def rebuilt_network(
    arch: Arch, head, classes, state_dict: dict[str, torch.Tensor]
) -> nn.Module:
    """A fitted network back from its ``state_dict`` (unpickling, loading a
    saved model): built on the meta device and given the tensors as they
    are, with a head other than ``"linear"`` built for real (its buffers,
    not in the state dict, must be)."""
    in_channels = state_dict["conv1.weight"].shape[1]
    with torch.device("meta"):
        model = build_resnet(arch, None, len(classes), in_channels)
    spec = resolve_head(head)
    if spec is not None:
        attach_head(model, spec, classes)
    model.load_state_dict(state_dict, assign=True)
    return model.to(memory_format=torch.channels_last).eval()


def layer4_channels(model: nn.Module) -> int:
    """Channels of the last stage's output: its last block's last norm."""
    norms = [m for m in model.layer4.modules() if isinstance(m, nn.BatchNorm2d)]
    return norms[-1].num_features


def _loaded_summary(
    weights, state_dict: dict[str, torch.Tensor], dropped: list[str], n_classes: int
) -> str:
    """One line: which tensors of ``weights`` the network took."""
    source = f"'{weights}'" if isinstance(weights, Path) else str(weights)
    if not dropped:
        has_head = any(k.startswith("fc.") for k in state_dict)
        return f"weights: took all {len(state_dict)} tensors of {source}" + (
            "" if has_head else " (it has no head; the head is new)"
        )
    file_head = state_dict.get("fc.weight")
    what = (
        f"{file_head.shape[0]}-class head"
        if file_head is not None and file_head.ndim == 2
        else "head"
    )
    return (
        f"weights: took {len(state_dict) - len(dropped)} of the "
        f"{len(state_dict)} tensors of {source}; dropped its {what} "
        f"({', '.join(dropped)}) for a new {n_classes}-class one"
    )


def to_torchvision_layout(model: nn.Module) -> dict[str, torch.Tensor]:
    """The model's state dict as torchvision's RGB model expects it.

    A folded grayscale stem is spread back over three channels (each about a
    third of the sum, see ``spread_over_rgb``), which gives the same outputs on
    channel-repeated input, so the file loads straight into
    ``torchvision.models.<arch>(num_classes=...)``. Low-rank adapters are
    merged into their weights (the model keeps them). The tensors are on the
    CPU, so a file written on a GPU loads anywhere.
    """
    # A model with low-rank adapters is written with them merged.
    state_dict = {
        k: v.detach().to("cpu", copy=True) for k, v in merged_state_dict(model).items()
    }
    conv1 = state_dict["conv1.weight"]
    if conv1.shape[1] == 1:
        state_dict["conv1.weight"] = spread_over_rgb(conv1)
    return state_dict


def spread_over_rgb(kernel: torch.Tensor) -> torch.Tensor:
    """Spread a 1-channel ``conv1`` kernel over 3 channels that sum back to it.

    Each channel gets about a third, rounded to a multiple of the spacing of
    floats at the kernel's value, so that the three parts and their partial
    sums are exact in float32: folding them again (a sum over channels, in
    any order) gives the kernel back bit for bit, and a model saved in
    torchvision's layout predicts exactly as the fitted one once reloaded.
    """
    magnitude = kernel.abs()
    upwards = torch.full_like(magnitude, float("inf"))
    spacing = (torch.nextafter(magnitude, upwards) - magnitude).double()
    third = torch.round(kernel.double() / 3 / spacing) * spacing
    rest = kernel.double() - 2 * third
    return torch.cat([third, third, rest], dim=1).to(kernel.dtype)


def _new_network(arch: Arch) -> nn.Module:
    if isinstance(arch, str):
        return getattr(torchvision.models, arch)(weights=None)
    # No arguments: like a named builder's default network, its head is
    # replaced to fit the classes, so the callable needs no given signature.
    model = arch()
    label = _arch_label(arch)
    if not isinstance(model, torchvision.models.ResNet):
        raise TypeError(
            f"arch={label} returned {type(model).__name__}; a callable arch must "
            "return a torchvision.models.ResNet, e.g. functools.partial("
            "torchvision.models.resnet.ResNet, BasicBlock, [1, 1, 1, 1])"
        )
    wrong = [
        f"{name} ({kind.__name__})"
        for name, kind in _RESNET_LAYOUT
        if not isinstance(getattr(model, name, None), kind)
    ]
    if wrong:
        raise TypeError(
            f"arch={label} returned a ResNet without ResNet's layout: it needs "
            f"{', '.join(wrong)}"
        )
    if model.conv1.in_channels != 3:
        raise ValueError(
            f"arch={label} returned a ResNet whose conv1 takes "
            f"{model.conv1.in_channels} input channels; it must take 3 (RGB), "
            "which grayscale images fold into 1"
        )
    return model


def _arch_label(arch: Arch) -> str:
    if isinstance(arch, (str, functools.partial)):
        return repr(arch)
    return getattr(arch, "__qualname__", None) or repr(arch)


def _read_weights(weights: WeightsEnum | Path) -> dict[str, torch.Tensor]:
    if isinstance(weights, Path):
        return load_state_dict_file(weights)
    file_name = os.path.basename(weights.url)
    cache_file = Path(torch.hub.get_dir()) / "checkpoints" / file_name
    try:
        # torchvision's own cache (TORCH_HOME): a file already there is not fetched.
        return torch.hub.load_state_dict_from_url(
            weights.url,
            map_location="cpu",
            progress=False,
            check_hash=True,
            weights_only=True,
        )
    except pickle.UnpicklingError as exc:
        raise WeightsUnavailableError(
            f"the cached weights file '{cache_file}' is corrupt ({exc}); delete it "
            "to download it again, or pass weights=None or a local file"
        ) from exc
    except (OSError, RuntimeError) as exc:
        raise WeightsUnavailableError(
            f"could not download the pretrained weights {weights} from "
            f"{weights.url} ({type(exc).__name__}: {exc}). To go on without a "
            "network: pass weights=None to train from random initialisation; or "
            "pass weights='/path/to/state_dict.pth', a file in torchvision's "
            "layout; or fill torchvision's cache by copying that file to "
            f"'{cache_file}' (the folder follows TORCH_HOME)."
        ) from exc


def _load_weights(
    model: nn.Module, state_dict: dict[str, torch.Tensor], arch: Arch, source=None
) -> list[str]:
    """Load a state dict into ``model``: the body exactly, the head only when
    the file's fits the model's; return the file's head keys left out.

    A one-channel ``conv1`` is spread over three channels (see
    ``to_torchvision_layout``). A stem for any other number of channels is
    refused: no rule maps it to RGB without changing what the network
    computes. Every key but the head's must be there, with its shape.
    """
    state_dict = dict(state_dict)
    expected = model.state_dict()
    where = f" in '{source}'" if isinstance(source, Path) else ""
    conv1 = state_dict.get("conv1.weight")
    if conv1 is not None and conv1.ndim == 4 and conv1.shape[1] == 1:
        state_dict["conv1.weight"] = spread_over_rgb(conv1)
    elif conv1 is not None and conv1.ndim == 4 and conv1.shape[1] != 3:
        raise ValueError(
            f"the weights{where} have a stem (conv1) for {conv1.shape[1]} input "
            "channels; only 1 (grayscale, spread over RGB) or 3 (RGB) can be "
            "adapted to the images"
        )
    file_head = {k for k in state_dict if k.startswith("fc.")}
    model_head = {k for k in expected if k.startswith("fc.")}
    head_fits = file_head == model_head and all(
        state_dict[k].shape == expected[k].shape for k in file_head
    )
    # Part of this very head (say fc.weight without fc.bias), or a linear head
    # whose tensors disagree on the class count, is a damaged file, refused
    # below; another task's head is dropped for the new one.
    partial_head = bool(file_head) and (
        file_head < model_head or _damaged_linear_head(state_dict, model)
    )
    dropped = (
        [] if head_fits or partial_head else [k for k in state_dict if k in file_head]
    )
    for key in dropped:
        del state_dict[key]
    missing = [
        k
        for k in expected
        if k not in state_dict
        and not k.endswith("num_batches_tracked")
        and (k not in model_head or partial_head)
    ]
    unexpected = [k for k in state_dict if k not in expected]
    wrong_shape = [
        f"{k} (file {tuple(state_dict[k].shape)}, {arch} {tuple(expected[k].shape)})"
        for k in expected
        if k in state_dict and state_dict[k].shape != expected[k].shape
    ]
    if missing or unexpected or wrong_shape:
        parts = []
        for label, keys in (
            ("missing keys", missing),
            ("unexpected keys", unexpected),
            ("shape mismatches", wrong_shape),
        ):
            if keys:
                shown = ", ".join(keys[:8]) + (" ..." if len(keys) > 8 else "")
                parts.append(f"{len(keys)} {label}: {shown}")
        raise ValueError(
            f"the weights{where} do not fit arch={_arch_label(arch)} (saved from "
            "another architecture?): " + "; ".join(parts)
        )
    for key, value in expected.items():
        state_dict.setdefault(key, value)
    model.load_state_dict(state_dict)
    return dropped


def _damaged_linear_head(state_dict: dict[str, torch.Tensor], model) -> bool:
    """Whether a file's linear head disagrees with itself (a weight for one
    number of classes, a bias for another)."""
    weight, bias = state_dict.get("fc.weight"), state_dict.get("fc.bias")
    if not isinstance(model.fc, nn.Linear) or weight is None or bias is None:
        return False
    return weight.ndim != 2 or tuple(bias.shape) != (weight.shape[0],)


def _fold_to_one_channel(conv: nn.Conv2d) -> nn.Conv2d:
    folded = nn.Conv2d(
        1,
        conv.out_channels,
        kernel_size=conv.kernel_size,
        stride=conv.stride,
        padding=conv.padding,
        bias=conv.bias is not None,
    )
    with torch.no_grad():
        folded.weight.copy_(conv.weight.sum(dim=1, keepdim=True))
        if conv.bias is not None:
            folded.bias.copy_(conv.bias)
    return folded


def _weight_names(weights_enum) -> str:
    return ", ".join(repr(name) for name in weights_enum.__members__)


def _looks_like_path(text: str) -> bool:
    suffixes = (".pth", ".pt", ".safetensors")
    return os.sep in text or "/" in text or Path(text).suffix in suffixes
