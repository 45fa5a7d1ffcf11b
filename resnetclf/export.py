"""A fitted estimator as one ONNX file: raw images in, predictions out.

A classifier's file returns class probabilities, a regressor's the predicted
values in the targets' units. The file runs without Python's resnetclf,
torch or scikit-learn: in onnxruntime, on any of its platforms and
accelerators. Everything ``predict_proba`` or ``predict`` does to the images
is in the graph (scaling, channels, normalisation), and so is what it does
to the network's outputs, so the deployed model takes the images as they
come. Needs the ``onnx`` extra: ``pip install "resnetclf[onnx]"``.
"""

from __future__ import annotations

import contextlib
import importlib.util
import io
import json
import os
import tempfile
from pathlib import Path

import torch
from sklearn.utils.validation import check_is_fitted
from torch import nn

from resnetclf._checkpoint import write_atomic
from resnetclf._deployed import (
    ClassProbabilities,
    RawImagesToOutputs,
    TargetValues,
    input_shape,
    resolve_input_dtype,
    resolve_input_layout,
)
from resnetclf._estimator import ResNetFineTuneClassifier
from resnetclf._regressor import ResNetFineTuneRegressor
from resnetclf._training import module_on
from resnetclf._version import __version__

__all__ = ["ONNX_PACKAGES", "export_onnx"]

# What writing the file needs; onnxruntime, in the same extra, runs it.
ONNX_PACKAGES = ("onnx", "onnxscript")
INPUT_NAME = "images"
# The graph's output: a classifier's probabilities, a regressor's values.
PROBABILITIES_NAME = "probabilities"
VALUES_NAME = "values"


def export_onnx(
    estimator: ResNetFineTuneClassifier | ResNetFineTuneRegressor,
    path: str | os.PathLike,
    *,
    input_layout: str = "auto",
    input_dtype="uint8",
    opset_version: int | None = None,
) -> Path:
    """Write a fitted estimator as an ONNX graph from raw images to its
    predictions: a classifier's class probabilities, a regressor's values.

    The graph takes a batch of images as ``predict_proba`` or ``predict``
    would get them, in one layout and dtype fixed here, any number of
    images at a time. Inside it: uint8 divided by 255, the layout turned
    into the network's, grayscale fed to the folded one-channel stem, or
    repeated to three channels when the normalisation differs per channel
    (ImageNet's), the normalisation, and the network.

    A classifier's graph returns ``"probabilities"`` (float32, columns
    following ``classes_``: a softmax over the classes, or a sigmoid per
    label for a model fitted on a label-indicator ``y``), which match
    ``predict_proba``'s at ``precision="fp32"`` to a few 1e-6; its metadata
    (``metadata_props``) hold ``classes`` (a JSON list: the label of each
    column) and ``output`` (``"softmax"`` or ``"sigmoid"``).

    A regressor's graph returns ``"values"``: its predictions in the
    targets' units (float32; the network's standardised outputs times the
    training targets' standard deviation plus their mean, inside the
    graph), of shape ``(N,)`` for a single output and ``(N, n_outputs)``
    otherwise, as ``predict`` returns them, and matching ``predict``'s at
    ``precision="fp32"`` to a few 1e-6 of each target's standard deviation,
    plus float32's rounding of the value; its metadata hold ``output``
    (``"values"``) and ``n_outputs``, and no ``classes``.

    The metadata of both also hold ``input_layout``, ``input_dtype``,
    ``image_shape``, ``normalization`` and the resnetclf version. ``tta``
    is not in the graph: it computes each image once. Traced with torch's ONNX exporter
    (``dynamo=True``); the file is written atomically.

    Parameters
    ----------
    estimator : ResNetFineTuneClassifier or ResNetFineTuneRegressor
        A fitted estimator, with any of the library's heads (a head of your
        own must be traceable by ``torch.export``).
    path : str or path
        The file to write (replaced if it exists; its folder is created).
    input_layout : {"auto", "NHW", "NHWC", "NCHW", "flat"}, default="auto"
        The input's layout: ``(N, H, W)`` grayscale, ``(N, H, W, C)``,
        ``(N, C, H, W)``, or ``"flat"`` rows ``(N, H*W*C)`` holding each
        image row-major as ``(H, W, C)`` (as ``image_shape`` reads them).
        ``"auto"`` is ``"NHW"`` for a model fitted on grayscale images,
        ``"NHWC"`` for colour ones.
    input_dtype : {"uint8", "float32", "float64"}, default="uint8"
        The input's dtype (a name or a numpy dtype). uint8 is scaled by
        1/255, floats are taken as already in [0, 1], as ``predict`` does.
    opset_version : int, default=None
        ONNX opset of the graph; None is the exporter's default.

    Returns
    -------
    path : Path
        The file written.

    Raises
    ------
    sklearn.exceptions.NotFittedError
        If ``estimator`` is not fitted.
    ValueError
        For a layout or dtype the model cannot take, a path that cannot be
        written, or a network the exporter cannot trace with a free batch
        size. Raised before the file is touched.
    ImportError
        Without the ``onnx`` extra.
    TypeError
        If ``estimator`` is neither a ``ResNetFineTuneClassifier`` nor a
        ``ResNetFineTuneRegressor``.

    Examples
    --------
    >>> from resnetclf.export import export_onnx  # doctest: +SKIP
    >>> export_onnx(clf, "model.onnx", input_dtype="uint8")  # doctest: +SKIP
    >>> export_onnx(reg, "regressor.onnx")  # doctest: +SKIP
    """
    if not isinstance(estimator, (ResNetFineTuneClassifier, ResNetFineTuneRegressor)):
        raise TypeError(
            "export_onnx exports a fitted ResNetFineTuneClassifier or "
            f"ResNetFineTuneRegressor; got {type(estimator).__name__}"
        )
    check_is_fitted(estimator)
    image_shape = tuple(estimator.image_shape_)
    layout = resolve_input_layout(input_layout, image_shape[2])
    dtype = resolve_input_dtype(input_dtype)
    _check_onnx_tools()
    path = Path(path)
    _check_writable(path)
    mean, std = estimator._normalization_stats
    module = RawImagesToOutputs(
        module_on(estimator.module_, torch.device("cpu")).eval(),
        layout,
        image_shape,
        1.0 / 255.0 if dtype == "uint8" else 1.0,
        mean,
        std,
        estimator.module_.conv1.in_channels,
        _output_module(estimator),
    ).eval()
    model = _traced(
        module, layout, image_shape, dtype, opset_version, _output_name(estimator)
    )
    _describe(model, estimator, layout, dtype)
    return write_atomic(path, model.SerializeToString())


