"""Parallel model selection: joblib's process workers and a Dask cluster.

Thread counts: joblib's default (loky) backend starts each worker process with
``OMP_NUM_THREADS`` and ``MKL_NUM_THREADS`` set to ``cpu_count() // n_jobs``
(unless the parent's environment sets them), and torch reads them when it is
imported in the worker, so ``n_jobs`` fits share the cores without
oversubscription. Dask's nanny sets both to 1 in every worker process
(``distributed.nanny.pre-spawn-environ``). Floating-point results depend on
torch's thread count, so the sequential reference of the Dask tests runs with
the workers' count to be comparable bit for bit.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

import joblib
import numpy as np
import pytest
import torch
from joblib import Parallel, delayed
from sklearn.base import clone
from sklearn.model_selection import GridSearchCV

from conftest import small_classifier
from resnetclf import ResNetFineTuneClassifier

#: Variables through which loky and Dask limit their workers' thread pools, and
#: which a process-based ``LocalCluster`` also writes into the client's own
#: environment (its nannies live in the client process).
THREAD_VARS = (
    "OMP_NUM_THREADS",
    "MKL_NUM_THREADS",
    "OPENBLAS_NUM_THREADS",
    "BLIS_NUM_THREADS",
    "VECLIB_MAXIMUM_THREADS",
    "NUMBA_NUM_THREADS",
    "NUMEXPR_NUM_THREADS",
)
DASK_LEAKED_VARS = (*THREAD_VARS, "MALLOC_TRIM_THRESHOLD_", "PYTHONHASHSEED")


@contextmanager
def torch_threads(n_threads: int) -> Iterator[None]:
    """Run the block with torch's intra-op thread count set to ``n_threads``."""
    previous = torch.get_num_threads()
    torch.set_num_threads(n_threads)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def loky_thread_budget(n_jobs: int) -> int:
    """Threads per loky worker when the environment sets no limit of its own."""
    return max(joblib.cpu_count() // n_jobs, 1)


class ThreadRecordingClassifier(ResNetFineTuneClassifier):
    """Records torch's thread count in the process where ``fit`` runs."""

    def fit(self, X, y, X_val=None, y_val=None):
        self.fit_torch_threads_ = torch.get_num_threads()
        self.fit_pid_ = os.getpid()
        return super().fit(X, y, X_val=X_val, y_val=y_val)


def fit_torch_threads(estimator, X, y) -> float:
    """A "score": the torch thread count that the estimator's fit ran with."""
    return float(estimator.fit_torch_threads_)


def fit_pid(estimator, X, y) -> float:
    """A "score": the id of the process where the estimator was fitted."""
    return float(estimator.fit_pid_)


# ---------------------------------------------------------------- loky
@pytest.fixture
def unlimited_environment(monkeypatch):
    """No thread limit inherited from the environment, so loky sets its own."""
    for var in THREAD_VARS:
        monkeypatch.delenv(var, raising=False)


def test_loky_workers_get_their_share_of_the_cores(unlimited_environment):
    threads = Parallel(n_jobs=2)(delayed(torch.get_num_threads)() for _ in range(4))
    # On 2 cores: 1 thread per worker, while the parent process keeps its own.
    assert all(1 <= n <= loky_thread_budget(2) for n in threads), threads


def test_grid_search_fits_in_loky_workers_use_their_share(
    tiny_images, unlimited_environment
):
    X, y = tiny_images
    estimator = ThreadRecordingClassifier(
        arch="resnet18",
        weights=None,
        max_iter=1,
        batch_size=16,
        validation_fraction=0,
        random_state=0,
        device="cpu",
    )
    search = GridSearchCV(
        estimator,
        {"lr": [1e-3]},
        cv=2,
        n_jobs=2,
        scoring={"threads": fit_torch_threads, "pid": fit_pid},
        refit=False,
        error_score="raise",
    ).fit(X, y)
    results = search.cv_results_
    assert os.getpid() not in {results[f"split{i}_test_pid"][0] for i in range(2)}
    threads = [results[f"split{i}_test_threads"][0] for i in range(2)]
    assert all(1 <= n <= loky_thread_budget(2) for n in threads), threads


# ---------------------------------------------------------------- Dask
@pytest.fixture(scope="module")
def dask_client():
    """A loopback-only cluster of 2 worker processes with 1 thread each."""
    distributed = pytest.importorskip("dask.distributed")
    import dask

    saved = {var: os.environ.get(var) for var in DASK_LEAKED_VARS}
    # Dask's default MALLOC_TRIM_THRESHOLD_ turns off glibc's adaptive mmap
    # threshold and makes a CPU fit here 2-3 times slower; None leaves it unset.
    no_trim = {"distributed.nanny.pre-spawn-environ.MALLOC_TRIM_THRESHOLD_": None}
    with dask.config.set(no_trim):
        cluster = distributed.LocalCluster(
            n_workers=2,
            threads_per_worker=1,
            processes=True,
            host="127.0.0.1",
            dashboard_address=None,
        )
    client = distributed.Client(cluster)
    try:
        client.wait_for_workers(2, timeout=60)
        yield client
    finally:
        client.close()
        cluster.close()
        for var, value in saved.items():
            if value is None:
                os.environ.pop(var, None)
            else:
                os.environ[var] = value


def worker_torch_threads(client) -> int:
    counts = set(client.run(torch.get_num_threads).values())
    assert len(counts) == 1, counts
    return counts.pop()


def without_seconds(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in record.items() if k != "seconds"} for record in history]


def test_dask_workers_limit_torch_threads(dask_client):
    # The nanny starts workers with MKL_NUM_THREADS (which torch reads before
    # OMP_NUM_THREADS) from the client's environment, else 1, and leaves that
    # value in the client's environment.
    limit = int(os.environ.get("MKL_NUM_THREADS", "1"))
    assert worker_torch_threads(dask_client) <= limit


def test_grid_search_on_dask_matches_sequential(dask_client, tiny_images):
    from dask.distributed import get_task_stream

    X, y = tiny_images
    estimator = small_classifier(max_iter=1, batch_size=32, validation_fraction=0.25)
    grid = {"lr": [1e-3, 1e-2]}
    with torch_threads(worker_torch_threads(dask_client)):
        sequential = GridSearchCV(estimator, grid, cv=2, refit=False).fit(X, y)
    with get_task_stream(dask_client) as tasks, joblib.parallel_backend("dask"):
        on_dask = GridSearchCV(estimator, grid, cv=2, refit=False).fit(X, y)

    workers = set(dask_client.scheduler_info()["workers"])
    assert tasks.data and {task["worker"] for task in tasks.data} <= workers
    assert on_dask.best_params_ == sequential.best_params_
    for key in ("mean_test_score", "split0_test_score", "split1_test_score"):
        np.testing.assert_array_equal(
            on_dask.cv_results_[key], sequential.cv_results_[key], err_msg=key
        )


def test_fitted_estimator_comes_back_from_a_worker_on_cpu(dask_client, tiny_images):
    X, y = tiny_images
    estimator = small_classifier(max_iter=1, batch_size=32, validation_fraction=0.25)
    remote = dask_client.submit(clone(estimator).fit, X, y, pure=False).result()

    assert "_module_state" not in vars(remote)
    assert {p.device.type for p in remote.module_.state_dict().values()} == {"cpu"}
    with torch_threads(worker_torch_threads(dask_client)):
        local = clone(estimator).fit(X, y)
    assert without_seconds(remote.history_) == without_seconds(local.history_)
    np.testing.assert_array_equal(remote.predict_proba(X), local.predict_proba(X))
