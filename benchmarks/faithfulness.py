"""Faithfulness of the classifiers' per-cell explanations: deletion and insertion curves, and their cost.

Usage::

    python benchmarks/faithfulness.py --budget quick            # 3 datasets, capped cells and epochs
    python benchmarks/faithfulness.py --lock /tmp/cpu.lock  # shared lock to train, exclusive to time

For each dataset, four classifiers are trained on the training cells with their defaults
(NACT, SCTAB, scANVI on scVI, logistic regression on log1p CP10k) and each explanation is
evaluated on the network it explains, for every evaluation cell:

* **deletion**: zero the cell's top-k genes of the explanation and record the probability of
  the class the model predicted for the intact cell (lower area = more faithful);
* **insertion**: start from the all-zero cell and put back the top-k genes (higher area = more
  faithful);

for k = 1..100. The area under each curve is over the normalised k axis ((k - 1) / 99), the curve
evaluated at ``K_GRID`` and linear in between. Genes are set to zero in the space the network reads:
log1p CP10k with the size factor of the intact cell for NACT, SCTAB and the logistic regression
(a deleted gene does not rescale the others), counts for scANVI (whose encoder reads log1p
counts). Ties in an explanation (e.g. genes outside a sparse mask) are broken by putting
expressed genes first, in random order; the random explanation is such an order over all
expressed genes.

The cost of each explanation (seconds and the peak rise of the resident memory, sampled with
psutil) is measured on ``--cost-cells`` cells (the evaluation cells repeated) and scaled to
10,000 cells. Results: ``results/faithfulness.{json,md,png}``.
"""

from __future__ import annotations

import argparse
import contextlib
import datetime as dt
import fcntl
import gc
import json
import os
import subprocess
import sys
import tempfile
import threading
import time
import warnings
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd
from scipy import sparse

BENCH_DIR = Path(__file__).resolve().parent
RESULTS = BENCH_DIR / "results"
if str(BENCH_DIR) not in sys.path:
    sys.path.insert(0, str(BENCH_DIR))

#: largest k of the curves
K_MAX = 100
#: the k at which the curves are evaluated (their area is that of the piecewise-linear curve through them)
K_GRID = (1, 2, 3, 5, 7, 10, 15, 20, 30, 50, 70, 100)
#: points of the integration rule of our integrated gradients (scANVI's keeps captum's default, 50)
IG_STEPS = 25
#: captum's default number of steps, used by scANVI's predict(ig_interpretability=True)
SCANVI_IG_STEPS = 50
#: cells per batch of scANVI's integrated gradients (scvi-tools' default batch size)
SCANVI_BATCH = 128
DATASETS_USED = ("kang", "kang_stim", "mop")
#: at most this many training cells per dataset (a stratified subsample above it)
MAX_TRAIN = {"quick": 1500, "full": 5000}
#: every network the benchmark trains
NETWORK_NAMES = ("NACT", "SCTAB", "scANVI", "LR")
#: evaluation cells per dataset (a random subsample of the test cells)
N_EVAL = {"quick": 300, "full": 2000}
#: scVI / scANVI epochs (peers.md protocol: 100 / 20)
SCANVI_EPOCHS = {"scvi": 100, "scanvi": 20}
#: names of the explanations, per model: (model, explanation key, label, is the model's default)
EXPLANATIONS = [
    ("NACT", "nact_attention", "NACT attention shares (default, annotate)", True),
    ("NACT", "nact_attribution", "NACT attributions (get_attributions)", False),
    ("NACT", "nact_contributions", "NACT exact contributions (get_contributions)", False),
    ("NACT", "nact_ig", f"NACT integrated gradients ({IG_STEPS} steps)", False),
    ("NACT", "random", "random expressed genes", False),
    ("SCTAB", "sctab_attribution", "SCTAB attributions (default, annotate; get_attributions)", True),
    ("SCTAB", "sctab_mask", "SCTAB masks (get_masks; the default before)", False),
    ("SCTAB", "sctab_ig", f"SCTAB integrated gradients ({IG_STEPS} steps)", False),
    ("SCTAB", "sctab_gxi_signed", "SCTAB signed gradient x input, every gene (not stored)", False),
    ("SCTAB", "random", "random expressed genes", False),
    ("scANVI", "scanvi_ig", f"scANVI integrated gradients ({SCANVI_IG_STEPS} steps)", True),
    ("scANVI", "random", "random expressed genes", False),
    ("LR", "lr_coef_x_expr", "logistic regression coefficient x expression", True),
    ("LR", "random", "random expressed genes", False),
]


# ---------------------------------------------------------------------------------- curves


def top_k_order(scores: np.ndarray, x: np.ndarray, k: int, seed: int = 0) -> np.ndarray:
    """Each row's ``k`` genes of highest score, highest first; ties: expressed genes first, at random.

    Parameters
    ----------
    scores
        Cells x genes explanation (larger = more important; signed values allowed).
    x
        Cells x genes expression (only whether a gene is expressed is used).
    k
        Genes to return per cell.
    seed
        Seed of the random tie-break.
    """
    rng = np.random.default_rng(seed)
    tie = rng.random(scores.shape)
    expressed = (np.asarray(x) != 0).astype(np.int8)
    # np.lexsort sorts by the last key first
    order = np.lexsort((tie, -expressed, -np.asarray(scores, dtype=np.float64)), axis=-1)
    return order[:, :k]


