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

#: NACT's largest number of epochs per budget (the default preset stops early on validation macro-F1)
NACT_EPOCHS = {"quick": 15, "full": 30}
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


def train_nact(
    adata: AnnData,
    label_key: str,
    seed: int,
    *,
    preset: str = "auto",
    max_epochs: int | None = None,
    n_ensemble: int = 1,
    distill: bool | dict = False,
):
    """Set up and train NACT on ``adata`` (in place); return the model and the seconds it took.

    The default preset uses the data's batch column (``BATCH_KEYS``) for its augmentation; the
    paper preset ignores batches, as published. With ``distill`` (``True`` or the keyword
    arguments of ``model.distill()``) the trained ensemble is distilled into one network, which
    is returned; the seconds include both trainings.
    """
    _quiet_lightning()
    import scvi

    import scsalient as ss

    scvi.settings.seed = seed
    batch_key = next((key for key in BATCH_KEYS if key in adata.obs), None) if preset != "paper" else None
    start = time.perf_counter()
    ss.model.NACT.setup_anndata(adata, labels_key=label_key, batch_key=batch_key)
    model = ss.model.NACT(adata, n_ensemble=n_ensemble)
    model.train(max_epochs=max_epochs, preset=preset, enable_progress_bar=False)
    if distill:
        model = distilled(model, **(distill if isinstance(distill, dict) else {}))
    return model, time.perf_counter() - start


def distilled(ensemble, **train_kwargs):
    """One network distilled from a trained ensemble, with the ensemble kept as ``teacher_``."""
    student = ensemble.distill(enable_progress_bar=False, **train_kwargs)
    student.teacher_ = ensemble  # for teacher_record
    return student


def teacher_record(model, test: AnnData, label_key: str) -> dict:
    """Macro-F1 on the test cells of the ensemble a distilled model learnt from (none otherwise)."""
    teacher = getattr(model, "teacher_", None)
    if teacher is None:
        return {}
    from sklearn.metrics import f1_score

    truth = test.obs[label_key].astype(str).to_numpy()
    predictions = np.asarray(teacher.predict(test)).astype(str)
    labels = np.unique(np.concatenate([truth, predictions]))
    return {
        "teacher_macro_f1": float(
            f1_score(truth, predictions, labels=labels, average="macro", zero_division=0)
        ),
        "teacher_epochs_run": len(teacher.history["f1_macro_validation"]),
    }


def _nact(train: AnnData, test: AnnData, label_key: str, seed: int, **train_kwargs):
    model, fit_seconds = train_nact(train.copy(), label_key, seed, **train_kwargs)
    predictions, predict_seconds = _timed(model.predict, test)
    history = model.history
    epochs = len(history["f1_macro_validation"])
    extra = {
        **teacher_record(model, test, label_key),
        "epochs_run": epochs,
        "seconds_per_epoch": fit_seconds / epochs,
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
        "input_kind": model.input_kind,
        "batch_key": model.batch_key,
        "model_settings": _jsonable(model.init_params_["non_kwargs"]),
        "training_settings": _jsonable(model.training_settings_),
    }
    for key in ("f1_macro_validation", "f1_macro_train", "ce_validation"):
        if key in history:
            extra[f"{key}_per_epoch"] = [round(float(v), 4) for v in history[key].iloc[:, 0]]
    return {
        "predictions": np.asarray(predictions).astype(str),
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": extra,
    }


def nact(train, test, label_key, seed, budget):
    return _nact(train, test, label_key, seed, max_epochs=NACT_EPOCHS[budget])


def nact_ensemble(train, test, label_key, seed, budget):
    return _nact(train, test, label_key, seed, max_epochs=NACT_EPOCHS[budget], n_ensemble=5)


def nact_distilled(train, test, label_key, seed, budget):
    return _nact(train, test, label_key, seed, max_epochs=NACT_EPOCHS[budget], n_ensemble=5, distill=True)


