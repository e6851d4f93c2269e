"""Reading on-disk (backed) AnnData in contiguous row blocks, shuffled within a buffer of blocks.

Random access to single rows of an HDF5 sparse matrix costs two reads per row; a contiguous
slice of rows costs two reads in all. Following scTab's loading scheme, cells are therefore
read as contiguous blocks of rows, a buffer of randomly chosen blocks is held in memory and
shuffled, and minibatches are cut from the buffer. Only the buffer is ever in memory.
"""

from __future__ import annotations

import numpy as np
import torch
from scipy import sparse
from scvi import REGISTRY_KEYS, settings
from scvi.dataloaders import DataSplitter
from torch.utils.data import DataLoader, IterableDataset

#: rows per contiguous block read from disk
BLOCK_SIZE = 256
#: blocks held (and shuffled together) in memory
BUFFER_BLOCKS = 32


def is_backed(adata) -> bool:
    """Whether ``adata``'s expression lives on disk.

    True for ``read_h5ad(..., backed="r")`` and for an AnnData whose ``X`` is one of anndata's
    on-disk sparse datasets, e.g. ``AnnData(X=anndata.io.sparse_dataset(zarr_group["X"]), ...)``
    over a zarr store.
    """
    if getattr(adata, "isbacked", False):
        return True
    return _sparse_on_disk(getattr(adata, "X", None))


#: rows between two wanted rows up to which one slice is read rather than two
MAX_GAP = 32

#: values (cells x genes) per block of a prediction when no batch size is given: the forward
#: pass holds a few cells x genes arrays at once, and arrays of ~2 MiB keep them in the CPU's
#: cache (on Kang PBMCs, 2,511 genes, one core: N-ACT's prediction took ~15% less time in
#: blocks of 208-256 cells than of 1,024, SCTAB's ~30% less)
PREDICTION_BLOCK_VALUES = 2**19
#: fewest and most cells per block of a prediction when no batch size is given
PREDICTION_BLOCK_CELLS = (64, 1024)