def _is_regressor(estimator) -> bool:
    return isinstance(estimator, ResNetFineTuneRegressor)


def _output_module(estimator) -> nn.Module:
    """What the graph makes of the network's outputs, as the estimator's
    ``predict_proba`` (a classifier) or ``predict`` (a regressor) does."""
    if _is_regressor(estimator):
        return TargetValues(estimator._target_mean, estimator._target_scale)
    return ClassProbabilities(multi_label=estimator._multi_label)


def _output_name(estimator) -> str:
    return VALUES_NAME if _is_regressor(estimator) else PROBABILITIES_NAME


def _check_onnx_tools() -> None:
    missing = [name for name in ONNX_PACKAGES if not _installed(name)]
    if missing:
        raise ImportError(
            f"export_onnx needs {' and '.join(missing)}: pip install "
            '"resnetclf[onnx]" (onnx, onnxscript, and onnxruntime to run the file)'
        )


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):  # a broken or blocked installation
        return False


def _check_writable(path: Path) -> None:
    """Refuse a path that is a folder or whose folder cannot be written."""
    if path.is_dir():
        raise ValueError(f"cannot write the ONNX file: '{path}' is a folder")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with tempfile.TemporaryFile(dir=path.parent):
            pass
    except OSError as exc:
        raise ValueError(f"cannot write the ONNX file '{path}': {exc}") from exc


def _traced(
    module, layout: str, image_shape, dtype: str, opset_version, output_name: str
):
    """The ONNX ``ModelProto`` of ``module``, its batch axis free."""
    # Two images: torch.export takes a batch of one for a constant.
    example = torch.zeros(
        (2, *input_shape(layout, image_shape)), dtype=getattr(torch, dtype)
    )
    batch = torch.export.Dim("batch")
    try:
        # The exporter reports its steps on stdout; a library stays quiet.
        with contextlib.redirect_stdout(io.StringIO()):
            program = torch.onnx.export(
                module,
                (example,),
                dynamo=True,
                dynamic_shapes=({0: batch},),
                input_names=[INPUT_NAME],
                output_names=[output_name],
                opset_version=opset_version,
                verbose=False,
            )
        model = program.model_proto
    except Exception as exc:
        raise ValueError(
            "the fitted network cannot be exported to ONNX: torch's exporter "
            f"failed ({type(exc).__name__}: {_first_line(exc)}). The library's "
            "heads export; a head of your own must be traceable by torch.export"
        ) from exc
    first_axis = model.graph.input[0].type.tensor_type.shape.dim[0]
    if not first_axis.dim_param:
        raise ValueError(
            "the fitted network cannot be exported to ONNX with a free batch "
            f"size: the exporter fixed it to {first_axis.dim_value} (an "
            "operation of the network reads the batch size as a constant, as "
            "len(tensor) does; tensor.shape[0] keeps it free)"
        )
    return model


def _describe(model, estimator, layout: str, dtype: str) -> None:
    """What a user of the file needs to feed it and read its output."""
    mean, std = estimator._normalization_stats
    if _is_regressor(estimator):
        # The values are in the targets' units already: the standardisation
        # is in the graph, so the metadata need not carry it.
        outputs = {"output": "values", "n_outputs": str(estimator.n_outputs_)}
        shape = "(N,)" if estimator.n_outputs_ == 1 else "(N, n_outputs)"
        doc = (
            f"ResNetFineTuneRegressor: images {layout} {dtype} -> predicted "
            f"values {shape} in the targets' units"
        )
    else:
        outputs = {
            "classes": json.dumps(estimator.classes_.tolist(), default=str),
            # softmax: one class per image; sigmoid: each label on its own.
            "output": "sigmoid" if estimator._multi_label else "softmax",
        }
        doc = (
            f"ResNetFineTuneClassifier: images {layout} {dtype} -> probabilities "
            "of the classes in metadata 'classes'"
        )
    entries = {
        **outputs,
        "input_layout": layout,
        "input_dtype": dtype,
        "image_shape": json.dumps([int(s) for s in estimator.image_shape_]),
        "normalization": json.dumps({"mean": list(mean), "std": list(std)}),
        "producer": f"resnetclf {__version__}",
    }
    for key, value in entries.items():
        entry = model.metadata_props.add()
        entry.key, entry.value = key, value
    model.doc_string = doc


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__