def perturbation_curves(
    predict_proba: Callable[[np.ndarray], np.ndarray],
    x: np.ndarray,
    order: np.ndarray,
    target: np.ndarray,
    ks: tuple[int, ...] | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """Deletion and insertion curves, cells x k (``ks``, default 1..``order.shape[1]``).

    Deletion: the probability of class ``target[i]`` after zeroing the first k genes of
    ``order[i]`` in cell ``x[i]``. Insertion: the same probability for the all-zero cell with
    those k genes set to their values in ``x[i]``.
    """
    x = np.asarray(x, dtype=np.float32)
    ks = tuple(range(1, order.shape[1] + 1)) if ks is None else tuple(ks)
    if min(ks) < 1 or max(ks) > order.shape[1] or list(ks) != sorted(set(ks)):
        raise ValueError(f"ks must be increasing values in 1..{order.shape[1]}, got {ks}.")
    rows = np.arange(x.shape[0])
    deleted, inserted = x.copy(), np.zeros_like(x)
    deletion = np.empty((x.shape[0], len(ks)), dtype=np.float64)
    insertion = np.empty_like(deletion)
    done = 0
    for j, k in enumerate(ks):
        genes = order[:, done:k]
        deleted[rows[:, None], genes] = 0.0
        inserted[rows[:, None], genes] = x[rows[:, None], genes]
        done = k
        deletion[:, j] = predict_proba(deleted)[rows, target]
        insertion[:, j] = predict_proba(inserted)[rows, target]
    return deletion, insertion


def curve_area(curve: np.ndarray, ks: tuple[int, ...] | None = None) -> float:
    """Area under the mean curve over the normalised k axis ((k - 1) / (k_max - 1) in [0, 1]).

    ``ks`` are the k of the curve's columns (default 1..number of columns); between them the
    curve is linear (trapezoidal rule).
    """
    mean = np.asarray(curve, dtype=np.float64).mean(axis=0)
    ks = np.arange(1, len(mean) + 1) if ks is None else np.asarray(ks, dtype=np.float64)
    if len(mean) == 1:
        return float(mean[0])
    return float(np.trapezoid(mean, (ks - ks[0]) / (ks[-1] - ks[0])))


# ---------------------------------------------------------------------------------- cost


@contextlib.contextmanager
def peak_rss_rise(interval: float = 0.005):
    """Yield a dict that receives ``mb``: the peak rise of this process's RSS over the block (psutil)."""
    import psutil

    process = psutil.Process()
    gc.collect()
    start = process.memory_info().rss
    peak = [start]
    done = threading.Event()

    def sample():
        while not done.is_set():
            peak[0] = max(peak[0], process.memory_info().rss)
            done.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    result: dict[str, float] = {}
    thread.start()
    try:
        yield result
    finally:
        done.set()
        thread.join()
        peak[0] = max(peak[0], process.memory_info().rss)
        result["mb"] = (peak[0] - start) / 2**20


def measure(function: Callable[[], object]) -> dict[str, float]:
    """Wall seconds, CPU seconds of this process and peak RSS rise (MB) of one call."""
    with peak_rss_rise() as memory:
        start, cpu_start = time.perf_counter(), time.process_time()
        function()
        seconds, cpu_seconds = time.perf_counter() - start, time.process_time() - cpu_start
    return {"seconds": seconds, "cpu_seconds": cpu_seconds, "peak_rss_mb": memory["mb"]}


@contextlib.contextmanager
def cpu_lock(path: Path | None, exclusive: bool, wait: float | None = None):
    """Hold ``path`` with flock (shared or exclusive) for the block; nothing when ``path`` is None.

    Yields whether the lock is held: with ``wait`` (seconds), the block runs without the lock
    when it could not be taken in that time.
    """
    if path is None:
        yield False
        return
    with open(path, "a") as handle:
        mode = fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH
        held = False
        if wait is None:
            fcntl.flock(handle, mode)
            held = True
        else:
            deadline = time.monotonic() + wait
            while not held and time.monotonic() < deadline:
                try:
                    fcntl.flock(handle, mode | fcntl.LOCK_NB)
                    held = True
                except BlockingIOError:
                    time.sleep(1.0)
        try:
            yield held
        finally:
            if held:
                fcntl.flock(handle, fcntl.LOCK_UN)


# ---------------------------------------------------------------------------------- models


def dense(x) -> np.ndarray:
    return np.asarray(x.toarray() if sparse.issparse(x) else x, dtype=np.float32)


def subsample(adata, n: int, seed: int, stratify: bool):
    if adata.n_obs <= n:
        return adata
    from datasets import LABEL_KEY
    from sklearn.model_selection import train_test_split

    labels = adata.obs[LABEL_KEY].astype(str).to_numpy() if stratify else None
    counts = pd.Series(labels).value_counts() if stratify else None
    if stratify and (counts < 2).any():
        labels = None
    keep, _ = train_test_split(np.arange(adata.n_obs), train_size=n, stratify=labels, random_state=seed)
    return adata[np.sort(keep)].copy()


class Network:
    """A trained classifier seen through the space its explanations are evaluated in."""

    name: str
    seconds: float
    settings: dict

    def input(self, adata) -> np.ndarray:
        """Cells x genes, the values a gene is zeroed in."""
        raise NotImplementedError

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        raise NotImplementedError


class OurNetwork(Network):
    def __init__(self, model, seconds: float = 0.0, settings: dict | None = None):
        self.name = type(model).__name__
        self.model, self.seconds, self.settings = model, seconds, settings or {}
        self.model.module.eval()

    @classmethod
    def train(cls, model_name: str, train, label_key: str, seed: int) -> OurNetwork:
        from systems import train_classifier

        model, seconds = train_classifier(model_name, train, label_key, seed, "full")
        settings = {
            "epochs_run": len(model.history["f1_macro_train"]),
            "training": {k: repr(v) for k, v in model.training_settings_.items()},
            "init": {k: repr(v) for k, v in model.init_params_["non_kwargs"].items()},
        }
        return cls(model, seconds, settings)

    def save(self, folder: Path) -> None:
        self.model.save(folder / self.name, save_anndata=True, overwrite=True)

    @classmethod
    def load(cls, folder: Path, name: str) -> OurNetwork:
        import scsalient as ss

        return cls(getattr(ss.model, name).load(folder / name))

    def input(self, adata) -> np.ndarray:
        import torch

        with torch.no_grad():
            return self.model.module.prepare_input(torch.as_tensor(dense(adata.X))).numpy()

    def predict_proba(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                logits = self.model.module.inference_from_views(
                    torch.as_tensor(x[start : start + batch_size])
                )
                out.append(torch.softmax(logits["logits"], dim=-1).numpy())
        return np.concatenate(out)


class ScanviNetwork(Network):
    def __init__(self, model, seconds: float = 0.0, settings: dict | None = None):
        self.name = "scANVI"
        self.model, self.seconds, self.settings = model, seconds, settings or {}
        self.model.module.eval()

    @classmethod
    def train(cls, train, label_key: str, seed: int) -> ScanviNetwork:
        import scvi
        from systems import _quiet_lightning

        _quiet_lightning()
        scvi.settings.seed = seed
        start = time.perf_counter()
        train = train.copy()
        scvi.model.SCVI.setup_anndata(train)
        vae = scvi.model.SCVI(train)
        vae.train(max_epochs=SCANVI_EPOCHS["scvi"], enable_progress_bar=False)
        model = scvi.model.SCANVI.from_scvi_model(
            vae, unlabeled_category="__unlabelled__", labels_key=label_key
        )
        model.train(max_epochs=SCANVI_EPOCHS["scanvi"], n_samples_per_label=100, enable_progress_bar=False)
        settings = {"version": scvi.__version__, **{f"{k}_epochs": v for k, v in SCANVI_EPOCHS.items()}}
        return cls(model, time.perf_counter() - start, settings)

    def save(self, folder: Path) -> None:
        self.model.save(folder / self.name, save_anndata=True, overwrite=True)

    @classmethod
    def load(cls, folder: Path, name: str) -> ScanviNetwork:
        import scvi
        from systems import _quiet_lightning

        _quiet_lightning()
        return cls(scvi.model.SCANVI.load(folder / name))

    def input(self, adata) -> np.ndarray:
        return dense(adata.X)

    def _logits(self, x):
        import torch

        batch = torch.zeros((x.shape[0], 1), dtype=torch.long)
        return self.model.module.classify(x, batch_index=batch)

    def predict_proba(self, x: np.ndarray, batch_size: int = 1024) -> np.ndarray:
        import torch

        out = []
        with torch.inference_mode():
            for start in range(0, len(x), batch_size):
                logits = self._logits(torch.as_tensor(x[start : start + batch_size]))
                out.append(torch.softmax(logits, dim=-1).numpy())
        return np.concatenate(out)

    def integrated_gradients(self, x: np.ndarray) -> np.ndarray:
        """Per-cell attributions computed as ``SCANVI.predict(ig_interpretability=True)`` does.

        scvi-tools 1.4.2 runs captum's ``IntegratedGradients(module.classify)`` per minibatch
        (zero baseline, captum's default 50 steps, target the predicted class) and then returns
        only the mean and standard deviation over cells (``get_ranked_features``); the same
        computation is repeated here with the per-cell matrix kept.
        """
        import torch
        from captum.attr import IntegratedGradients

        explainer = IntegratedGradients(self.model.module.classify)
        out = []
        for start in range(0, len(x), SCANVI_BATCH):
            block = torch.as_tensor(x[start : start + SCANVI_BATCH])
            batch = torch.zeros((block.shape[0], 1), dtype=torch.long)
            with torch.no_grad():
                target = self.model.module.classify(block, batch_index=batch).argmax(dim=1)
            attribution = explainer.attribute(
                block, target=target, additional_forward_args=(batch, None, None), n_steps=SCANVI_IG_STEPS
            )
            out.append(attribution.detach().numpy())
        return np.concatenate(out)


class LogRegNetwork(Network):
    def __init__(self, classifier, seconds: float = 0.0, settings: dict | None = None):
        self.name = "LR"
        self.classifier, self.seconds, self.settings = classifier, seconds, settings or {}

    @classmethod
    def train(cls, train, label_key: str, seed: int) -> LogRegNetwork:
        from sklearn.linear_model import LogisticRegression
        from systems import lognorm

        classifier = LogisticRegression(max_iter=1000, random_state=seed)
        start = time.perf_counter()
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            classifier.fit(lognorm(train), train.obs[label_key].astype(str).to_numpy())
        settings = {"max_iter": 1000, "n_iter": int(np.max(classifier.n_iter_)), "input": "log1p CP10k"}
        return cls(classifier, time.perf_counter() - start, settings)

    def save(self, folder: Path) -> None:
        import pickle

        (folder / "LR.pkl").write_bytes(pickle.dumps(self.classifier))

    @classmethod
    def load(cls, folder: Path, name: str) -> LogRegNetwork:
        import pickle

        return cls(pickle.loads((folder / "LR.pkl").read_bytes()))

    def input(self, adata) -> np.ndarray:
        from systems import lognorm

        return dense(lognorm(adata))

    def predict_proba(self, x: np.ndarray) -> np.ndarray:
        return self.classifier.predict_proba(x)

    def coefficient_times_expression(self, x: np.ndarray) -> np.ndarray:
        """The predicted class's coefficient times the cell's value (binary: +-coef_)."""
        coef = self.classifier.coef_
        if coef.shape[0] == 1:  # binary: class 1 has coef_, class 0 its negative
            coef = np.vstack([-coef[0], coef[0]])
        predicted = self.predict_proba(x).argmax(axis=1)
        return x * coef[predicted]


# ---------------------------------------------------------------------------------- one dataset


def explanation_functions(network: Network, adata_eval, x_eval: np.ndarray) -> dict[str, Callable]:
    """Explanation key -> function computing it for the evaluation cells (dense, cells x genes)."""
    from scsalient.tl._attributions import integrated_gradients

    if network.name == "NACT":
        model = network.model
        return {
            "nact_attribution": lambda: model.get_attributions(adata_eval, n_top_genes=K_MAX),
            "nact_attention": lambda: model.get_attention(adata_eval, n_top_genes=K_MAX),
            "nact_contributions": lambda: model.get_contributions(adata_eval),
            "nact_ig": lambda: integrated_gradients(model, adata_eval, n_steps=IG_STEPS),
        }
    if network.name == "SCTAB":
        model = network.model
        return {
            "sctab_attribution": lambda: model.get_attributions(adata_eval, n_top_genes=K_MAX),
            "sctab_mask": lambda: model.get_masks(adata_eval, n_top_genes=K_MAX),
            "sctab_ig": lambda: integrated_gradients(model, adata_eval, n_steps=IG_STEPS),
            "sctab_gxi_signed": lambda: signed_gradient_x_input(model, adata_eval),
        }
    if network.name == "scANVI":
        return {"scanvi_ig": lambda: network.integrated_gradients(x_eval)}
    return {"lr_coef_x_expr": lambda: network.coefficient_times_expression(x_eval)}


def signed_gradient_x_input(model, adata) -> np.ndarray:
    """SCTAB's stored attribution before its positive part and top-100 cut: every gene, signed, dense.

    Gradient x input of the predicted class's log-probability, as
    :meth:`~scsalient.model.sctab._module.SCTABModule.attribution` computes it; genes that
    argue against the class keep their negative values, so they rank last instead of tying.
    """
    import torch

    module = model.module.eval()
    prepared = model._prepare_adata(adata)
    out = np.zeros((prepared.n_obs, module.n_input), dtype=np.float32)
    for block in model._iter_inference(prepared, None, 128, ["views", "probabilities"], "gradient x input"):
        target = torch.as_tensor(block["probabilities"].argmax(axis=1))[:, None]
        views = torch.as_tensor(np.array(block["views"][0])).requires_grad_(True)
        with torch.enable_grad():
            log_p = torch.log_softmax(module.inference_from_views(views)["logits"], dim=-1)
            (grad,) = torch.autograd.grad(log_p.gather(1, target).sum(), views)
        out[block["positions"]] = (grad * views).detach().numpy()
    return out


def evaluate_network(network: Network, adata_eval, seed: int, keys: set[str] | None = None) -> dict:
    """Curves of the network's explanations (``keys``: only these, and no random order)."""
    x = network.input(adata_eval)
    probs = network.predict_proba(x)
    target = probs.argmax(axis=1)
    functions = explanation_functions(network, adata_eval, x)
    out = {}
    for key, function in functions.items():
        if keys is not None and key not in keys:
            continue
        scores = dense(function())
        order = top_k_order(scores, x, K_MAX, seed=seed)
        out[key] = curves_record(network, x, order, target)
        # an explanation that scores fewer than K_MAX genes (e.g. a sparse one of positive shares)
        # leaves the rest of each curve to the tie rule (a random order of the other expressed genes)
        out[key]["median_scored_genes"] = float(np.median((scores != 0).sum(axis=1)))
        out[key]["median_expressed_genes"] = float(np.median((x > 0).sum(axis=1)))
    if keys is None:
        random_scores = np.zeros_like(x)
        order = top_k_order(random_scores, x, K_MAX, seed=seed + 1)
        out["random"] = curves_record(network, x, order, target)
    for record in out.values():
        record["probability_intact"] = float(probs[np.arange(len(x)), target].mean())
    return out


def curves_record(network: Network, x: np.ndarray, order: np.ndarray, target: np.ndarray) -> dict:
    deletion, insertion = perturbation_curves(network.predict_proba, x, order, target, K_GRID)
    return {
        "deletion_auc": curve_area(deletion, K_GRID),
        "insertion_auc": curve_area(insertion, K_GRID),
        "deletion_curve": deletion.mean(axis=0).round(5).tolist(),
        "insertion_curve": insertion.mean(axis=0).round(5).tolist(),
    }


NETWORK_CLASSES = {"NACT": OurNetwork, "SCTAB": OurNetwork, "scANVI": ScanviNetwork, "LR": LogRegNetwork}
#: the explanations of each network whose cost is measured (random costs nothing)
EXPLANATION_KEYS = {
    "NACT": ("nact_attribution", "nact_attention", "nact_contributions", "nact_ig"),
    "SCTAB": ("sctab_attribution", "sctab_mask", "sctab_ig", "sctab_gxi_signed"),
    "scANVI": ("scanvi_ig",),
    "LR": ("lr_coef_x_expr",),
}


def cost_one(folder: Path, name: str, key: str, n_cells: int) -> dict:
    """Seconds and peak RSS rise of one explanation on ``n_cells`` cells, in this (fresh) process.

    The saved network and the evaluation cells (repeated to ``n_cells``) are loaded and the
    network's input computed first; the measure covers the explanation only.
    """
    import anndata as ad

    network = NETWORK_CLASSES[name].load(folder, name)
    adata_eval = ad.read_h5ad(folder / "eval.h5ad")
    repeats = int(np.ceil(n_cells / adata_eval.n_obs))
    tiled = adata_eval[np.tile(np.arange(adata_eval.n_obs), repeats)[:n_cells]].copy()
    tiled.obs_names_make_unique()
    x = network.input(tiled)
    function = explanation_functions(network, tiled, x)[key]
    return {"n_cells": n_cells, **measure(function)}


def cost_in_subprocess(folder: Path, name: str, key: str, n_cells: int) -> dict:
    """:func:`cost_one` of one explanation in a fresh process, with its seconds per 10,000 cells."""
    command = [sys.executable, str(Path(__file__).resolve()), "--cost-one", str(folder), name, key]
    command += ["--cost-cells", str(n_cells)]
    done = subprocess.run(command, capture_output=True, text=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"cost of {name} {key} failed:\n{done.stderr[-3000:]}")
    measured = json.loads(done.stdout.strip().splitlines()[-1])
    measured["seconds_per_10k"] = measured["seconds"] * 1e4 / n_cells
    measured["cpu_seconds_per_10k"] = measured["cpu_seconds"] * 1e4 / n_cells
    return measured


def cost_record(folder: Path, n_cells: int) -> dict:
    """:func:`cost_one` of every explanation of the networks saved in ``folder``, each in its own process."""
    out = {}
    for name in json.loads((folder / "networks.json").read_text()):
        out[name] = {}
        for key in EXPLANATION_KEYS[name]:
            out[name][key] = cost_in_subprocess(folder, name, key, n_cells)
            print(f"  cost {name} {key}: {out[name][key]}", flush=True)
    return out


def run_dataset(
    name: str,
    budget: str,
    seed: int,
    cost_cells: int,
    lock: Path | None,
    models_dir: Path | None = None,
    only: tuple[str, ...] = NETWORK_NAMES,
) -> dict:
    """Train the networks on one dataset, score every explanation and (``cost_cells`` > 0) time them.

    ``only`` names the networks to train (all by default): the others are left out of the record.
    """
    import torch
    from datasets import LABEL_KEY, load_split

    torch.manual_seed(seed)
    with cpu_lock(lock, exclusive=False):
        train, test, dataset = load_split(name)
        n_train_all, n_test_all = train.n_obs, test.n_obs
        train = subsample(train, MAX_TRAIN[budget], seed, stratify=True)
        expressed = np.asarray(test.X.sum(axis=1)).ravel() > 0
        test = test[expressed].copy()
        rng = np.random.default_rng(seed)
        keep = np.sort(rng.choice(test.n_obs, min(N_EVAL[budget], test.n_obs), replace=False))
        adata_eval = test[keep].copy()
        networks = [OurNetwork.train(m, train, LABEL_KEY, seed) for m in ("NACT", "SCTAB") if m in only]
        if dataset.input == "counts" and "scANVI" in only:
            networks.append(ScanviNetwork.train(train, LABEL_KEY, seed))
        if "LR" in only:
            networks.append(LogRegNetwork.train(train, LABEL_KEY, seed))
        record = {
            "title": dataset.title,
            "input": dataset.input,
            "split": dataset.split_rule,
            "n_train_all": n_train_all,
            "n_test_all": n_test_all,
            "n_train": train.n_obs,
            "n_eval": adata_eval.n_obs,
            "n_genes": train.n_vars,
            "models": {},
        }
        truth = adata_eval.obs[LABEL_KEY].astype(str).to_numpy()
        for network in networks:
            started = time.perf_counter()
            x = network.input(adata_eval)
            predicted = network.predict_proba(x).argmax(axis=1)
            accuracy = float(np.mean(network_classes(network)[predicted] == truth))
            record["models"][network.name] = {
                "fit_seconds": network.seconds,
                "settings": network.settings,
                "accuracy_eval": accuracy,
                "explanations": evaluate_network(network, adata_eval, seed),
            }
            print(f"{name}: {network.name} curves in {time.perf_counter() - started:.0f} s", flush=True)
        if models_dir is not None:
            try:
                save_networks(models_dir / name, networks, adata_eval)
            except Exception as error:  # noqa: BLE001 - the scores stand without the saved networks
                print(f"{name}: the networks could not be saved ({error!r}); no cost measure later")
    if cost_cells:
        with contextlib.ExitStack() as stack:
            folder = models_dir / name if models_dir is not None else None
            if folder is None:
                folder = Path(stack.enter_context(tempfile.TemporaryDirectory(prefix="faithfulness_")))
                save_networks(folder, networks, adata_eval)
            with cpu_lock(lock, exclusive=True):
                add_costs(record, cost_record(folder, cost_cells))
    return record


def add_missing_explanations(data: dict, folder: Path, seed: int, cost_cells: int, lock: Path | None) -> None:
    """Score (and time, under the exclusive lock) the explanations a dataset's record lacks.

    Used when an explanation is added after the networks were trained: they are read from
    ``folder`` (saved with ``--models-dir``) with the same evaluation cells.
    """
    import anndata as ad

    adata_eval = ad.read_h5ad(folder / "eval.h5ad")
    for name in json.loads((folder / "networks.json").read_text()):
        model_record = data["models"][name]
        missing = set(EXPLANATION_KEYS[name]) - set(model_record["explanations"])
        if not missing:
            continue
        network = NETWORK_CLASSES[name].load(folder, name)
        with cpu_lock(lock, exclusive=False):
            added = evaluate_network(network, adata_eval, seed, keys=missing)
        model_record["explanations"].update(added)
        for key in sorted(missing):
            with cpu_lock(lock, exclusive=True, wait=600):
                measured = cost_in_subprocess(folder, name, key, cost_cells)
            model_record.setdefault("cost", {})[key] = measured
            areas = f"{added[key]['deletion_auc']:.3f} / {added[key]['insertion_auc']:.3f}"
            print(f"  {name} {key}: {areas}, {measured}", flush=True)


def save_networks(folder: Path, networks: list[Network], adata_eval) -> None:
    """Save the trained networks and the evaluation cells, for the cost measure (``--cost-from``)."""
    folder.mkdir(parents=True, exist_ok=True)
    adata_eval.write_h5ad(folder / "eval.h5ad")
    for network in networks:
        network.save(folder)
    (folder / "networks.json").write_text(json.dumps([network.name for network in networks]))


def add_costs(record: dict, costs: dict) -> None:
    for network_name, cost in costs.items():
        record["models"][network_name]["cost"] = cost


def network_classes(network: Network) -> np.ndarray:
    """The network's class names, in the order of its probability columns."""
    if isinstance(network, OurNetwork):
        return np.asarray(network.model.classes).astype(str)
    if isinstance(network, ScanviNetwork):
        return np.asarray(network.model._label_mapping).astype(str)
    return network.classifier.classes_.astype(str)


# ---------------------------------------------------------------------------------- report


LABELS = {(model, key): label for model, key, label, _ in EXPLANATIONS}
DEFAULTS = {(model, key) for model, key, _, is_default in EXPLANATIONS if is_default}


def table_rows(record: dict) -> list[dict]:
    rows = []
    for dataset, data in record["datasets"].items():
        for model, key, label, is_default in EXPLANATIONS:
            found = data["models"].get(model, {})
            curves = found.get("explanations", {}).get(key)
            if curves is None:
                continue
            cost = found.get("cost", {}).get(key, {})
            rows.append(
                {
                    "dataset": dataset,
                    "model": model,
                    "explanation": key,
                    "label": label,
                    "default": is_default,
                    "deletion_auc": curves["deletion_auc"],
                    "insertion_auc": curves["insertion_auc"],
                    "probability_intact": curves["probability_intact"],
                    "seconds_per_10k": cost.get("seconds_per_10k"),
                    "cpu_seconds_per_10k": cost.get("cpu_seconds_per_10k"),
                    "peak_rss_mb": cost.get("peak_rss_mb"),
                    "cost_cells": cost.get("n_cells"),
                }
            )
    return rows


def _fmt(value, digits=3) -> str:
    return "–" if value is None else f"{value:.{digits}f}"


#: areas within this of integrated gradients' count as "as faithful"
TIE = 0.01


def verdicts(rows: list[dict]) -> list[str]:
    """NACT's and SCTAB's explanations against integrated gradients on the same network, one line each.

    "as faithful" means a deletion area at most ``TIE`` above and an insertion area at most
    ``TIE`` below those of integrated gradients; the cost ratio is of CPU seconds.
    """
    frame = pd.DataFrame(rows)
    lines = []
    for (dataset, model), group in frame.groupby(["dataset", "model"], sort=False):
        if model not in ("NACT", "SCTAB"):
            continue
        ig = group[group["explanation"] == f"{model.lower()}_ig"].iloc[0]
        others = group[~group["explanation"].isin([f"{model.lower()}_ig", "random"])]
        for _, row in others.iterrows():
            as_faithful = (
                row["deletion_auc"] <= ig["deletion_auc"] + TIE
                and row["insertion_auc"] >= ig["insertion_auc"] - TIE
            )
            cost = row["cpu_seconds_per_10k"]
            ratio = ig["cpu_seconds_per_10k"] / cost if cost else None
            name = f"{row['explanation']}" + (" (default)" if row["default"] else "")
            lines.append(
                f"- {dataset}, {model}, {name}: "
                f"{f'as faithful (within {TIE}) as' if as_faithful else 'less faithful than'} "
                f"integrated gradients (deletion {row['deletion_auc']:.3f} vs {ig['deletion_auc']:.3f}, "
                f"difference {row['deletion_auc'] - ig['deletion_auc']:+.3f}; insertion "
                f"{row['insertion_auc']:.3f} vs {ig['insertion_auc']:.3f}, difference "
                f"{row['insertion_auc'] - ig['insertion_auc']:+.3f}), at {_fmt(ratio, 0)}x less CPU time."
            )
    return lines


def short_explanations(record: dict) -> list[str]:
    """A paragraph on explanations whose median cell has fewer than ``K_MAX`` genes with a non-zero score."""
    notes = []
    for dataset, data in record["datasets"].items():
        for model, network in data["models"].items():
            for key, curves in network.get("explanations", {}).items():
                scored = curves.get("median_scored_genes")
                if key == "random" or scored is None or scored >= K_MAX:
                    continue
                notes.append(
                    f"{dataset} {LABELS.get((model, key), key)}: {scored:.0f} "
                    f"(of {curves['median_expressed_genes']:.0f} expressed)"
                )
    if not notes:
        return []
    return [
        f"Explanations whose median cell has fewer than {K_MAX} genes with a non-zero score (the rest "
        "of its curves follows the tie rule, a random order of the cell's other expressed genes); the "
        "median number of such genes per cell, where recorded: " + "; ".join(notes) + ".",
        "",
    ]


def write_markdown(record: dict, path: Path) -> None:
    rows = table_rows(record)
    lines = [
        "# Faithfulness of the classifiers' per-cell explanations",
        "",
        f"Budget **{record['budget']}**, seed {record['seed']}, started {record['started']}, package at "
        f"commit `{record['git'].get('commit', '?')[:10]}`; {record['threads']} thread(s), 2 CPU cores.",
        *[
            f"{', '.join(update['networks'])} retrained and rescored on {', '.join(update['datasets'])} "
            f"(same cells) in the run started {update['started']}, package at commit "
            f"`{update['git'].get('commit', '?')[:10]}`."
            for update in record.get("updates", [])
        ],
        "",
        "For each evaluation cell, the top-k genes of its explanation are zeroed (**deletion**: from the "
        "intact cell; lower area = more faithful) or put back into the all-zero cell (**insertion**: higher "
        f"area = more faithful), k = {', '.join(map(str, record['k']))}, and the probability of the "
        "class the "
        "model predicted for the intact cell is recorded. Each explanation is evaluated on the network it "
        "explains; "
        "*random* is a random order of the cell's expressed genes, on each network. Areas are over the "
        "normalised k axis ((k - 1) / 99, the curve linear between the k evaluated), so they lie in [0, 1]. "
        "Genes are zeroed in log1p CP10k with the intact cell's size factor "
        "(NACT, SCTAB, logistic regression) or in counts (scANVI, whose encoder reads log1p counts). Ties "
        "(genes outside a sparse explanation) are broken by putting expressed genes first, in random order.",
        "",
        f"Integrated gradients: captum, zero baseline, target the predicted class; on our networks "
        f"`scsalient.tl._attributions.integrated_gradients` with {IG_STEPS} Gauss-Legendre steps, in log1p "
        f"CP10k, on the calibrated logit; scANVI's as `SCANVI.predict(ig_interpretability=True)` computes "
        f"them (captum's default {SCANVI_IG_STEPS} steps on `module.classify`, counts), keeping the per-cell "
        "matrix that scvi-tools 1.4.2 averages away. Logistic regression: sklearn "
        "`LogisticRegression(max_iter=1000)` on log1p CP10k; explanation = the predicted class's coefficient "
        "times the cell's value.",
        "",
        "Cost: CPU seconds of the process (one thread, so about the wall time on an idle core), wall "
        "seconds, and the peak rise of resident memory (psutil, sampled every 5 ms) of computing the "
        "explanation for the cost cells (the evaluation cells repeated), each explanation in a fresh process "
        "after loading the network and the cells; seconds are scaled to 10,000 cells, memory is as measured "
        f"on the cost cells. {record.get('cost_note', '')} The default explanations of NACT and SCTAB are "
        "what `annotate` stores (sparse, top 100 genes per cell) and come with the prediction in the same "
        "pass; their cost here is that of computing them on their own.",
        "",
        "## Datasets and models",
        "",
    ]
    for dataset, data in record["datasets"].items():
        models = data["models"]
        parts = []
        for name, model in models.items():
            epochs = model["settings"].get("epochs_run")
            epochs_text = (
                f"{epochs} epochs"
                if epochs is not None
                else ", ".join(f"{k} {v}" for k, v in model["settings"].items() if k.endswith("epochs"))
            )
            parts.append(
                f"{name} ({epochs_text + ', ' if epochs_text else ''}fit {model['fit_seconds']:.0f} s, "
                f"accuracy {model['accuracy_eval']:.3f})"
            )
        lines.append(
            f"- **{dataset}** ({data['title']}; {data['split']}): {data['n_train']} training cells "
            f"(of {data['n_train_all']}), {data['n_eval']} evaluation cells (of {data['n_test_all']} test "
            "cells), "
            f"{data['n_genes']} genes, input {data['input']}. " + "; ".join(parts) + "."
        )
    lines += [
        "",
        "NACT and SCTAB are trained with their defaults (NACT one network, SCTAB a 5-member ensemble; "
        "batch augmentation where the data have a batch column), scANVI on scVI with the peers' protocol "
        f"({SCANVI_EPOCHS['scvi']} / {SCANVI_EPOCHS['scanvi']} epochs).",
        "",
        "## Results",
        "",
        "| dataset | network | explanation | deletion AUC (lower better) | insertion AUC (higher better) "
        "| CPU s / 10k cells | wall s / 10k cells | peak RSS rise MB (cells) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for row in rows:
        label = f"**{row['label']}**" if row["default"] else row["label"]
        memory = "–" if row["peak_rss_mb"] is None else f"{row['peak_rss_mb']:.0f} ({row['cost_cells']:,})"
        lines.append(
            f"| {row['dataset']} | {row['model']} | {label} | {row['deletion_auc']:.3f} | "
            f"{row['insertion_auc']:.3f} | {_fmt(row['cpu_seconds_per_10k'], 1)} | "
            f"{_fmt(row['seconds_per_10k'], 1)} | {memory} |"
        )
    lines += ["", "Bold: the explanation each model gives by default.", ""]
    lines += short_explanations(record)
    lines += ["## Verdict", ""]
    lines += verdicts(rows)
    lines += ["", "The curves: `faithfulness.png` beside this file.", ""]
    path.write_text("\n".join(lines) + "\n")


def plot(record: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    datasets = list(record["datasets"])
    fig, axes = plt.subplots(2, len(datasets), figsize=(5 * len(datasets), 8), squeeze=False, sharey=True)
    styles = {"NACT": "tab:blue", "SCTAB": "tab:orange", "scANVI": "tab:green", "LR": "tab:purple"}
    dashes = {"random": ":", "ig": "--", "contributions": "-."}
    for column, dataset in enumerate(datasets):
        for model, key, label, is_default in EXPLANATIONS:
            curves = record["datasets"][dataset]["models"].get(model, {}).get("explanations", {}).get(key)
            if curves is None:
                continue
            style = next((s for suffix, s in dashes.items() if key.endswith(suffix)), "-")
            name = f"{model}: {label}" if key == "random" else label
            for row, which in enumerate(("deletion", "insertion")):
                values = curves[f"{which}_curve"]
                axes[row, column].plot(
                    record["k"], values, style, color=styles[model],
                    lw=2.2 if is_default else 1.2, label=name,
                )  # fmt: skip
        for row, which in enumerate(("deletion", "insertion")):
            axis = axes[row, column]
            axis.set_xscale("log")
            axis.set_title(f"{dataset}: {which}")
            axis.set_xlabel("k (top genes zeroed)" if which == "deletion" else "k (top genes kept)")
            if column == 0:
                axis.set_ylabel("probability of the predicted class")
    handles, names = axes[0, 0].get_legend_handles_labels()
    fig.legend(handles, names, loc="lower center", ncol=min(3, len(datasets) + 1), fontsize=8)
    fig.tight_layout(rect=(0, 0.12, 1, 1))
    fig.savefig(path, dpi=110)
    plt.close(fig)


# ---------------------------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--budget", choices=["quick", "full"], default="quick")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--datasets", nargs="+", default=list(DATASETS_USED))
    parser.add_argument("--cost-cells", type=int, default=10_000, help="cells the cost is measured on")
    parser.add_argument(
        "--lock", type=Path, default=None, help="flock file: shared to train, exclusive to time"
    )
    parser.add_argument("--out", type=Path, default=RESULTS, help="folder for the results")
    parser.add_argument(
        "--report-only", action="store_true", help="re-render the Markdown and the figure from the JSON"
    )
    parser.add_argument("--models-dir", type=Path, default=None, help="keep the trained networks here")
    parser.add_argument(
        "--cost-from",
        type=Path,
        default=None,
        help="only measure the cost, of the networks saved by --models-dir, into the JSON of --out "
        "(use --cost-cells 0 with --models-dir to train and score without timing)",
    )
    parser.add_argument(
        "--lock-wait", type=float, default=None, help="seconds to wait for the exclusive lock of --cost-from"
    )
    parser.add_argument(
        "--explain-from",
        type=Path,
        default=None,
        help="score and time, on the networks saved here, the explanations the JSON lacks",
    )
    parser.add_argument("--combine", type=Path, nargs="+", default=None, help="merge these folders' JSON")
    parser.add_argument(
        "--networks",
        nargs="+",
        choices=NETWORK_NAMES,
        default=None,
        help="train and score only these networks, replacing their entries in the JSON of --out "
        "(the other networks' entries are kept; e.g. after a model's defaults changed)",
    )
    parser.add_argument("--cost-one", nargs=3, metavar=("FOLDER", "NETWORK", "KEY"), help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.report_only:
        record = json.loads((args.out / "faithfulness.json").read_text())
        write_all(record, args.out)
        return
    from run import DEFAULT_THREADS, THREAD_VARIABLES, git_state

    for variable in THREAD_VARIABLES:
        os.environ.setdefault(variable, str(DEFAULT_THREADS))
    import torch

    torch.set_num_threads(int(os.environ["OMP_NUM_THREADS"]))
    if args.cost_one:
        folder, name, key = args.cost_one
        print(json.dumps(cost_one(Path(folder), name, key, args.cost_cells)))
        return
    if args.explain_from:
        record = json.loads((args.out / "faithfulness.json").read_text())
        for name, data in record["datasets"].items():
            add_missing_explanations(
                data, args.explain_from / name, record["seed"], args.cost_cells, args.lock
            )
        write_all(record, args.out)
        return
    if args.cost_from or args.combine:
        record = (
            combine(args.combine)
            if args.combine
            else json.loads((args.out / "faithfulness.json").read_text())
        )
        if args.cost_from:
            for name in record["datasets"]:
                if (args.cost_from / name / "networks.json").exists():
                    with cpu_lock(args.lock, exclusive=True, wait=args.lock_wait) as held:
                        record["datasets"][name]["cost_exclusive"] = held
                        add_costs(
                            record["datasets"][name], cost_record(args.cost_from / name, args.cost_cells)
                        )
                    record["datasets"][name]["cost_measured"] = (
                        dt.datetime.now().astimezone().isoformat(timespec="seconds")
                    )
        write_all(record, args.out)
        return
    if args.networks:
        update_networks(args)
        return
    started = dt.datetime.now().astimezone()
    clock = time.perf_counter()
    record = {
        "budget": args.budget,
        "seed": args.seed,
        "started": started.isoformat(timespec="seconds"),
        "git": git_state(),
        "threads": torch.get_num_threads(),
        "k_max": K_MAX,
        "k": list(K_GRID),
        "ig_steps": IG_STEPS,
        "scanvi_ig_steps": SCANVI_IG_STEPS,
        "datasets": {},
    }
    args.out.mkdir(parents=True, exist_ok=True)
    for name in args.datasets:
        record["datasets"][name] = run_dataset(
            name, args.budget, args.seed, args.cost_cells, args.lock, args.models_dir
        )
        record["total_seconds"] = time.perf_counter() - clock
        (args.out / "faithfulness.json").write_text(json.dumps(record, indent=1))
    write_all(record, args.out)


def update_networks(args: argparse.Namespace) -> None:
    """Retrain ``args.networks`` on every dataset of the stored record and replace their entries.

    The same budget and seed as the stored record, so the training and evaluation cells are the
    same; each update is listed under ``"updates"`` (when, which commit, which networks).
    """
    from run import git_state

    path = args.out / "faithfulness.json"
    record = json.loads(path.read_text())
    if (args.budget, args.seed) != (record["budget"], record["seed"]):
        raise SystemExit(
            f"--budget/--seed must match the stored record ({record['budget']}, seed {record['seed']})"
        )
    started = dt.datetime.now().astimezone().isoformat(timespec="seconds")
    for name in args.datasets:
        fresh = run_dataset(
            name, args.budget, args.seed, args.cost_cells, args.lock, args.models_dir, tuple(args.networks)
        )
        stored = record["datasets"].setdefault(name, {**fresh, "models": {}})
        stored["models"].update(fresh["models"])
        path.write_text(json.dumps(record, indent=1))
    record.setdefault("updates", []).append(
        {"started": started, "git": git_state(), "networks": args.networks, "datasets": args.datasets}
    )
    write_all(record, args.out)


def combine(folders: list[Path]) -> dict:
    """One record of the datasets of several runs' ``faithfulness.json`` (settings of the first)."""
    records = [json.loads((folder / "faithfulness.json").read_text()) for folder in folders]
    out = dict(records[0])
    out["datasets"] = {name: data for record in records for name, data in record["datasets"].items()}
    out["runs"] = [
        {"started": r["started"], "git": r["git"], "datasets": list(r["datasets"])} for r in records
    ]
    return out


def write_all(record: dict, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "faithfulness.json").write_text(json.dumps(record, indent=1))
    write_markdown(record, out / "faithfulness.md")
    plot(record, out / "faithfulness.png")
    print((out / "faithfulness.md").read_text())


if __name__ == "__main__":
    main()