def prediction_block_size(n_genes: int) -> int:
    """Cells per forward pass of a prediction when none is given.

    :data:`PREDICTION_BLOCK_VALUES` values (cells x ``n_genes``), within
    :data:`PREDICTION_BLOCK_CELLS`.
    """
    low, high = PREDICTION_BLOCK_CELLS
    return int(np.clip(PREDICTION_BLOCK_VALUES // max(int(n_genes), 1), low, high))


#: cells read from an on-disk matrix at once when minibatches are read in order (prediction):
#: each read of a backed file has a fixed cost (~10 ms in anndata 0.12, which re-validates the
#: indices), so the small blocks of a wide prediction are cut from larger reads
ROWS_PER_READ = 1024
#: most values (cells x genes) of one such read from a dense on-disk matrix
DENSE_VALUES_PER_READ = 2**24


def _sparse_on_disk(x) -> bool:
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(x, CSRDataset | CSCDataset)


def is_on_disk(x) -> bool:
    """Whether the matrix ``x`` is read from disk (anndata's on-disk sparse dataset, HDF5 or zarr)."""
    return _sparse_on_disk(x) or type(x).__module__.split(".")[0] in ("h5py", "zarr")


def rows_per_read(x, batch_size: int, n_genes: int) -> int:
    """Cells per read of an in-order pass: a multiple of ``batch_size``, larger only on disk."""
    if not is_on_disk(x):
        return batch_size
    cap = ROWS_PER_READ if _sparse_on_disk(x) else DENSE_VALUES_PER_READ // max(n_genes, 1)
    return batch_size * max(1, cap // batch_size)


def read_rows(x, rows: np.ndarray) -> sparse.csr_matrix | np.ndarray:
    """Rows ``rows`` of a dense, sparse or on-disk matrix, read as few contiguous slices.

    Runs of rows closer than ``MAX_GAP`` are read as one slice; the result keeps the order
    of ``rows``.
    """
    rows = np.asarray(rows)
    if _consecutive(rows):  # the common case (prediction in order): one slice, no reordering
        return _read_slice(x, rows)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    breaks = np.flatnonzero(np.diff(ordered) > MAX_GAP) + 1
    parts = [_read_slice(x, run) for run in np.split(ordered, breaks)]
    block = sparse.vstack(parts, format="csr") if sparse.issparse(parts[0]) else np.vstack(parts)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return block[inverse]


def _consecutive(rows: np.ndarray) -> bool:
    """Whether ``rows`` are ``lo, lo + 1, ..., hi - 1`` (at least one row)."""
    return len(rows) > 0 and bool((np.diff(rows) == 1).all())


def _read_slice(x, rows: np.ndarray):
    """Rows ``rows`` (sorted, close together) read as the one slice they span (a copy)."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    block = x[lo:hi]
    if hasattr(block, "compute"):  # dask arrays (lazily read zarr)
        block = block.compute()
    whole = _consecutive(rows)
    if sparse.issparse(block):  # a slice of a sparse matrix is already a copy
        block = sparse.csr_matrix(block)
        return block if whole else block[rows - lo]
    # a slice of an in-memory array is a view of the user's data: copy it
    return np.array(block) if whole else np.asarray(block)[rows - lo]


def _dense(block) -> torch.Tensor:
    array = block.toarray() if sparse.issparse(block) else block
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


def shared_seed() -> int:
    """``scvi.settings.seed``, or, when it is ``None`` (its default), a freshly drawn seed.

    Under distributed training the drawn seed is rank 0's, so that every process draws the
    same split and the same order of blocks.
    """
    if settings.seed is not None:
        return int(settings.seed)
    return _from_rank_zero(int(np.random.SeedSequence().entropy % 2**32))


def _from_rank_zero(value: int) -> int:
    """Rank 0's ``value`` under distributed training; ``value`` itself otherwise."""
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        box = [value]
        torch.distributed.broadcast_object_list(box, src=0)
        return int(box[0])
    return value


class BlockDataset(IterableDataset):
    """Minibatches of registered data, read from ``indices`` in contiguous blocks.

    With ``shuffle=True`` (training), every pass draws a new random order of blocks, holds
    ``buffer_blocks`` blocks at a time, shuffles their cells and cuts minibatches, carrying the
    remainder over to the next buffer. Under distributed training each process reads its own
    share of blocks and all processes yield the same number of minibatches. With
    ``shuffle=False`` the cells come in the order of ``indices``.

    Parameters
    ----------
    adata_manager
        Manager of the registered data (``REGISTRY_KEYS.X_KEY`` and ``LABELS_KEY``).
    indices
        Cells to read (for training, sorted row numbers).
    batch_size
        Cells per minibatch.
    shuffle
        Shuffle blocks and cells (training).
    block_size
        Rows per contiguous read.
    buffer_blocks
        Blocks shuffled together.
    """

    def __init__(
        self,
        adata_manager,
        indices: np.ndarray,
        batch_size: int,
        *,
        shuffle: bool,
        block_size: int = BLOCK_SIZE,
        buffer_blocks: int = BUFFER_BLOCKS,
    ):
        super().__init__()
        self.x = adata_manager.get_from_registry(REGISTRY_KEYS.X_KEY)
        self.labels = np.asarray(adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)).reshape(-1)
        self.indices = np.asarray(indices, dtype=np.int64)
        self.batch_size = int(batch_size)
        self.shuffle = shuffle
        self.block_size = int(block_size)
        self.buffer_blocks = int(buffer_blocks)
        self.epoch = 0
        self.seed: int | None = None  # drawn at the first shuffled pass

    def __len__(self) -> int:
        if self.shuffle:  # the count depends on the processes' shares of blocks
            raise TypeError("The number of shuffled minibatches is only known while iterating.")
        return int(np.ceil(len(self.indices) / self.batch_size))

    def _batch(self, block, rows: np.ndarray) -> dict[str, torch.Tensor]:
        return {
            REGISTRY_KEYS.X_KEY: _dense(block),
            REGISTRY_KEYS.LABELS_KEY: torch.from_numpy(self.labels[rows].astype(np.int64)).view(-1, 1),
        }

    def __iter__(self):
        if not self.shuffle:
            step = self.batch_size
            read = rows_per_read(self.x, step, self.x.shape[1])
            for lo in range(0, len(self.indices), read):
                chunk_rows = self.indices[lo : lo + read]
                chunk = read_rows(self.x, chunk_rows)
                for start in range(0, len(chunk_rows), step):
                    block = chunk if len(chunk_rows) <= step else chunk[start : start + step]
                    yield self._batch(block, chunk_rows[start : start + step])
            return
        if self.seed is None:
            self.seed = shared_seed()
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        blocks = [self.indices[i : i + self.block_size] for i in range(0, len(self.indices), self.block_size)]
        order = rng.permutation(len(blocks))
        rank, world = _rank_and_world()
        per_rank = [order[r::world] for r in range(world)]
        # every process must yield the same number of minibatches; a last batch of one cell
        # cannot be batch-normalised
        n_cells = [sum(len(blocks[b]) for b in part) for part in per_rank]
        n_batches = min(n // self.batch_size + (n % self.batch_size >= 2) for n in n_cells)
        yielded = 0
        carry_x, carry_rows = None, np.zeros(0, dtype=np.int64)
        mine = per_rank[rank]
        for start in range(0, len(mine), self.buffer_blocks):
            chosen = [blocks[b] for b in mine[start : start + self.buffer_blocks]]
            parts = [read_rows(self.x, rows) for rows in chosen]
            rows = np.concatenate([carry_rows, *chosen])
            stacked = [carry_x, *parts] if carry_x is not None else parts
            x = sparse.vstack(stacked, format="csr") if sparse.issparse(parts[0]) else np.vstack(stacked)
            perm = rng.permutation(len(rows))
            x, rows = x[perm], rows[perm]
            last = start + self.buffer_blocks >= len(mine)
            n_full = len(rows) // self.batch_size
            for b in range(n_full + (last and len(rows) % self.batch_size > 0)):
                if yielded == n_batches:
                    return
                sl = slice(b * self.batch_size, (b + 1) * self.batch_size)
                yield self._batch(x[sl], rows[sl])
                yielded += 1
            carry_x, carry_rows = x[n_full * self.batch_size :], rows[n_full * self.batch_size :]


def block_loader(adata_manager, indices, batch_size: int, *, shuffle: bool, **kwargs) -> DataLoader:
    """A :class:`~torch.utils.data.DataLoader` over a :class:`BlockDataset` (batches made by the dataset).

    Parameters
    ----------
    adata_manager
        Manager of the registered data.
    indices
        Cells to read.
    batch_size
        Cells per minibatch.
    shuffle
        Shuffle blocks and cells (training).
    **kwargs
        Passed to :class:`BlockDataset` (``block_size``, ``buffer_blocks``).
    """
    dataset = BlockDataset(adata_manager, indices, batch_size, shuffle=shuffle, **kwargs)
    return DataLoader(dataset, batch_size=None, num_workers=0)


def stratified_split(
    labels: np.ndarray,
    train_fraction: float,
    validation_fraction: float,
    seed: int,
    block_size: int = 1,
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Training, validation and test cells drawn class by class.

    Each class is split in the given proportions (rounded), with two guarantees: every class
    keeps at least one training cell, and, when there is a validation split, every class with
    at least two cells has at least one validation cell. The totals can therefore differ from
    the fractions by a cell or so per class.

    The rows are cut into blocks of ``block_size`` consecutive rows, put in one random order
    shared by all classes; each class gives its validation cells, then its test cells, from
    its cells in that order. Validation and test cells are therefore mostly whole blocks of
    rows (which on-disk data read in one slice), and single cells with ``block_size=1``.

    Parameters
    ----------
    labels
        Class code of each cell.
    train_fraction
        Fraction of each class for training.
    validation_fraction
        Fraction of each class for validation; the rest (if any) is the test split.
    seed
        Seed of the random draw.
    block_size
        Rows per block.

    Returns
    -------
    Sorted row numbers of the training, validation and test cells.
    """
    labels = np.asarray(labels).reshape(-1)
    n_obs = len(labels)
    rows = np.arange(n_obs)
    rank = np.random.default_rng(seed).permutation(-(-n_obs // block_size))[rows // block_size]
    ordered = np.lexsort((rows, rank))  # rows by the rank of their block, then by position
    test_fraction = max(1.0 - train_fraction - validation_fraction, 0.0)
    parts: tuple[list, list, list] = ([], [], [])
    for code in np.unique(labels):
        drawn = ordered[labels[ordered] == code]
        n = len(drawn)
        n_val = round(n * validation_fraction)
        if validation_fraction > 0 and n >= 2:
            n_val = max(n_val, 1)
        n_val = min(n_val, n - 1)
        n_test = min(round(n * test_fraction), n - n_val - 1)
        parts[1].append(drawn[:n_val])
        parts[2].append(drawn[n_val : n_val + n_test])
        parts[0].append(drawn[n_val + n_test :])
    return tuple(np.sort(np.concatenate(p)).astype(np.int64) for p in parts)


class BlockDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` that splits by class and reads backed AnnData in blocks.

    The split is stratified by the registered labels (see :func:`stratified_split`): every
    class keeps training cells and, with a validation split, every class of two or more cells
    has validation cells, in memory as on disk. The split is drawn once, with the scvi-tools
    seed (``scvi.settings.seed``, or a seed drawn once when it is ``None``), so repeated calls of
    :meth:`setup` return the same cells. In-memory data are then loaded as by the parent class.
    For backed data, validation cells are drawn by blocks of ``block_size`` rows where the
    classes allow (see :func:`stratified_split`), and training reads contiguous blocks of rows
    (:class:`BlockDataset`).

    Parameters
    ----------
    adata_manager
        Manager of the registered data.
    train_size
        Fraction of cells for training.
    validation_size
        Fraction for validation; ``None`` means the rest.
    block_size
        Rows per contiguous read (backed data only).
    buffer_blocks
        Blocks shuffled together in memory (backed data only).
    **kwargs
        Passed to :class:`~scvi.dataloaders.DataSplitter` (e.g. ``batch_size``).
    """

    def __init__(
        self,
        adata_manager,
        train_size: float | None = None,
        validation_size: float | None = None,
        block_size: int = BLOCK_SIZE,
        buffer_blocks: int = BUFFER_BLOCKS,
        **kwargs,
    ):
        super().__init__(adata_manager, train_size=train_size, validation_size=validation_size, **kwargs)
        self.block_size = block_size
        self.buffer_blocks = buffer_blocks
        self.backed = is_backed(adata_manager.adata)
        self._split: tuple[np.ndarray, np.ndarray, np.ndarray] | None = None
        self._seed = shared_seed()

    def setup(self, stage: str | None = None) -> None:
        """Split the cells class by class (drawn once; later calls return the same split).

        Parameters
        ----------
        stage
            Lightning stage (unused).

        Raises
        ------
        ValueError
            If a validation split is asked for but no class has two cells to give it.
        """
        if self.external_indexing is not None:
            super().setup(stage)
            return
        seed = _from_rank_zero(self._seed)  # a seed drawn before the processes were joined
        if seed != self._seed:
            self._seed, self._split = seed, None
        if self._split is None:
            labels = self.adata_manager.get_from_registry(REGISTRY_KEYS.LABELS_KEY)
            n_obs = self.adata_manager.adata.n_obs
            self._split = stratified_split(
                np.asarray(labels).reshape(-1),
                self.n_train / n_obs,
                self.n_val / n_obs,
                self._seed,
                block_size=self.block_size if self.backed else 1,
            )
            if self.n_val > 0 and len(self._split[1]) == 0:
                raise ValueError(
                    "No class has two cells, so none can be held out for validation: "
                    "train with train_size=1.0 (and without early stopping)."
                )
        self.train_idx, self.val_idx, self.test_idx = self._split

    def _loader(self, indices: np.ndarray, shuffle: bool) -> DataLoader:
        batch_size = self.data_loader_kwargs.get("batch_size") or settings.batch_size
        return block_loader(
            self.adata_manager,
            indices,
            batch_size,
            shuffle=shuffle,
            block_size=self.block_size,
            buffer_blocks=self.buffer_blocks,
        )

    def train_dataloader(self):
        """Training loader (blocks shuffled within a buffer for backed data)."""
        if not self.backed:
            return super().train_dataloader()
        return self._loader(self.train_idx, shuffle=True)

    def val_dataloader(self):
        """Validation loader."""
        if not self.backed:
            return super().val_dataloader()
        if len(self.val_idx) > 0:
            return self._loader(self.val_idx, shuffle=False)
        return None
