"""A ResNet18 encoder pretrained as an autoencoder on unlabelled digit images.

The report trained an autoencoder on its images and classified in the
latent space, then abandoned the approach. Done as a fair comparison
(benchmark code, not library API):

1. :class:`ResNetAutoencoder`: the encoder is torchvision's ResNet18 body
   (``conv1`` .. ``layer4``, a one-channel stem as the library folds
   grayscale input), the decoder a few transposed convolutions back to the
   image size; trained on *unlabelled* images from the training pool of
   digits (binary cross-entropy on pixel values in [0, 1]);
2. its encoder is saved as a torchvision-layout state dict without any
   ``fc.*`` key (:func:`save_encoder`, safetensors), which
   ``ResNetFineTuneClassifier(arch="resnet18", weights=path)`` takes: the
   head is new anyway;
3. (a) the estimator fine-tunes from that file (its defaults), and (b) the
   report's latent-space classifier: the encoder's pooled features (average
   pooling of ``layer4``) and :class:`~sklearn.linear_model.LogisticRegression`
   on the sum label. Both are compared with the same from random weights
   and, for (b), from the stand-in (``standin.py``).

Train, validation and test images draw their digits from disjoint pools of
``load_digits`` rows (``segment_digits.digit_pools``, inside the stand-in's
target half); the autoencoder sees unlabelled images of the training pool
only::

    python benchmarks/autoencoder.py --ae-samples 4000 --ae-epochs 4 \\
        --n-train 2000 --epochs 6 --json benchmarks/results/autoencoder_sums.json

The encoder file is cached in ``benchmarks/.cache/`` (git-ignored), named by
a hash of its settings; ``--encoder-only`` makes it and prints its path, to
pass as ``weights=`` elsewhere.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import platform
import sys
import time
import warnings
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
import torch.nn.functional as F
from safetensors.torch import save_file
from sklearn.linear_model import LogisticRegression
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _harness import mean_se_text  # noqa: E402
from segment_digits import digit_pools  # noqa: E402
from standin import CACHE_DIR, StandinConfig, make_standin  # noqa: E402

from resnetclf import ResNetFineTuneClassifier  # noqa: E402
from resnetclf._backbone import build_resnet, spread_over_rgb  # noqa: E402
from resnetclf.datasets import make_digit_sums  # noqa: E402

# The encoder's modules, in torchvision's names: its state dict is a ResNet's
# without ``fc``.
ENCODER_MODULES = (
    "conv1",
    "bn1",
    "relu",
    "maxpool",
    "layer1",
    "layer2",
    "layer3",
    "layer4",
)


def _normalise(images: np.ndarray | torch.Tensor) -> torch.Tensor:
    """uint8 images ``(N, H, W)`` -> ``(N, 1, H, W)`` float, as the estimator's
    default normalisation ``(0.5, 0.5)`` gives them."""
    x = torch.as_tensor(np.asarray(images), dtype=torch.float32).unsqueeze(1) / 255.0
    return (x - 0.5) / 0.5


class ResNetAutoencoder(nn.Module):
    """ResNet18 body as encoder, transposed convolutions as decoder.

    Parameters
    ----------
    image_shape : tuple of (int, int), default=(40, 168)
        ``(height, width)`` of the images; the decoder's output is resized to
        it.
    arch : str, default="resnet18"
        torchvision builder of the encoder (the BasicBlock ones: 512 channels
        out of ``layer4``).
    """

    def __init__(
        self, image_shape: tuple[int, int] = (40, 168), arch: str = "resnet18"
    ):
        super().__init__()
        self.image_shape = tuple(image_shape)
        network = build_resnet(arch, None, 10, in_channels=1)
        # Named as torchvision names them, so the state dict's keys are its.
        self.encoder = nn.Sequential()
        for name in ENCODER_MODULES:
            self.encoder.add_module(name, getattr(network, name))
        channels = [network.fc.in_features, 256, 128, 64, 32, 16]
        layers: list[nn.Module] = []
        for c_in, c_out in zip(channels[:-1], channels[1:]):
            layers += [
                nn.ConvTranspose2d(c_in, c_out, 4, stride=2, padding=1, bias=False),
                nn.BatchNorm2d(c_out),
                nn.ReLU(inplace=True),
            ]
        layers.append(nn.Conv2d(channels[-1], 1, 3, padding=1))
        self.decoder = nn.Sequential(*layers)

    def encode(self, x: torch.Tensor) -> torch.Tensor:
        """The last stage's map ``(N, 512, h, w)`` of normalised images."""
        return self.encoder(x)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Pooled latent features ``(N, 512)``: average pooling of ``layer4``."""
        return self.encode(x).mean(dim=(2, 3))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """Reconstruction logits ``(N, 1, H, W)`` (sigmoid gives [0, 1])."""
        out = self.decoder(self.encode(x))
        return F.interpolate(
            out, size=self.image_shape, mode="bilinear", align_corners=False
        )


def encoder_state_dict(model: ResNetAutoencoder) -> dict[str, torch.Tensor]:
    """The encoder as torchvision's RGB ResNet expects it, without ``fc``.

    The one-channel stem is spread over three channels that sum back to it
    exactly (the library folds it again on grayscale images).
    """
    state = {
        k: v.detach().to("cpu").contiguous().clone()
        for k, v in model.encoder.state_dict().items()
    }
    state["conv1.weight"] = spread_over_rgb(state["conv1.weight"]).contiguous()
    return state


def save_encoder(model: ResNetAutoencoder, path: Path) -> Path:
    """Write :func:`encoder_state_dict` as a safetensors file.

    ``ResNetFineTuneClassifier(arch="resnet18", weights=path)`` takes it.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    save_file(encoder_state_dict(model), str(path))
    return path


