"""Registry of the classification systems compared by the benchmark.

Every system is a function ``fit_predict(train, test, label_key, seed, budget)`` that trains on
``train`` (an AnnData with labels in ``train.obs[label_key]``) and predicts ``test``. It returns
``dict(predictions=np.ndarray of str, fit_seconds=float, predict_seconds=float, extra={...})``.
``.X`` holds counts or log-normalised values; ``train.uns["bench_input"]`` says which.

To add a system, write such a function and register it in ``SYSTEMS`` (see README.md).
"""

from __future__ import annotations

import importlib.util
import logging
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
from anndata import AnnData
from scipy import sparse

BUDGETS = ("quick", "full")

#: epochs of NACT and SCTAB under the quick budget (the full budget uses each model's defaults)
QUICK_EPOCHS = 15
#: obs columns used as the batch (augmentation) key of NACT and SCTAB, first found wins
BATCH_KEYS = ("donor_id", "donor", "batch")
# scANVI epochs: the protocol of peers.md (SCVI 100, SCANVI 20, query 20)
SCANVI_EPOCHS = {"full": {"scvi": 100, "scanvi": 20, "query": 20}}


@dataclass(frozen=True)
class System:
    name: str
    label: str
    family: str  # "scsalient" (the package's models) or "peer"
    fit_predict: Callable[..., dict]
    description: str
    budgets: tuple[str, ...] = BUDGETS
    requires: tuple[str, ...] = ()
    max_seeds: int | None = None  # cap on seeds (for slow systems under the full budget)
    inputs: tuple[str, ...] = ("counts", "lognorm")  # dataset inputs the system accepts
    input: str = "log1p CP10k"
    settings: dict = field(default_factory=dict)

    def unsupported(self, dataset_input: str) -> str | None:
        """None when the system accepts a dataset of this input kind, otherwise why not."""
        if dataset_input not in self.inputs:
            return f"needs {' or '.join(self.inputs)} input; the dataset holds {dataset_input}"
        return None

    def missing(self) -> str | None:
        """None when the system can run, otherwise why it is skipped."""
        absent = [module for module in self.requires if importlib.util.find_spec(module) is None]
        if absent:
            return (
                f"package(s) {', '.join(absent)} not installed; "
                "install the benchmark extra (pip install -e '.[bench]', done by `make bench`)"
            )
        return None


# ---------------------------------------------------------------------------------- helpers


def lognorm(adata: AnnData) -> sparse.csr_matrix | np.ndarray:
    """log1p CP10k of counts, or the values as given when the data are already log-normalised."""
    X = adata.X
    if adata.uns.get("bench_input") == "lognorm":
        return X.astype(np.float32) if sparse.issparse(X) else np.asarray(X, dtype=np.float32)
    X = sparse.csr_matrix(X, dtype=np.float32)
    totals = np.asarray(X.sum(axis=1)).ravel()
    X = sparse.diags((1e4 / np.maximum(totals, 1)).astype(np.float32)) @ X
    X.data = np.log1p(X.data)
    return sparse.csr_matrix(X)


def lognorm_adata(adata: AnnData) -> AnnData:
    out = AnnData(lognorm(adata), obs=adata.obs[[]].copy(), var=adata.var[[]].copy())
    return out


def _timed(function, *args, **kwargs):
    start = time.perf_counter()
    result = function(*args, **kwargs)
    return result, time.perf_counter() - start


def _jsonable(settings: dict) -> dict:
    return {
        k: v if isinstance(v, bool | int | float | str | type(None)) else repr(v) for k, v in settings.items()
    }


def _quiet_lightning() -> None:
    for name in ("lightning", "lightning.pytorch", "lightning.fabric", "scvi", "pytorch_lightning"):
        logging.getLogger(name).setLevel(logging.ERROR)
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", message=".*does not have many workers.*")
    warnings.filterwarnings("ignore", message=".*number of training batches.*")


