"""A model file that runs no code when loaded: safetensors plus plain JSON.

``save_model`` writes a folder with two files:

``model.safetensors``
    The fitted network's tensors in torchvision's layout, in the safetensors
    format: a JSON header and raw bytes, no pickle.
``estimator.json``
    The parameters, the fitted attributes prediction needs and ``history_``,
    as a fixed schema of plain JSON (``resnetclf._model_json``), with the
    SHA-256 of ``model.safetensors``.

Loading never unpickles: no ``torch.load``, no ``pickle``.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path

import torch
from sklearn.utils.validation import check_is_fitted

from resnetclf._backbone import build_resnet, check_arch, to_torchvision_layout
from resnetclf._checkpoint import read_safetensors, save_state_dict_atomic, write_atomic
from resnetclf._estimator import ResNetFineTuneClassifier
from resnetclf._model_json import (
    ESTIMATOR_FILE,
    FORMAT_NAME,
    FORMAT_VERSION,
    WEIGHTS_FILE,
    decode_document,
    describe,
    read_document,
)

__all__ = [
    "ESTIMATOR_FILE",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "WEIGHTS_FILE",
    "load_model",
    "save_model",
]


# ------------------------------------------------------------------- saving
def save_model(estimator: ResNetFineTuneClassifier, path: str | os.PathLike) -> Path:
    """Save a fitted estimator to a folder that loads without running code.

    The folder gets ``model.safetensors``, the network's tensors in
    torchvision's layout (``torchvision.models.<arch>(num_classes=n_classes)``
    loads them as they are; a grayscale stem is spread over three channels),
    and ``estimator.json``: the parameters, the fitted attributes
    (``classes_`` with their dtype, ``image_shape_``, ``n_features_in_``,
    ``feature_names_in_``, ``history_``, ``best_epoch_``, ``best_score_``,
    ``n_iter_``, ``n_trainable_params_``, ``device_``, the normalisation
    statistics and the network's input channels), the format version, the
    library, scikit-learn and torch versions, and a SHA-256 of
    ``model.safetensors``. Other attributes set on the estimator are not kept.

    Unlike pickle, which can store any estimator, this format holds only
    plain values. An estimator with a parameter it cannot store exactly (a
    function as ``arch`` or ``scoring``, non-finite numbers, ...) is refused
    with a ValueError before anything is written.

    Parameters
    ----------
    estimator : ResNetFineTuneClassifier
        A fitted estimator.
    path : str or path
        The folder to write (created if needed; the two files in it are
        replaced).

    Returns
    -------
    path : Path
        The folder.

    Raises
    ------
    TypeError
        If ``estimator`` is not a ResNetFineTuneClassifier.
    sklearn.exceptions.NotFittedError
        If it is not fitted.
    ValueError
        If a parameter or attribute cannot be stored in JSON, or ``path`` is
        a file.

    See Also
    --------
    load_model : read the folder back.

    Examples
    --------
    >>> import numpy as np
    >>> from resnetclf import ResNetFineTuneClassifier, load_model, save_model
    >>> rng = np.random.RandomState(0)
    >>> X = rng.randint(0, 256, size=(16, 12, 12), dtype=np.uint8)
    >>> y = np.arange(16) % 2
    >>> clf = ResNetFineTuneClassifier(arch="resnet18", weights=None, max_iter=1,
    ...                                batch_size=8, random_state=0).fit(X, y)
    >>> import tempfile, os
    >>> folder = save_model(clf, os.path.join(tempfile.mkdtemp(), "model"))
    >>> sorted(p.name for p in folder.iterdir())
    ['estimator.json', 'model.safetensors']
    >>> bool(np.array_equal(load_model(folder).predict_proba(X),
    ...                     clf.predict_proba(X)))
    True
    """
    if not isinstance(estimator, ResNetFineTuneClassifier):
        raise TypeError(
            "save_model stores a ResNetFineTuneClassifier; got "
            f"{type(estimator).__name__}"
        )
    check_is_fitted(estimator)
    folder = Path(path)
    if folder.exists() and not folder.is_dir():
        raise ValueError(f"path must be a folder; '{folder}' is a file")
    # Everything is encoded first, so a refusal leaves no half-written folder.
    document = describe(estimator)
    weights = to_torchvision_layout(estimator.module_)
    folder.mkdir(parents=True, exist_ok=True)
    weights_path = save_state_dict_atomic(weights, folder / WEIGHTS_FILE)
    document["weights"]["sha256"] = hashlib.sha256(
        weights_path.read_bytes()
    ).hexdigest()
    text = json.dumps(document, indent=1, allow_nan=False) + "\n"
    write_atomic(folder / ESTIMATOR_FILE, text.encode("utf-8"))
    return folder


# ------------------------------------------------------------------ loading
def load_model(path: str | os.PathLike) -> ResNetFineTuneClassifier:
    """Load an estimator saved by :func:`save_model`, without running code.

    ``estimator.json`` is parsed as plain JSON and checked strictly against
    its fixed schema (format and version, every key and the type of every
    value, the parameters through the estimator's own validation, the
    classes against the network's outputs); ``model.safetensors`` must match
    the SHA-256 recorded at save time, is read with a safetensors reader that
    checks its header against its size before allocating anything, and its
    tensors must fit the architecture exactly. Nothing is unpickled
    (neither ``torch.load`` nor ``pickle`` runs) and nothing is downloaded,
    so the loaded estimator predicts exactly as the saved one did.

    Parameters
    ----------
    path : str or path
        The folder written by :func:`save_model`.

    Returns
    -------
    estimator : ResNetFineTuneClassifier
        Fitted, with the saved parameters and attributes; the network is on
        the CPU and moves to ``device`` when predicting.

    Raises
    ------
    FileNotFoundError
        If the folder or one of its two files is missing.
    ValueError
        If a file is not what ``save_model`` writes: another format, a newer
        version or version 1 (``weights.pth``, see the user guide to convert
        it), JSON that does not parse or has unexpected keys or values,
        weights that were changed, are not a valid safetensors file, or do
        not fit.

    See Also
    --------
    save_model : write the folder.
    """
    folder = Path(path)
    json_path, weights_path = folder / ESTIMATOR_FILE, folder / WEIGHTS_FILE
    if not json_path.is_file():
        raise FileNotFoundError(
            f"'{json_path}' not found: load_model reads a folder written by "
            f"save_model, holding {ESTIMATOR_FILE} and {WEIGHTS_FILE}"
        )
    document = read_document(json_path)
    try:
        params, fitted = decode_document(document)
        estimator = ResNetFineTuneClassifier(**params)
        estimator._validate_params()
        check_arch(estimator.arch)
    except (ValueError, TypeError, KeyError, OverflowError, RecursionError) as exc:
        raise ValueError(
            f"'{json_path}' is not a valid model file: {' '.join(str(exc).split())}"
        ) from exc
    if not weights_path.is_file():
        raise FileNotFoundError(f"'{weights_path}' not found, next to '{json_path}'")
    data = weights_path.read_bytes()
    if hashlib.sha256(data).hexdigest() != document["weights"]["sha256"]:
        raise ValueError(
            f"'{weights_path}' is not the file saved with '{json_path}' (its "
            "SHA-256 differs from the one recorded): the folder was changed "
            "after save_model"
        )
    state_dict = read_safetensors(data, weights_path)
    _check_state_dict(state_dict, estimator, fitted["classes_"], weights_path)
    if fitted["_model_channels"] == 1:
        # Exact: save_model spread the kernel so that its channels sum back to it.
        kernel = state_dict["conv1.weight"]
        state_dict["conv1.weight"] = kernel.sum(dim=1, keepdim=True)
    # The estimator's own unpickling step builds module_ from these tensors.
    estimator.__setstate__({**vars(estimator), **fitted, "_module_state": state_dict})
    return estimator


def _check_state_dict(
    state_dict: dict, estimator: ResNetFineTuneClassifier, classes, path: Path
) -> None:
    """Keys, shapes and dtypes must be those of the network, exactly."""
    arch, num_classes = estimator.arch, len(classes)
    with torch.device("meta"):
        expected = build_resnet(
            arch, None, num_classes, 3, head=estimator.head, classes=classes
        ).state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    wrong = [
        f"{k} {tuple(state_dict[k].shape)} {state_dict[k].dtype} (expected "
        f"{tuple(expected[k].shape)} {expected[k].dtype})"
        for k in sorted(set(expected) & set(state_dict))
        if state_dict[k].shape != expected[k].shape
        or state_dict[k].dtype != expected[k].dtype
    ]
    problems = [
        f"{len(keys)} {label}: {', '.join(keys[:3])}{' ...' if len(keys) > 3 else ''}"
        for label, keys in (
            ("missing tensors", missing),
            ("unexpected tensors", unexpected),
            ("tensors of the wrong shape or dtype", wrong),
        )
        if keys
    ]
    if problems:
        raise ValueError(
            f"'{path}' does not fit arch={arch!r} with {num_classes} classes: "
            + "; ".join(problems)
        )
