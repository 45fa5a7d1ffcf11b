"""
====================================
A grid search on a Dask cluster
====================================

scikit-learn's searches run their fits through joblib, and inside
``joblib.parallel_backend("dask")`` every fit becomes a task on a Dask
cluster. This example starts a local cluster of two worker processes, runs a
smaller version of the previous example's learning-rate search on it, and
scores the best model. On a real cluster, only the line that makes the
``Client`` changes.

Needs the ``dask`` extra: ``pip install "resnetclf[dask]"``.
"""

# %%
# Data and search
# ---------------
# Defining them is cheap and starts nothing. Dask starts its workers as new
# Python processes that import this file again, so everything that *runs*
# sits below the ``if __name__ == "__main__":`` line at the end.
import os

import dask
import joblib
from dask.distributed import Client, LocalCluster
from sklearn.datasets import load_digits
from sklearn.model_selection import GridSearchCV, train_test_split

from resnetclf import ResNetFineTuneClassifier

# The test suite sets this variable to run every example in a few seconds.
QUICK = os.environ.get("RESNETCLF_EXAMPLES_QUICK") == "1"

digits = load_digits()
X_search, X_test, y_search, y_test = train_test_split(
    digits.images / 16.0,
    digits.target,
    train_size=150 if QUICK else 900,
    stratify=digits.target,
    random_state=0,
)
estimator = ResNetFineTuneClassifier(
    arch="resnet18",
    weights=None,
    max_iter=1 if QUICK else 3,
    validation_fraction=0,
    random_state=0,
)
search = GridSearchCV(estimator, {"lr": [1e-3, 3e-3]}, cv=3)

# %%
# The cluster, the search, the results
# ------------------------------------
# One thread per worker: each fit then trains with one PyTorch thread, and
# two workers fill two cores without competing for them. Dask starts workers
# with ``MALLOC_TRIM_THRESHOLD_=65536``, which makes PyTorch's CPU training
# 2-3 times slower; setting the key to ``None`` leaves it unset. Each worker
# fits one candidate on one fold at a time; ``X`` and ``y`` are sent to the
# cluster once. ``GridSearchCV`` then refits the best candidate here, in this
# process.
if __name__ == "__main__":
    spawn_environ = "distributed.nanny.pre-spawn-environ."
    with dask.config.set(
        {
            spawn_environ + "OMP_NUM_THREADS": 1,
            spawn_environ + "MKL_NUM_THREADS": 1,
            spawn_environ + "MALLOC_TRIM_THRESHOLD_": None,
        }
    ):
        cluster = LocalCluster(
            n_workers=2, threads_per_worker=1, host="127.0.0.1", dashboard_address=None
        )
    with cluster, Client(cluster) as client:
        n_workers = len(client.scheduler_info()["workers"])
        print(f"{n_workers} workers, scheduler at {cluster.scheduler_address}")
        with joblib.parallel_backend("dask"):
            search.fit(X_search, y_search)

    results = search.cv_results_
    for params, mean, std in zip(
        results["params"], results["mean_test_score"], results["std_test_score"]
    ):
        print(f"{params}: {mean:.3f} +/- {std:.3f}")
    print("best_params_:", search.best_params_)
    print(f"test accuracy of the best model: {search.score(X_test, y_test):.3f}")

# %%
# On a real cluster
# -----------------
# Start a scheduler and workers (``dask scheduler``, then
# ``dask worker tcp://HOST:8786 --nthreads 1`` on each machine, with the same
# versions of resnetclf, torch and scikit-learn) and connect with
# ``Client("tcp://HOST:8786")`` instead of the ``LocalCluster``. For GPU
# workers, threads per worker and where pretrained weights are read, see the
# parallel model selection page of the documentation.
