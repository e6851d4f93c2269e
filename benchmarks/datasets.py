"""Benchmark datasets and their fixed train/test splits.

Every loader returns an AnnData whose ``.X`` holds either integer counts or log-normalised
values (``uns["bench_input"]`` says which) and whose ``obs`` has the label column
``LABEL_KEY`` (and, where the data carry them, Cell Ontology IDs in ``ONTOLOGY_ID_KEY``).
Splits are computed once and written to ``results/splits/<dataset>.json``; later runs reuse
the stored indices (and refuse them if the data changed).
"""

from __future__ import annotations

import functools
import hashlib
import json
from collections.abc import Callable
from dataclasses import dataclass, replace
from pathlib import Path

import anndata as ad
import h5py
import numpy as np
import pandas as pd
from sklearn.model_selection import train_test_split

BENCH_DIR = Path(__file__).resolve().parent
DATA_DIR = Path(__file__).resolve().parents[1].parent / "shared" / "data"
SPLIT_DIR = BENCH_DIR / "results" / "splits"
LABEL_KEY = "cell_type"
#: obs column with the Cell Ontology ID of each cell's label (CELLxGENE schema name)
ONTOLOGY_ID_KEY = "cell_type_ontology_term_id"
ONTOLOGY_FILE = DATA_DIR / "ontology" / "cl-basic.obo"


@dataclass(frozen=True)
class Dataset:
    name: str
    title: str
    file: str
    input: str  # "counts" or "lognorm"
    split_rule: str
    load: Callable[[], ad.AnnData]
    split: Callable[[ad.AnnData], tuple[np.ndarray, np.ndarray]]

    @property
    def path(self) -> Path:
        return DATA_DIR / self.file

    def available(self) -> str | None:
        """None when the data file exists, otherwise why the dataset is skipped."""
        if not self.path.exists():
            return f"data file not found: {self.path}"
        return None


# ---------------------------------------------------------------------------------- loaders


def _load_kang() -> ad.AnnData:
    adata = ad.read_h5ad(DATA_DIR / "kang2018_pbmc_8k.h5ad")
    adata.obs["donor_id"] = adata.obs["donor_id"].astype(str)
    return adata


def _load_mop() -> ad.AnnData:
    # read the RNA modality and the global obs only (the ATAC modality is not needed)
    with h5py.File(DATA_DIR / "mop_snareseq2_multiome_10k.h5mu", "r") as handle:
        obs = ad.io.read_elem(handle["obs"])
        rna = ad.io.read_elem(handle["mod/rna"])
    obs = obs.loc[rna.obs_names]
    rna.obs = obs[["batch", "cell_type", "cell_type_coarse"]].copy()
    rna.obs["batch"] = rna.obs["batch"].astype(str)
    return rna


def _load_spectra() -> ad.AnnData:
    adata = ad.read_h5ad(DATA_DIR / "spectra_tils_1k_lognorm.h5ad")
    adata.obsm.clear()  # precomputed embeddings were made on all cells, test included
    return adata


# ---------------------------------------------------------------------------------- split rules

KANG_TRAIN_DONORS = ("1015", "1016", "1244")
KANG_TEST_DONORS = ("1256", "1488")
MOP_TEST_SUFFIXES = ("09J", "09K", "09L")


def inner_held_out(batches) -> list[str]:
    """Training batches the inner split holds out: the last third, sorted by name.

    The inner split scores settings without any test cell (MOp: sub-libraries 09G, 09H, 09I;
    Kang: donor 1244); the classifiers' defaults and the Translator's settings are chosen on it.
    """
    names = sorted(set(np.asarray(batches).astype(str).tolist()))
    return names[len(names) - int(np.ceil(len(names) / 3)) :]


