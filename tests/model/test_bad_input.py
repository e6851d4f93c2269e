"""NACT and SCTAB on awkward input: the training split, training without a seed."""

from __future__ import annotations

import anndata as ad
import numpy as np
import pytest
import scvi

import scsalient as ss
from scsalient.model.base._blocks import BlockDataSplitter, stratified_split

QUIET = {"enable_progress_bar": False}


def _sim(n_cells: int = 400, seed: int = 0, library_size: float = 1500.0) -> ad.AnnData:
    return ss.datasets.simulate(
        n_cells=n_cells, n_genes=200, n_cell_types=4, n_donors=2, library_size=library_size, seed=seed
    )


def _sorted_with_rare_class(n_rare: int = 6) -> ad.AnnData:
    """Cells sorted by type, the last type rare (a few cells at the end of the file)."""
    adata = _sim(600)
    order = np.argsort(adata.obs["cell_type"].to_numpy(), kind="stable")
    adata = adata[order].copy()
    rare = np.flatnonzero(adata.obs["cell_type"].to_numpy() == "type_3")
    keep = np.ones(adata.n_obs, dtype=bool)
    keep[rare[n_rare:]] = False
    return adata[keep].copy()


def _split_classes(adata: ad.AnnData, seed: int, **kwargs) -> tuple[set, set, set]:
    scvi.settings.seed = seed
    ss.model.SCTAB.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.SCTAB(adata, n_ensemble=1, n_d=8, n_a=8)
    splitter = BlockDataSplitter(model.adata_manager, train_size=0.9, batch_size=64, **kwargs)
    splitter.setup()
    labels = adata.obs["cell_type"].to_numpy()
    assert not set(splitter.train_idx) & set(splitter.val_idx)
    assert len(splitter.train_idx) + len(splitter.val_idx) == adata.n_obs
    return set(labels), set(labels[splitter.train_idx]), set(labels[splitter.val_idx])


# ---------------------------------------------------------------- 3. stratified split
def test_stratified_split_keeps_every_class_in_training_and_validation():
    labels = np.repeat([0, 1, 2, 3, 4], [500, 300, 40, 2, 1])  # sorted by class, two rare classes
    for seed in range(10):
        for block_size in (1, 32):
            train, val, test = stratified_split(labels, 0.9, 0.1, seed, block_size=block_size)
            assert len(test) == 0 and len(train) + len(val) == len(labels)
            assert set(labels[train]) == {0, 1, 2, 3, 4}
            assert set(labels[val]) == {0, 1, 2, 3}  # every class with two cells or more
            # each class split about 9:1
            assert abs((labels[val] == 0).sum() - 50) <= 1 and abs((labels[val] == 2).sum() - 4) <= 1
    train, val, test = stratified_split(labels, 0.7, 0.1, 0, block_size=32)
    assert len(test) > 0 and set(labels[train]) == {0, 1, 2, 3, 4}
    assert not (set(train) & set(val)) and not (set(train) & set(test)) and not (set(val) & set(test))


def test_stratified_split_holds_out_whole_blocks_where_the_classes_allow():
    labels = np.random.default_rng(0).integers(0, 4, 6400)  # shuffled classes, 100 blocks of 64
    train, val, _ = stratified_split(labels, 0.9, 0.1, 0, block_size=64)
    assert abs(len(val) - 640) <= 4
    blocks = np.unique(val // 64)
    assert len(blocks) <= 14  # 10 whole blocks and a few partial ones, not cells everywhere
    assert set(labels[train]) == set(labels[val]) == {0, 1, 2, 3}


@pytest.mark.parametrize("seed", range(6))
def test_backed_split_sorted_by_class_trains_on_every_class(tmp_path, seed):
    path = tmp_path / "sorted.h5ad"
    _sorted_with_rare_class().write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        classes, trained_on, validated_on = _split_classes(backed, seed, block_size=64)
    finally:
        backed.file.close()
    assert trained_on == classes and validated_on == classes


@pytest.mark.parametrize("seed", range(6))
def test_in_memory_split_trains_and_validates_on_every_class(seed):
    classes, trained_on, validated_on = _split_classes(_sorted_with_rare_class(n_rare=3), seed)
    assert trained_on == classes and validated_on == classes


def test_split_is_drawn_once_without_a_seed():
    adata = _sorted_with_rare_class()
    scvi.settings.seed = None
    ss.model.NACT.setup_anndata(adata, labels_key="cell_type")
    model = ss.model.NACT(adata, n_ensemble=1)
    splitter = BlockDataSplitter(model.adata_manager, train_size=0.9, batch_size=64)
    splitter.setup()
    first = splitter.val_idx.copy()
    splitter.setup("fit")  # Lightning's own call must not draw a different split
    np.testing.assert_array_equal(first, splitter.val_idx)


# ---------------------------------------------------------------- 4. no seed
def test_backed_training_without_a_seed(tmp_path):
    path = tmp_path / "sim.h5ad"
    _sim(300).write_h5ad(path)
    backed = ad.read_h5ad(path, backed="r")
    try:
        scvi.settings.seed = None
        ss.model.SCTAB.setup_anndata(backed, labels_key="cell_type")
        model = ss.model.SCTAB(backed, n_ensemble=1, n_d=8, n_a=8)
        model.train(max_epochs=2, **QUIET)
        assert len(model.history["f1_macro_validation"]) == 2
    finally:
        backed.file.close()