# ---------------------------------------------------------------------------------- scsalient


def batch_key_of(adata: AnnData) -> str | None:
    """The data's batch column (donor, sample, plate), used for the models' batch augmentation."""
    return next((key for key in BATCH_KEYS if key in adata.obs), None)


def train_classifier(model_name: str, adata: AnnData, label_key: str, seed: int, budget: str, **init):
    """Set up and train NACT or SCTAB with its defaults on ``adata`` (in place); return model, seconds.

    The ``quick`` budget caps the epochs (``QUICK_EPOCHS``); ``full`` uses the model's defaults.
    """
    _quiet_lightning()
    import scvi

    import scsalient as ss

    scvi.settings.seed = seed
    cls = getattr(ss.model, model_name)
    start = time.perf_counter()
    cls.setup_anndata(adata, labels_key=label_key, batch_key=batch_key_of(adata))
    model = cls(adata, **init)
    train_kwargs = {"max_epochs": QUICK_EPOCHS} if budget == "quick" else {}
    model.train(enable_progress_bar=False, **train_kwargs)
    return model, time.perf_counter() - start


def _ours(model_name: str, train: AnnData, test: AnnData, label_key: str, seed: int, budget: str, **init):
    model, fit_seconds = train_classifier(model_name, train.copy(), label_key, seed, budget, **init)
    query = test.copy()
    _, predict_seconds = _timed(
        model.annotate, query, explanation=False, latent=False, min_confidence=None, min_familiarity=None
    )
    prefix = model._keys.UNS
    probabilities = query.obsm[model._keys.PROBABILITIES]
    history = model.history
    extra = {
        "epochs_run": len(history["f1_macro_train"]),
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
        "input_kind": model.input_kind,
        "batch_key": model.batch_key,
        "model_settings": _jsonable(model.init_params_["non_kwargs"]),
        "training_settings": _jsonable(model.training_settings_),
    }
    return {
        "predictions": query.obs[f"{prefix}_prediction"].astype(str).to_numpy(),
        "probabilities": probabilities,
        "familiarity": query.obs[model._keys.FAMILIARITY].to_numpy(),
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": extra,
    }


def nact(train, test, label_key, seed, budget):
    return _ours("NACT", train, test, label_key, seed, budget)


def nact_ensemble(train, test, label_key, seed, budget):
    return _ours("NACT", train, test, label_key, seed, budget, n_ensemble=5)


def sctab(train, test, label_key, seed, budget):
    return _ours("SCTAB", train, test, label_key, seed, budget)


def sctab_single(train, test, label_key, seed, budget):
    return _ours("SCTAB", train, test, label_key, seed, budget, n_ensemble=1)


# ---------------------------------------------------------------------------------- peers