def _split_kang(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    donors = adata.obs["donor_id"].astype(str).to_numpy()
    unknown = set(donors) - set(KANG_TRAIN_DONORS) - set(KANG_TEST_DONORS)
    if unknown:
        raise ValueError(f"Kang: unexpected donors {sorted(unknown)}")
    return np.flatnonzero(np.isin(donors, KANG_TRAIN_DONORS)), np.flatnonzero(
        np.isin(donors, KANG_TEST_DONORS)
    )


def _split_mop(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    batch = adata.obs["batch"].astype(str)
    is_test = batch.str.endswith(MOP_TEST_SUFFIXES).to_numpy()
    found = sorted(set(batch[is_test]))
    if len(found) != len(MOP_TEST_SUFFIXES):
        raise ValueError(f"MOp: expected {len(MOP_TEST_SUFFIXES)} test sub-libraries, found {found}")
    return np.flatnonzero(~is_test), np.flatnonzero(is_test)


def _split_spectra(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=0.2, stratify=labels, random_state=0)
    return np.sort(train), np.sort(test)


def _load_pbmc68k() -> ad.AnnData:
    import scanpy as sc

    adata = sc.datasets.pbmc68k_reduced().raw.to_adata()  # log-normalised; .X is scaled
    adata.obs = adata.obs[["bulk_labels"]].rename(columns={"bulk_labels": LABEL_KEY})
    adata.obsm.clear()
    return adata


def _split_stratified(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
    train, test = train_test_split(np.arange(adata.n_obs), test_size=0.3, stratify=labels, random_state=0)
    return np.sort(train), np.sort(test)


# ---------------------------------------------------------------------------------- transfer pairs

TRANSFER_DIR = DATA_DIR / "transfer"
#: obs column of the transfer files whose labels are harmonised across the files of one tissue
TRANSFER_LABEL = "cell_type_common"
#: obs column the transfer loader writes with the part each cell comes from
PART_KEY = "part"


def _load_transfer(reference: str, query: str) -> ad.AnnData:
    """Reference and query cells on their shared genes (reference order), labels harmonised.

    ``obs[PART_KEY]`` says which file each cell comes from; ``obs["batch"]`` is the reference's
    own batch column where it has one (donor, plate, sample; the query's cells get theirs, or the
    part's name, unused by the models).
    """
    ref = ad.read_h5ad(TRANSFER_DIR / f"{reference}.h5ad")
    qry = ad.read_h5ad(TRANSFER_DIR / f"{query}.h5ad")
    shared = ref.var_names[ref.var_names.isin(qry.var_names)]
    # the reference's batches (donors, plates), for the models' batch augmentation
    batch_key = next((key for key in ("donor", "batch", "sample_id") if key in ref.obs), None)
    parts = []
    for name, part in (("reference", ref), ("query", qry)):
        part = part[:, shared].copy()
        obs = pd.DataFrame(index=part.obs_names.astype(str))
        obs[LABEL_KEY] = part.obs[TRANSFER_LABEL].astype(str).to_numpy()
        obs[PART_KEY] = name
        if batch_key is not None:
            obs["batch"] = part.obs[batch_key].astype(str).to_numpy() if batch_key in part.obs else name
        parts.append(ad.AnnData(X=sparse_csr(part.X), obs=obs, var=pd.DataFrame(index=shared.astype(str))))
    out = ad.concat(parts, join="outer", index_unique=None)
    out.obs_names_make_unique()
    # cells whose expression in the shared genes is all zero cannot be classified by any system
    keep = np.asarray(out.X.sum(axis=1)).ravel() > 0
    return out[keep].copy()


def sparse_csr(x):
    from scipy import sparse

    return sparse.csr_matrix(x, dtype=np.float32)


def _split_parts(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    part = adata.obs[PART_KEY].astype(str).to_numpy()
    return np.flatnonzero(part == "reference"), np.flatnonzero(part == "query")


def _transfer(name: str, reference: str, query: str, title: str, input: str) -> Dataset:
    return Dataset(
        name=name,
        title=title,
        file=f"transfer/{query}.h5ad",
        input=input,
        split_rule=f"reference {reference} -> query {query}, shared genes",
        load=functools.partial(_load_transfer, reference, query),
        split=_split_parts,
    )


TRANSFER_TASKS = {
    "kang_stim": ("pbmc_kang_ctrl_muscat", "pbmc_kang_stim_muscat", "PBMC control -> IFN-beta", "counts"),
    "pbmc_celseq2": ("pbmc_kang_ctrl_muscat", "pbmc_ding_celseq2_scmoo", "PBMC 10x -> CEL-Seq2", "counts"),
    "pancreas_smartseq2": (
        "pancreas_baron_cepo",
        "pancreas_segerstolpe_cepo",
        "pancreas inDrop -> Smart-seq2",
        "counts",
    ),
    "pancreas_c1": ("pancreas_baron_cepo", "pancreas_lawlor_cepo", "pancreas inDrop -> C1", "counts"),
    "pancreas_xin_wang": (
        "pancreas_xin_scclassify",
        "pancreas_wang_scclassify",
        "pancreas Xin -> Wang (log-normalised)",
        "lognorm",
    ),
    "tme": (
        "tme_puram_hnscc_chetah",
        "tme_tirosh_mel80_scannotatr",
        "head-and-neck TME -> melanoma TME (log-normalised)",
        "lognorm",
    ),
    "kidney": (
        "kidney_tabulamuris_cellannotator",
        "kidney_park2018_cellannotator",
        "mouse kidney immune, two studies",
        "counts",
    ),
    "celllines_dropseq": (
        "celllines3_celseq2_mixology",
        "celllines3_dropseq_mixology",
        "cell lines CEL-Seq2 -> Drop-seq",
        "counts",
    ),
    "celllines_10x": (
        "celllines3_celseq2_mixology",
        "celllines3_10x_cepo",
        "cell lines CEL-Seq2 -> 10x",
        "counts",
    ),
    "celllines5": (
        "celllines3_dropseq_mixology",
        "celllines5_celseq2_mixology",
        "cell lines Drop-seq -> CEL-Seq2, 2 unseen lines",
        "counts",
    ),
    "mesc": (
        "mesc_kolodziejczyk_batch2_scmerge",
        "mesc_kolodziejczyk_batch3_scmerge",
        "mouse ES culture conditions, batch 2 -> 3",
        "counts",
    ),
}


DATASETS: dict[str, Dataset] = {
    "kang": Dataset(
        name="kang",
        title="Kang 2018 PBMC (4 types)",
        file="kang2018_pbmc_8k.h5ad",
        input="counts",
        split_rule="donor holdout: train donors 1015, 1016, 1244; test donors 1256, 1488",
        load=_load_kang,
        split=_split_kang,
    ),
    "mop": Dataset(
        name="mop",
        title="MOp SNARE-seq2 RNA (23 types)",
        file="mop_snareseq2_multiome_10k.h5mu",
        input="counts",
        split_rule="sub-library holdout: test = batches ending in 09J, 09K, 09L",
        load=_load_mop,
        split=_split_mop,
    ),
    "spectra": Dataset(
        name="spectra",
        title="Spectra TILs, log-normalised (14 types)",
        file="spectra_tils_1k_lognorm.h5ad",
        input="lognorm",
        split_rule="stratified 80/20 split of cells, random_state=0",
        load=_load_spectra,
        split=_split_spectra,
    ),
    "pbmc68k": Dataset(
        name="pbmc68k",
        title="scanpy pbmc68k_reduced, log-normalised (10 types)",
        file="",
        input="lognorm",
        split_rule="stratified 70/30 split of cells, random_state=0",
        load=_load_pbmc68k,
        split=_split_stratified,
    ),
    **{name: _transfer(name, *args) for name, args in TRANSFER_TASKS.items()},
}


def _inner(name: str) -> Dataset:
    """The within-study split ``name`` without its test cells.

    The last third of its training batches is held out.
    """
    outer = DATASETS[name]
    batch_key = {"kang": "donor_id", "mop": "batch"}[name]

    def split(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
        train, _ = outer.split(adata)
        batches = adata.obs[batch_key].astype(str).to_numpy()
        held_out = inner_held_out(batches[train])
        return np.sort(train[~np.isin(batches[train], held_out)]), np.sort(
            train[np.isin(batches[train], held_out)]
        )

    return replace(
        outer,
        name=f"{name}_inner",
        title=f"{outer.title}, inner split (no test cell)",
        split_rule=f"{outer.split_rule}; training batches only, the last third held out",
        split=split,
    )


DATASETS.update({f"{name}_inner": _inner(name) for name in ("kang", "mop")})


def _leave_out(name: str, label: str, short: str) -> Dataset:
    """The within-study split ``name`` with the cells of type ``label`` left out of training.

    The test cells keep them: a type the reference never saw, whose cells a classifier can only
    mislabel or leave unassigned.
    """
    outer = DATASETS[name]

    def split(adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
        train, test = outer.split(adata)
        labels = adata.obs[LABEL_KEY].astype(str).to_numpy()
        return train[labels[train] != label], test

    return replace(
        outer,
        name=f"{name}_without_{short}",
        title=f"{outer.title}, {label} left out of training",
        split_rule=f"{outer.split_rule}; {label} removed from the training cells",
        split=split,
    )


#: within-study splits with one type left out of the reference (unseen-type detection)
LEAVE_ONE_OUT = {"kang_without_nk": ("kang", "NK cells", "nk"), "mop_without_ast": ("mop", "Ast", "ast")}
DATASETS.update({task: _leave_out(*args) for task, args in LEAVE_ONE_OUT.items()})

#: the tasks on which NACT's and SCTAB's defaults were chosen (``results/defaults.md``); every
#: other annotation task only reports them
SELECTION_TASKS = ("mop_inner", "kang_inner", "kang_stim", "pbmc_celseq2", "tme", "celllines_dropseq")


# ---------------------------------------------------------------------------------- Cell Ontology


def label_to_cl_id(obs: pd.DataFrame) -> dict[str, str] | None:
    """CL ID of every label, read from the cells (the training cells), or None without ID column.

    Raises
    ------
    ValueError
        If the cells of one label carry several IDs, or some carry none.
    """
    if ONTOLOGY_ID_KEY not in obs:
        return None
    pairs = obs[[LABEL_KEY, ONTOLOGY_ID_KEY]].astype(str)
    missing = obs[ONTOLOGY_ID_KEY].isna() | pairs[ONTOLOGY_ID_KEY].isin(["", "nan", "unknown"])
    if missing.any():
        labels = sorted(pairs.loc[missing, LABEL_KEY].unique())
        raise ValueError(f"{int(missing.sum())} cell(s) of {labels} have no {ONTOLOGY_ID_KEY}")
    ids = pairs.groupby(LABEL_KEY)[ONTOLOGY_ID_KEY].unique()
    ambiguous = {label: sorted(values) for label, values in ids.items() if len(values) > 1}
    if ambiguous:
        raise ValueError(f"labels with several {ONTOLOGY_ID_KEY} values: {ambiguous}")
    return {str(label): str(values[0]) for label, values in ids.items()}


@functools.cache
def cell_ontology():
    """The Cell Ontology of the shared data folder (read once per process), or None if absent."""
    if not ONTOLOGY_FILE.exists():
        return None
    from scsalient.datasets import cell_ontology as read

    return read(ONTOLOGY_FILE)


# ---------------------------------------------------------------------------------- stored splits


def _fingerprint(adata: ad.AnnData) -> str:
    digest = hashlib.sha1()
    for name in adata.obs_names:
        digest.update(name.encode())
        digest.update(b"\0")
    return digest.hexdigest()


def get_split(dataset: Dataset, adata: ad.AnnData) -> tuple[np.ndarray, np.ndarray]:
    """Train and test row indices, read from the stored split file or computed and stored."""
    path = SPLIT_DIR / f"{dataset.name}.json"
    fingerprint = _fingerprint(adata)
    if path.exists():
        stored = json.loads(path.read_text())
        if stored["n_obs"] != adata.n_obs or stored["obs_names_sha1"] != fingerprint:
            raise ValueError(
                f"{path} was made for other data (n_obs {stored['n_obs']} vs {adata.n_obs}); "
                "delete it to redo the split."
            )
        return np.asarray(stored["train"], dtype=np.int64), np.asarray(stored["test"], dtype=np.int64)
    train, test = dataset.split(adata)
    if np.intersect1d(train, test).size:
        raise AssertionError(f"{dataset.name}: train and test overlap")
    labels = adata.obs[LABEL_KEY].astype(str)
    record = {
        "dataset": dataset.name,
        "file": dataset.file,
        "rule": dataset.split_rule,
        "label_key": LABEL_KEY,
        "n_obs": int(adata.n_obs),
        "n_train": len(train),
        "n_test": len(test),
        "obs_names_sha1": fingerprint,
        "train_label_counts": labels.iloc[train].value_counts().to_dict(),
        "test_label_counts": labels.iloc[test].value_counts().to_dict(),
        "train": [int(i) for i in train],
        "test": [int(i) for i in test],
    }
    SPLIT_DIR.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(record))
    return train, test


def load_split(name: str) -> tuple[ad.AnnData, ad.AnnData, Dataset]:
    """Load a dataset and return copies of its train and test parts."""
    dataset = DATASETS[name]
    adata = dataset.load()
    adata.obs[LABEL_KEY] = pd.Categorical(adata.obs[LABEL_KEY].astype(str))
    adata.uns["bench_input"] = dataset.input
    train, test = get_split(dataset, adata)
    train_data, test_data = adata[train].copy(), adata[test].copy()
    for part in (train_data, test_data):
        part.obs[LABEL_KEY] = part.obs[LABEL_KEY].cat.remove_unused_categories()
    return train_data, test_data, dataset