#: distill()'s settings for NACT before the consistent teacher and the network's input dropout
NACT_EARLIER_DISTILL = {"consistent": False, "input_dropout": 0.0}


def nact_distilled_earlier(train, test, label_key, seed, budget):
    epochs = NACT_EPOCHS[budget]
    return _nact(train, test, label_key, seed, max_epochs=epochs, n_ensemble=5, distill=NACT_EARLIER_DISTILL)


def nact_paper(train, test, label_key, seed, budget):
    return _nact(train, test, label_key, seed, preset="paper")


#: SCTAB's largest number of epochs (early stopping on validation macro-F1 usually ends sooner)
SCTAB_EPOCHS = {"quick": 20, "full": 30}


def _sctab(
    train: AnnData,
    test: AnnData,
    label_key: str,
    seed: int,
    *,
    budget: str,
    n_ensemble: int,
    distill: bool = False,
    distill_model_kwargs: dict | None = None,
):
    _quiet_lightning()
    import scvi

    import scsalient as ss

    scvi.settings.seed = seed
    adata = train.copy()
    batch_key = next((key for key in BATCH_KEYS if key in adata.obs), None)
    start = time.perf_counter()
    ss.model.SCTAB.setup_anndata(adata, labels_key=label_key, batch_key=batch_key)
    model = ss.model.SCTAB(adata, n_ensemble=n_ensemble)
    model.train(max_epochs=SCTAB_EPOCHS[budget], enable_progress_bar=False)
    if distill:
        model = distilled(model, max_epochs=SCTAB_EPOCHS[budget], model_kwargs=distill_model_kwargs)
    fit_seconds = time.perf_counter() - start
    query = test.copy()
    _, predict_seconds = _timed(model.annotate, query, mask=False, embedding=False)
    epochs = len(model.history["f1_macro_validation"])
    extra = {
        **teacher_record(model, test, label_key),
        "n_ensemble": n_ensemble,
        "batch_key": batch_key,
        "epochs_run": epochs,
        "seconds_per_epoch": fit_seconds / epochs,
        "n_parameters": int(sum(p.numel() for p in model.module.parameters())),
        "training_settings": _jsonable(model.training_settings_),
        "f1_macro_validation_per_epoch": [
            round(float(v), 4) for v in model.history["f1_macro_validation"].iloc[:, 0]
        ],
    }
    return {
        "predictions": query.obs["sctab_prediction"].astype(str).to_numpy(),
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": extra,
    }


def sctab(train, test, label_key, seed, budget):
    return _sctab(train, test, label_key, seed, budget=budget, n_ensemble=1)


def sctab_ensemble(train, test, label_key, seed, budget):
    return _sctab(train, test, label_key, seed, budget=budget, n_ensemble=5)


def sctab_distilled(train, test, label_key, seed, budget):
    # a network as wide as a member: distill()'s default before the wider network
    return _sctab(
        train, test, label_key, seed, budget=budget, n_ensemble=5, distill=True, distill_model_kwargs={}
    )


#: the network SCTAB's ensemble is distilled into by default: four times as wide as a member
#: (``distill()``; spelled out so that the system stays the same if that default changes)
SCTAB_WIDE = {"n_d": 512, "n_a": 256}