def logreg(train, test, label_key, seed, budget):
    from sklearn.linear_model import LogisticRegression

    X_train, y_train = lognorm(train), train.obs[label_key].astype(str).to_numpy()
    classifier = LogisticRegression(max_iter=1000, random_state=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # ConvergenceWarning is recorded in extra instead
        classifier.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    probs, predict_seconds = _timed(classifier.predict_proba, lognorm(test))
    probabilities = pd.DataFrame(probs, index=test.obs_names, columns=classifier.classes_.astype(str))
    return {
        "predictions": classifier.classes_[probs.argmax(axis=1)].astype(str),
        "probabilities": probabilities,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": {"n_iter": int(np.max(classifier.n_iter_)), "max_iter": 1000, "solver": classifier.solver},
    }


def mlp(train, test, label_key, seed, budget):
    from sklearn.neural_network import MLPClassifier
    from sklearn.preprocessing import LabelEncoder

    # integer labels: early stopping in scikit-learn 1.7 fails on string labels (np.isnan on them)
    encoder = LabelEncoder()
    X_train = lognorm(train)
    y_train = encoder.fit_transform(train.obs[label_key].astype(str).to_numpy())
    classifier = MLPClassifier(hidden_layer_sizes=(100, 50, 25), early_stopping=True, random_state=seed)
    start = time.perf_counter()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        classifier.fit(X_train, y_train)
    fit_seconds = time.perf_counter() - start
    predictions, predict_seconds = _timed(
        lambda: encoder.inverse_transform(classifier.predict(lognorm(test)))
    )
    return {
        "predictions": np.asarray(predictions).astype(str),
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": {"n_iter": int(classifier.n_iter_), "layers": [100, 50, 25], "early_stopping": True},
    }


def celltypist(train, test, label_key, seed, budget):
    import celltypist as ct

    lognormal_input = train.uns.get("bench_input") == "lognorm"
    train_ln, test_ln = lognorm_adata(train), lognorm_adata(test)
    labels = train.obs[label_key].astype(str).to_numpy()
    start = time.perf_counter()
    model = ct.train(
        train_ln,
        labels=labels,
        use_SGD=False,
        feature_selection=False,
        check_expression=not lognormal_input,
        n_jobs=2,
    )
    fit_seconds = time.perf_counter() - start
    if lognormal_input:
        # annotate() refuses values above log1p(1e4 counts) scale; apply the model's scaler and
        # classifier as annotate() does (CellTypist's "best match" = argmax of decision scores)
        def predict():
            genes = pd.Index(test_ln.var_names).get_indexer(model.features)
            X = test_ln.X[:, genes]
            X = X.toarray() if sparse.issparse(X) else np.asarray(X)
            X = (X - model.scaler.mean_) / model.scaler.scale_
            np.minimum(X, 10, out=X)
            _, probs, labels = model.predict_labels_and_prob(X)
            return labels, probs

        (predictions, probs), predict_seconds = _timed(predict)
        probabilities = pd.DataFrame(
            probs, index=test.obs_names, columns=np.asarray(model.cell_types).astype(str)
        )
        how = "model scaler + classifier (annotate() rejects this scale)"
    else:
        result, predict_seconds = _timed(ct.annotate, test_ln, model=model, majority_voting=False)
        predictions = result.predicted_labels["predicted_labels"]
        probabilities = result.probability_matrix
        how = "celltypist.annotate, best match, no majority voting"
    return {
        "predictions": np.asarray(predictions).astype(str),
        # CellTypist's probabilities: a sigmoid of each class's decision score (not summing to 1);
        # the top one is its confidence score
        "probabilities": probabilities,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": {"version": ct.__version__, "use_SGD": False, "feature_selection": False, "prediction": how},
    }


def xgboost(train, test, label_key, seed, budget):
    import xgboost as xgb
    from sklearn.decomposition import PCA
    from sklearn.preprocessing import LabelEncoder

    encoder = LabelEncoder()
    y_train = encoder.fit_transform(train.obs[label_key].astype(str).to_numpy())
    X_train = lognorm(train)
    X_train = X_train.toarray() if sparse.issparse(X_train) else X_train
    start = time.perf_counter()
    pca = PCA(n_components=50, random_state=seed)
    Z_train = pca.fit_transform(X_train)
    classifier = xgb.XGBClassifier(tree_method="hist", n_jobs=2, random_state=seed)
    classifier.fit(Z_train, y_train)
    fit_seconds = time.perf_counter() - start

    def predict():
        X_test = lognorm(test)
        X_test = X_test.toarray() if sparse.issparse(X_test) else X_test
        return encoder.inverse_transform(classifier.predict(pca.transform(X_test)))

    predictions, predict_seconds = _timed(predict)
    return {
        "predictions": np.asarray(predictions).astype(str),
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": {"version": xgb.__version__, "n_pcs": 50, "n_estimators": classifier.n_estimators or 100},
    }


def scanvi(train, test, label_key, seed, budget):
    """scVI then scANVI on the training cells; the test cells are mapped scArches-style."""
    _quiet_lightning()
    import scvi

    scvi.settings.seed = seed
    epochs = SCANVI_EPOCHS[budget]
    train = train.copy()
    start = time.perf_counter()
    scvi.model.SCVI.setup_anndata(train)
    vae = scvi.model.SCVI(train)
    vae.train(max_epochs=epochs["scvi"], enable_progress_bar=False)
    model = scvi.model.SCANVI.from_scvi_model(vae, unlabeled_category="__unlabelled__", labels_key=label_key)
    model.train(max_epochs=epochs["scanvi"], n_samples_per_label=100, enable_progress_bar=False)
    fit_seconds = time.perf_counter() - start

    def predict():
        query = AnnData(test.X.copy(), obs=test.obs[[]].copy(), var=test.var[[]].copy())
        query.obs[label_key] = "__unlabelled__"
        scvi.model.SCANVI.prepare_query_anndata(query, model)
        mapped = scvi.model.SCANVI.load_query_data(query, model)
        mapped.train(max_epochs=epochs["query"], plan_kwargs={"weight_decay": 0.0}, enable_progress_bar=False)
        return mapped.predict(soft=True)

    probabilities, predict_seconds = _timed(predict)
    probabilities.columns = probabilities.columns.astype(str)
    return {
        "predictions": probabilities.columns.to_numpy()[probabilities.to_numpy().argmax(axis=1)],
        "probabilities": probabilities,
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": {"version": scvi.__version__, **{f"{k}_epochs": v for k, v in epochs.items()}},
    }


SYSTEMS: dict[str, System] = {
    system.name: system
    for system in [
        System(
            name="nact",
            label="scsalient NACT (default)",
            family="scsalient",
            fit_predict=nact,
            description="NACT with its defaults (one network; see the NACT user guide), batch augmentation "
            "when the data have a batch column",
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="nact_ensemble",
            label="scsalient NACT, 5-member ensemble",
            family="scsalient",
            fit_predict=nact_ensemble,
            description="as nact, with a deep ensemble of 5 networks (n_ensemble=5)",
            budgets=("full",),
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="sctab",
            label="scsalient SCTAB (default)",
            family="scsalient",
            fit_predict=sctab,
            description="SCTAB with its defaults (see the SCTAB user guide), batch augmentation when the "
            "data have a batch column",
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="sctab_single",
            label="scsalient SCTAB, one network",
            family="scsalient",
            fit_predict=sctab_single,
            description="as sctab, with one network (n_ensemble=1)",
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="logreg",
            label="logistic regression",
            family="peer",
            fit_predict=logreg,
            description="sklearn LogisticRegression(max_iter=1000), lbfgs",
        ),
        System(
            name="mlp",
            label="MLP 100-50-25",
            family="peer",
            fit_predict=mlp,
            description="sklearn MLPClassifier (100, 50, 25), early_stopping=True (ACTINN layout)",
        ),
        System(
            name="celltypist",
            label="CellTypist",
            family="peer",
            fit_predict=celltypist,
            description="celltypist.train(use_SGD=False, feature_selection=False); annotate without voting",
            budgets=("full",),
            requires=("celltypist",),
        ),
        System(
            name="xgboost",
            label="XGBoost on 50 PCs",
            family="peer",
            fit_predict=xgboost,
            description="PCA(50) of log1p CP10k, XGBClassifier(tree_method='hist') with default trees",
            budgets=("full",),
            requires=("xgboost",),
            input="50 PCs of log1p CP10k",
        ),
        System(
            name="scanvi",
            label="scANVI",
            family="peer",
            fit_predict=scanvi,
            description=(
                "scvi-tools SCVI 100 epochs, then SCANVI 20 epochs; test cells mapped as an "
                "scArches query (20 epochs) and predicted"
            ),
            budgets=("full",),
            max_seeds=1,
            inputs=("counts",),
            input="counts",
        ),
    ]
}