@dataclass(frozen=True)
class AEConfig:
    """Settings of the autoencoder's pretraining; each gives a file of its own.

    Attributes
    ----------
    n_samples : int
        Unlabelled images, composed from the training pool of digits.
    epochs : int
        Passes over them.
    batch_size : int
        Images per step.
    lr : float
        Adam's rate.
    seed : int
        Seeds the images and the training.
    arch : str
        torchvision builder of the encoder.
    """

    n_samples: int = 4000
    epochs: int = 4
    batch_size: int = 64
    lr: float = 1e-3
    seed: int = 0
    arch: str = "resnet18"

    def key(self) -> str:
        """A short hash of every setting, for the cache's file name."""
        text = json.dumps(asdict(self), sort_keys=True)
        return hashlib.sha256(text.encode()).hexdigest()[:12]


def train_autoencoder(
    images: np.ndarray, config: AEConfig, verbose: bool = True
) -> tuple[ResNetAutoencoder, list[dict[str, float]]]:
    """Train on unlabelled ``images`` (uint8 ``(N, H, W)``); the model and
    its per-epoch mean loss and seconds."""
    torch.manual_seed(config.seed)
    generator = torch.Generator().manual_seed(config.seed)
    model = ResNetAutoencoder(images.shape[1:], config.arch)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr)
    inputs = _normalise(images)
    targets = inputs * 0.5 + 0.5
    history = []
    for epoch in range(config.epochs):
        model.train()
        start = time.perf_counter()
        order = torch.randperm(len(inputs), generator=generator)
        total = 0.0
        for i in range(0, len(inputs), config.batch_size):
            index = order[i : i + config.batch_size]
            loss = F.binary_cross_entropy_with_logits(
                model(inputs[index]), targets[index]
            )
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            total += loss.item() * len(index)
        seconds = time.perf_counter() - start
        history.append(
            {"epoch": epoch + 1, "bce": total / len(inputs), "seconds": seconds}
        )
        if verbose:
            print(
                f"  autoencoder epoch {epoch + 1}: BCE {total / len(inputs):.4f} "
                f"({seconds:.0f} s)",
                file=sys.stderr,
            )
    return model, history


def make_encoder(
    config: AEConfig = AEConfig(), cache_dir: Path = CACHE_DIR, verbose: bool = True
) -> tuple[Path, dict[str, Any]]:
    """Pretrain the autoencoder and save its encoder, or return the cached file.

    Returns
    -------
    path : pathlib.Path
        The encoder's safetensors file (no ``fc.*``), for ``weights=``.
    info : dict
        Settings, loss per epoch, seconds, test reconstruction loss.
    """
    cache_dir = Path(cache_dir)
    stem = f"ae-encoder-{config.arch}-{config.key()}"
    path, info_path = cache_dir / f"{stem}.safetensors", cache_dir / f"{stem}.json"
    if path.is_file() and info_path.is_file():
        return path, json.loads(info_path.read_text())
    train_pool, _, test_pool = digit_pools()
    images, _ = make_digit_sums(
        config.n_samples, random_state=3000 + config.seed, digit_indices=train_pool
    )
    start = time.perf_counter()
    model, history = train_autoencoder(images, config, verbose)
    seconds = time.perf_counter() - start
    held_out, _ = make_digit_sums(500, random_state=4000, digit_indices=test_pool)
    model.eval()
    with torch.no_grad():
        x = _normalise(held_out)
        test_bce = float(F.binary_cross_entropy_with_logits(model(x), x * 0.5 + 0.5))
    info = {
        "config": asdict(config),
        "data": "unlabelled 40x168 four-digit images from the training pool",
        "history": history,
        "seconds": seconds,
        "held_out_bce": test_bce,
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
    }
    partial = cache_dir / f"{stem}.partial.safetensors"
    save_encoder(model, partial)
    partial.replace(path)
    info_path.write_text(json.dumps(info, indent=2))
    if verbose:
        print(f"encoder {path} ({seconds:.0f} s)", file=sys.stderr)
    return path, info