def sctab_distilled_wide(train, test, label_key, seed, budget):
    return _sctab(
        train,
        test,
        label_key,
        seed,
        budget=budget,
        n_ensemble=5,
        distill=True,
        distill_model_kwargs=SCTAB_WIDE,
    )


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
    predictions, predict_seconds = _timed(classifier.predict, lognorm(test))
    return {
        "predictions": predictions.astype(str),
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
            return model.predict_labels_and_prob(X)[2]

        predictions, predict_seconds = _timed(predict)
        how = "model scaler + classifier (annotate() rejects this scale)"
    else:
        result, predict_seconds = _timed(ct.annotate, test_ln, model=model, majority_voting=False)
        predictions = result.predicted_labels["predicted_labels"]
        how = "celltypist.annotate, best match, no majority voting"
    return {
        "predictions": np.asarray(predictions).astype(str),
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
        return mapped.predict()

    predictions, predict_seconds = _timed(predict)
    return {
        "predictions": np.asarray(predictions).astype(str),
        "fit_seconds": fit_seconds,
        "predict_seconds": predict_seconds,
        "extra": {"version": scvi.__version__, **{f"{k}_epochs": v for k, v in epochs.items()}},
    }


SYSTEMS: dict[str, System] = {
    system.name: system
    for system in [
        System(
            name="nact",
            label="scsalient NACT, one network",
            family="scsalient",
            fit_predict=nact,
            description=(
                "N-ACT, one network (n_ensemble=1), default preset (see the NACT user guide), batch "
                "augmentation when the data have a batch column, early stopping on the validation "
                "macro-F1 of 10% of the train cells, at most 15 (quick) / 30 (full) epochs"
            ),
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="nact_ensemble",
            label="scsalient NACT (default: 5-member ensemble)",
            family="scsalient",
            fit_predict=nact_ensemble,
            description=(
                "the default: as nact, with a deep ensemble of 5 members trained together (n_ensemble=5)"
            ),
            budgets=("full",),
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="nact_distilled_earlier",
            label="scsalient NACT, one network distilled from the ensemble, earlier distill()",
            family="scsalient",
            fit_predict=nact_distilled_earlier,
            description=(
                "as nact_ensemble, then distilled into one network (model.distill(consistent=False, "
                "input_dropout=0.0): temperature 2, the ensemble's probabilities of the unshifted "
                "cells only, same training cells and settings; distill()'s default before the "
                "consistent teacher and the input dropout); fit time includes both trainings"
            ),
            budgets=("full",),
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="nact_distilled",
            label="scsalient NACT, one network distilled from the ensemble",
            family="scsalient",
            fit_predict=nact_distilled,
            description=(
                "as nact_ensemble, then distilled into one network (model.distill(): temperature 2, "
                "the ensemble's probabilities of the batch-shifted cells the network sees, input "
                "dropout 0.25, same training cells and other settings); fit time includes both "
                "trainings"
            ),
            budgets=("full",),
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="nact_paper",
            label="scsalient NACT, published settings",
            family="scsalient",
            fit_predict=nact_paper,
            description=(
                "N-ACT, preset 'paper': lr 1e-4, batch 128, 50 epochs (the published settings); seed 0 only"
            ),
            budgets=("full",),
            max_seeds=1,
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="sctab",
            label="scsalient SCTAB, one network",
            family="scsalient",
            fit_predict=sctab,
            description=(
                "scTab TabNet, one member, preset 'auto', donor augmentation when the data have a donor "
                "column, early stopping on validation macro-F1 (at most 20 quick / 30 full epochs)"
            ),
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="sctab_ensemble",
            label="scsalient SCTAB (default: 5-member ensemble)",
            family="scsalient",
            fit_predict=sctab_ensemble,
            description="the default: as sctab, with a deep ensemble of 5 members trained together",
            budgets=("full",),
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="sctab_distilled",
            label="scsalient SCTAB, one member-wide network distilled from the ensemble",
            family="scsalient",
            fit_predict=sctab_distilled,
            description=(
                "as sctab_ensemble, then distilled into one network as wide as a member "
                "(model.distill(model_kwargs={}): temperature 2, the ensemble's probabilities only, "
                "same training cells and settings; distill()'s default before the wider network); "
                "fit time includes both trainings"
            ),
            budgets=("full",),
            input="as given (counts are normalised inside the model)",
        ),
        System(
            name="sctab_distilled_wide",
            label="scsalient SCTAB, one network distilled from the ensemble (default: 4x as wide)",
            family="scsalient",
            fit_predict=sctab_distilled_wide,
            description=(
                "as sctab_distilled, with a network four times as wide as a member, distill()'s "
                "default (n_d 512, n_a 256); fit time includes both trainings"
            ),
            budgets=("full",),
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
