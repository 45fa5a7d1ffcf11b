"""Grid search over learning rates on a Dask cluster, through joblib.

scikit-learn's :class:`~sklearn.model_selection.GridSearchCV` runs its fits
through joblib; inside ``joblib.parallel_backend("dask")`` each fit becomes a
task on a Dask cluster. This script:

1. connects to the scheduler given with ``--scheduler`` (``tcp://host:8786``),
   or, without it, starts a local cluster of ``--n-workers`` worker processes
   that listens on 127.0.0.1 only;
2. makes stand-in data with :func:`resnetclf.datasets.make_digit_sums` (small
   images of ``--n-digits`` handwritten digits, labelled with their sum) and
   holds out a test set;
3. cross-validates every combination of ``--lr`` and ``--layer-lr-decay`` on
   the workers (``GridSearchCV(refit=False)``) and prints the best parameters
   and the table of scores;
4. refits the best combination on a worker, brings the fitted estimator back
   (its weights travel as CPU tensors, so this process needs no GPU) and
   prints its accuracy on the test set.

Requirements: ``pip install "resnetclf[dask]"`` here and on every worker, with
the same versions of resnetclf, torch and scikit-learn.

GPU workers
-----------
Start one ``dask worker`` per GPU, each seeing only its own GPU and declaring
it as a resource::

    dask scheduler --host 10.0.0.1
    CUDA_VISIBLE_DEVICES=0 dask worker tcp://10.0.0.1:8786 --nthreads 1 \\
        --resources GPU=1
    CUDA_VISIBLE_DEVICES=1 dask worker tcp://10.0.0.1:8786 --nthreads 1 \\
        --resources GPU=1

and run this script with ``--scheduler tcp://10.0.0.1:8786 --resources GPU=1``:
every fit then holds one GPU, and ``--device auto`` (the default) trains on the
one GPU each worker sees. See ``docs/parallel.md``.

Pretrained weights
------------------
The default ``--weights none`` starts from random weights and needs no network.
With ``--weights DEFAULT`` every worker loads the ImageNet weights from its own
torchvision cache (``TORCH_HOME``), downloading them if it can; a path given
with ``--weights`` must exist on every worker.

Examples
--------
On this machine, with a local cluster of 2 worker processes (a few minutes on a
2-core CPU)::

    python examples/distributed_grid_search.py --n-workers 2

On a running cluster::

    python examples/distributed_grid_search.py --scheduler tcp://10.0.0.1:8786
"""

from __future__ import annotations

import argparse
import contextlib
import os
import sys
import time
from collections.abc import Iterator, Sequence

import joblib
import numpy as np
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV, KFold, train_test_split

from resnetclf import ResNetFineTuneClassifier, WeightsUnavailableError
from resnetclf.datasets import make_digit_sums

#: Share of the images held out to test the refitted best model.
TEST_FRACTION = 0.2


# ---------------------------------------------------------------- arguments
def build_parser() -> argparse.ArgumentParser:
    """The command line.

    Returns
    -------
    parser : argparse.ArgumentParser
        The parser of :func:`main`'s arguments.
    """
    parser = argparse.ArgumentParser(
        prog="python examples/distributed_grid_search.py",
        description=(
            "Cross-validate ResNetFineTuneClassifier over learning rates on a "
            "Dask cluster through joblib's dask backend, on stand-in data."
        ),
        formatter_class=argparse.ArgumentDefaultsHelpFormatter,
    )
    cluster = parser.add_argument_group("cluster")
    cluster.add_argument(
        "--scheduler",
        metavar="ADDRESS",
        default=None,
        help="address of a running Dask scheduler, e.g. tcp://10.0.0.1:8786; "
        "without it a local cluster is started on 127.0.0.1",
    )
    cluster.add_argument(
        "--n-workers",
        type=_positive_int,
        default=2,
        help="worker processes of the local cluster (one fit at a time each)",
    )
    cluster.add_argument(
        "--torch-threads",
        type=_positive_int,
        default=None,
        help="torch threads per worker of the local cluster; default: the CPU "
        "count divided by --n-workers",
    )
    cluster.add_argument(
        "--resources",
        nargs="+",
        metavar="NAME=AMOUNT",
        type=_resource,
        default=[],
        help="Dask resources each fit holds, e.g. GPU=1 (the workers must be "
        "started with --resources GPU=1, or fits wait for ever)",
    )
    data = parser.add_argument_group("stand-in data")
    data.add_argument("--n-samples", type=_positive_int, default=400)
    data.add_argument(
        "--n-digits",
        type=_positive_int,
        default=2,
        help="digits per image; labels are their sum (0 .. 9 * n_digits)",
    )
    data.add_argument(
        "--image-shape",
        type=_positive_int,
        nargs=2,
        metavar=("HEIGHT", "WIDTH"),
        default=(16, 40),
        help="at least 8 by 8 * n_digits",
    )
    data.add_argument(
        "--seed", type=int, default=0, help="seeds data, splits and training"
    )
    model = parser.add_argument_group("model and search")
    model.add_argument("--arch", default="resnet18")
    model.add_argument(
        "--weights",
        default="none",
        help="'none' for random initialisation (no network needed), a "
        "torchvision weights name (DEFAULT, ...) or a state dict file that "
        "exists on every worker",
    )
    model.add_argument("--epochs", type=_positive_int, default=3)
    model.add_argument("--batch-size", type=_positive_int, default=32)
    model.add_argument(
        "--lr",
        type=_positive_float,
        nargs="+",
        default=[1e-3, 3e-3],
        help="learning rates of the head to try",
    )
    model.add_argument(
        "--layer-lr-decay",
        type=_unit_float,
        nargs="+",
        default=[0.5, 1.0],
        help="layer-wise decays to try (1: one rate for all stages)",
    )
    model.add_argument(
        "--cv", type=_at_least_two, default=3, help="cross-validation folds"
    )
    model.add_argument(
        "--device",
        default="auto",
        help="'auto' trains on the GPU a worker sees, else on its CPU",
    )
    return parser