def encoder_body(weights: Path | None, arch: str = "resnet18") -> nn.Module:
    """``conv1`` .. ``layer4`` of a network built as the estimator builds it
    from ``weights`` (None: random, seeded by the caller), in evaluation mode.

    Build it once and use it for every split: two random networks give
    features that have nothing to do with each other.
    """
    network = build_resnet(arch, weights, 10, in_channels=1).eval()
    return nn.Sequential(*[getattr(network, name) for name in ENCODER_MODULES])


def pooled_features(
    body: nn.Module, images: np.ndarray, batch: int = 256
) -> np.ndarray:
    """Average-pooled ``layer4`` features ``(N, 512)`` of ``body``
    (:func:`encoder_body`) on uint8 images ``(N, H, W)``."""
    parts = []
    with torch.no_grad():
        for start in range(0, len(images), batch):
            x = _normalise(images[start : start + batch])
            parts.append(body(x).mean(dim=(2, 3)))
    return torch.cat(parts).numpy()


def latent_logistic(
    weights: Path | None,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int,
    cs: tuple[float, ...] = (1.0,),
) -> dict[str, Any]:
    """Pooled features + standardisation + ``LogisticRegression``.

    With several inverse regularisation strengths ``cs``, the one with the
    best validation accuracy is kept; the test set judges it.
    """
    torch.manual_seed(seed)
    start = time.perf_counter()
    body = encoder_body(weights)
    features = {
        name: pooled_features(body, images)
        for name, (images, _) in (("train", train), ("val", val), ("test", test))
    }
    best: tuple[float, float, Any] = (-1.0, 0.0, None)
    val_accuracy = {}
    for c in cs:
        classifier = make_pipeline(
            StandardScaler(), LogisticRegression(C=c, max_iter=2000)
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            classifier.fit(features["train"], train[1])
        accuracy = float(classifier.score(features["val"], val[1]))
        val_accuracy[str(c)] = accuracy
        if accuracy > best[0]:
            best = (accuracy, c, classifier)
    _, c, classifier = best
    return {
        "C": c,
        "val_accuracy_per_C": val_accuracy,
        "val_accuracy": best[0],
        "train_accuracy": float(classifier.score(features["train"], train[1])),
        "test_accuracy": float(classifier.score(features["test"], test[1])),
        "seconds": time.perf_counter() - start,
    }


def fine_tune(
    weights: Path | None,
    train: tuple[np.ndarray, np.ndarray],
    val: tuple[np.ndarray, np.ndarray],
    test: tuple[np.ndarray, np.ndarray],
    seed: int,
    epochs: int,
    batch_size: int,
    params: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """The estimator's defaults (and ``params``) from ``weights``: test
    accuracy of the best validation epoch."""
    clf = ResNetFineTuneClassifier(
        arch="resnet18",
        weights=weights,
        max_iter=epochs,
        batch_size=batch_size,
        device="cpu",
        random_state=seed,
        **(params or {}),
    )
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(train[0], train[1], X_val=val[0], y_val=val[1])
    seconds = time.perf_counter() - start
    curve = [record["val_accuracy"] for record in clf.history_]
    return {
        "test_accuracy": float(clf.score(test[0], test[1])),
        "val_accuracy": max(curve),
        "val_accuracy_per_epoch": curve,
        "best_epoch": clf.best_epoch_,
        "seconds": seconds,
        "seconds_per_epoch": seconds / epochs,
    }


def run(args: argparse.Namespace) -> dict[str, Any]:
    """Make (or reuse) the encoder, then every comparison on every seed."""
    ae_config = AEConfig(
        n_samples=args.ae_samples,
        epochs=args.ae_epochs,
        batch_size=args.ae_batch_size,
        seed=args.ae_seed,
    )
    encoder, ae_info = make_encoder(ae_config, args.cache_dir)
    standin = make_standin(StandinConfig(), cache_dir=args.cache_dir)
    sources = {"autoencoder": encoder, "random": None, "standin": standin.path}
    train_pool, val_pool, test_pool = digit_pools()
    latent: dict[str, list] = {name: [] for name in args.latent.split(",") if name}
    tuned: dict[str, list] = {name: [] for name in args.finetune.split(",") if name}
    cs = tuple(float(c) for c in args.latent_c.split(","))
    for seed in range(args.first_seed, args.first_seed + args.seeds):
        # The same seeds and pools as segment_digits.py's runs.
        train = make_digit_sums(
            args.n_train, random_state=seed, digit_indices=train_pool
        )
        val = make_digit_sums(
            args.n_val, random_state=1000 + seed, digit_indices=val_pool
        )
        test = make_digit_sums(
            args.n_test, random_state=2000 + seed, digit_indices=test_pool
        )
        for name in latent:
            result = latent_logistic(sources[name], train, val, test, seed, cs)
            latent[name].append({"seed": seed, **result})
            print(
                f"  seed {seed} latent+LR from {name}: test "
                f"{result['test_accuracy']:.3f} (train {result['train_accuracy']:.3f})",
                file=sys.stderr,
            )
        for name in tuned:
            result = fine_tune(
                sources[name], train, val, test, seed, args.epochs, args.batch_size
            )
            tuned[name].append({"seed": seed, **result})
            print(
                f"  seed {seed} fine-tune from {name}: test "
                f"{result['test_accuracy']:.3f} (best epoch {result['best_epoch']}, "
                f"{result['seconds']:.0f} s)",
                file=sys.stderr,
            )
    return {
        "config": {
            k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()
        },
        "encoder": {"path": str(encoder), **ae_info},
        "standin": standin.info,
        "machine": platform.processor() or platform.machine(),
        "torch": torch.__version__,
        "threads": torch.get_num_threads(),
        "latent_logistic": latent,
        "fine_tune": tuned,
    }


def markdown_table(result: dict[str, Any]) -> str:
    """Test accuracy of each approach as a Markdown table."""
    lines = [
        "| approach | weights | seeds | test sum accuracy | best epochs | seconds |",
        "|---|---|---:|---:|---|---:|",
    ]
    for name, runs in result["latent_logistic"].items():
        chosen = ", ".join(str(r.get("C", 1.0)) for r in runs)
        if runs:
            lines.append(
                f"| pooled layer4 features + LogisticRegression (C {chosen}) "
                f"| {name} | {len(runs)} "
                f"| {mean_se_text([r['test_accuracy'] for r in runs])} | - "
                f"| {np.mean([r['seconds'] for r in runs]):.0f} |"
            )
    for name, runs in result["fine_tune"].items():
        if runs:
            lines.append(
                f"| estimator defaults, fine-tuned | {name} | {len(runs)} "
                f"| {mean_se_text([r['test_accuracy'] for r in runs])} "
                f"| {', '.join(str(r['best_epoch']) for r in runs)} "
                f"| {np.mean([r['seconds'] for r in runs]):.0f} |"
            )
    return "\n".join(lines)


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    defaults = AEConfig()
    parser.add_argument("--ae-samples", type=int, default=defaults.n_samples)
    parser.add_argument("--ae-epochs", type=int, default=defaults.epochs)
    parser.add_argument("--ae-batch-size", type=int, default=defaults.batch_size)
    parser.add_argument("--ae-seed", type=int, default=defaults.seed)
    parser.add_argument("--n-train", type=int, default=2000)
    parser.add_argument("--n-val", type=int, default=500)
    parser.add_argument("--n-test", type=int, default=2000)
    parser.add_argument("--epochs", type=int, default=6, help="fine-tuning epochs")
    parser.add_argument("--batch-size", type=int, default=64, help="fine-tuning's")
    parser.add_argument("--seeds", type=int, default=1)
    parser.add_argument("--first-seed", type=int, default=0)
    parser.add_argument(
        "--latent",
        default="autoencoder,random,standin",
        help="encoders for the latent classifier (comma-separated; '' for none)",
    )
    parser.add_argument(
        "--latent-c",
        default="1.0",
        help="LogisticRegression's C, comma-separated; with several, the best "
        "on validation is kept (default: 1.0)",
    )
    parser.add_argument(
        "--finetune",
        default="autoencoder,random",
        help="initial weights to fine-tune from (comma-separated; '' for none)",
    )
    parser.add_argument(
        "--encoder-only",
        action="store_true",
        help="make (or find) the encoder file, print its path, and stop",
    )
    parser.add_argument("--cache-dir", type=Path, default=CACHE_DIR)
    parser.add_argument("--threads", type=int, help="torch.set_num_threads")
    parser.add_argument("--json", type=Path, help="write the results here")
    parser.add_argument(
        "--markdown", type=Path, help="print a saved result's table; train nothing"
    )
    return parser


def main(argv: list[str] | None = None) -> dict[str, Any]:
    args = _parser().parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    if args.markdown:
        result = json.loads(args.markdown.read_text())
        print(markdown_table(result))
        return result
    if args.encoder_only:
        config = AEConfig(
            args.ae_samples, args.ae_epochs, args.ae_batch_size, seed=args.ae_seed
        )
        path, info = make_encoder(config, args.cache_dir)
        print(json.dumps({"path": str(path), **info}, indent=2))
        return {"path": str(path), **info}
    result = run(args)
    print(markdown_table(result))
    if args.json:
        args.json.parent.mkdir(parents=True, exist_ok=True)
        args.json.write_text(json.dumps(result, indent=2, default=str))
    return result


if __name__ == "__main__":
    main()