def parse_args(argv: Sequence[str] | None = None) -> argparse.Namespace:
    """Parse and check the arguments; exit with status 2 on bad ones.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    args : argparse.Namespace
        The arguments; ``args.weights`` is None for ``none`` and
        ``args.resources`` a dict.
    """
    parser = build_parser()
    args = parser.parse_args(argv)
    height, width = args.image_shape
    if height < 8 or width < 8 * args.n_digits:
        parser.error(
            f"--image-shape {height} {width} cannot hold {args.n_digits} digits "
            f"of 8x8 pixels; use at least 8 {8 * args.n_digits}"
        )
    if args.weights.lower() == "none":
        args.weights = None
    if args.scheduler is not None and args.torch_threads is not None:
        parser.error("--torch-threads applies to the local cluster only")
    args.resources = dict(args.resources)
    return args


def _positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be an integer >= 1; got {text}")
    return value


def _at_least_two(text: str) -> int:
    value = int(text)
    if value < 2:
        raise argparse.ArgumentTypeError(f"must be an integer >= 2; got {text}")
    return value


def _positive_float(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0; got {text}")
    return value


def _unit_float(text: str) -> float:
    value = float(text)
    if not 0 <= value <= 1:
        raise argparse.ArgumentTypeError(f"must be in [0, 1]; got {text}")
    return value


def _resource(text: str) -> tuple[str, float]:
    name, sep, amount = text.partition("=")
    try:
        value = float(amount)
    except ValueError:
        value = -1.0
    if not sep or not name or not value > 0:
        raise argparse.ArgumentTypeError(
            f"expected NAME=AMOUNT with AMOUNT > 0, e.g. GPU=1; got {text!r}"
        )
    return name, value


# ------------------------------------------------------------------ cluster
@contextlib.contextmanager
def connect(args: argparse.Namespace) -> Iterator:
    """A Dask client of the given scheduler, or of a new local cluster.

    Parameters
    ----------
    args : argparse.Namespace
        Parsed arguments.

    Yields
    ------
    client : distributed.Client
        Closed on exit, with the local cluster if one was started.
    """
    import dask
    from dask.distributed import Client, LocalCluster

    if args.scheduler is not None:
        with Client(args.scheduler) as client:
            yield client
        return
    threads = args.torch_threads or max((os.cpu_count() or 1) // args.n_workers, 1)
    # Dask's nanny starts each worker with OMP_NUM_THREADS = MKL_NUM_THREADS = 1
    # unless told otherwise; torch reads them when it is first imported there.
    # (A value already in this process's environment takes precedence.) Dask's
    # MALLOC_TRIM_THRESHOLD_ makes CPU training 2-3 times slower: left unset.
    key = "distributed.nanny.pre-spawn-environ."
    environ = {
        key + "OMP_NUM_THREADS": threads,
        key + "MKL_NUM_THREADS": threads,
        key + "MALLOC_TRIM_THRESHOLD_": None,
    }
    with dask.config.set(environ):
        cluster = LocalCluster(
            n_workers=args.n_workers,
            threads_per_worker=1,  # one fit at a time per worker process
            processes=True,
            host="127.0.0.1",  # not reachable from other machines
            dashboard_address=None,
        )
    with cluster, Client(cluster) as client:
        yield client


def describe(client) -> str:
    """One line on the cluster's workers, their fit slots and torch threads."""
    import torch

    slots = client.ncores()  # worker address -> threads, i.e. concurrent fits
    threads = sorted(set(client.run(torch.get_num_threads).values()))
    return (
        f"{len(slots)} worker(s), {sum(slots.values())} fit(s) at a time, torch "
        f"threads per worker: {', '.join(map(str, threads))}"
    )


# ------------------------------------------------------------------- report
def score_table(cv_results: dict) -> str:
    """The grid's cross-validation scores, best first, as aligned text.

    Parameters
    ----------
    cv_results : dict
        ``GridSearchCV.cv_results_``.

    Returns
    -------
    table : str
        One line per parameter combination.
    """
    header = "rank  mean acc  std acc  fit s  parameters"
    lines = [header, "-" * len(header)]
    for i in np.argsort(cv_results["rank_test_score"], kind="stable"):
        params = ", ".join(f"{k}={v:g}" for k, v in cv_results["params"][i].items())
        lines.append(
            f"{cv_results['rank_test_score'][i]:4d}  "
            f"{cv_results['mean_test_score'][i]:8.3f}  "
            f"{cv_results['std_test_score'][i]:7.3f}  "
            f"{cv_results['mean_fit_time'][i]:5.1f}  {params}"
        )
    return "\n".join(lines)


# --------------------------------------------------------------------- main
def main(argv: Sequence[str] | None = None) -> int:
    """Run the search; see the module docstring.

    Parameters
    ----------
    argv : sequence of str, default=None
        Arguments without the program name; None reads ``sys.argv``.

    Returns
    -------
    status : int
        0 on success; 1 if dask.distributed is not installed; 2 if the
        pretrained weights cannot be had (and, through argparse's
        ``SystemExit``, on bad arguments).
    """
    args = parse_args(argv)
    try:
        import dask.distributed  # noqa: F401
    except ImportError:
        print(
            'error: this example needs dask.distributed: pip install "resnetclf[dask]"',
            file=sys.stderr,
        )
        return 1

    X, y = make_digit_sums(
        args.n_samples,
        n_digits=args.n_digits,
        image_shape=tuple(args.image_shape),
        random_state=args.seed,
    )
    # Rare sums (all zeros, all nines) rule out stratified splits on small data.
    X_train, X_test, y_train, y_test = train_test_split(
        X, y, test_size=TEST_FRACTION, random_state=args.seed
    )
    print(
        f"stand-in data: {len(X_train)} training and {len(X_test)} test images "
        f"of shape {X.shape[1:]}, {len(np.unique(y))} classes"
    )
    estimator = ResNetFineTuneClassifier(
        arch=args.arch,
        weights=args.weights,
        max_iter=args.epochs,
        batch_size=args.batch_size,
        device=args.device,
        random_state=args.seed,
    )
    grid = {"lr": args.lr, "layer_lr_decay": args.layer_lr_decay}
    search = GridSearchCV(
        estimator,
        grid,
        cv=KFold(args.cv, shuffle=True, random_state=args.seed),
        refit=False,  # refitted below, on a worker
        error_score="raise",  # e.g. missing weights: stop at the first failure
    )

    with connect(args) as client:
        print(f"cluster: {client.scheduler.address}; {describe(client)}")
        start = time.perf_counter()
        try:
            # The client is passed on, so no other default client is taken.
            with joblib.parallel_backend("dask", client=client, **_submit(args)):
                search.fit(X_train, y_train)
            print(
                f"{len(search.cv_results_['params']) * args.cv} fits in "
                f"{time.perf_counter() - start:.1f} s"
            )
            print(f"best parameters: {search.best_params_}")
            print(score_table(search.cv_results_))

            # Refit on a worker too: the fitted estimator comes back pickled,
            # its weights as CPU tensors, whatever device trained them.
            best = clone(estimator).set_params(**search.best_params_)
            future = client.submit(
                best.fit, X_train, y_train, pure=False, **_submit(args)
            )
            best = future.result()
        except WeightsUnavailableError as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
    print(
        f"test accuracy of the best model: {best.score(X_test, y_test):.3f} "
        f"(refitted on a worker's {best.device_.type.upper()}, best epoch "
        f"{best.best_epoch_} of {best.n_iter_})"
    )
    return 0


def _submit(args: argparse.Namespace) -> dict:
    """Keyword arguments of ``Client.submit`` for every fit."""
    return {"resources": args.resources} if args.resources else {}


if __name__ == "__main__":
    sys.exit(main())
