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
    from anndata.abc import CSCDataset, CSRDataset

    return isinstance(getattr(adata, "X", None), CSRDataset | CSCDataset)


#: rows between two wanted rows up to which one slice is read rather than two
MAX_GAP = 32


def read_rows(x, rows: np.ndarray) -> sparse.csr_matrix | np.ndarray:
    """Rows ``rows`` of a dense, sparse or on-disk matrix, read as few contiguous slices.

    Runs of rows closer than ``MAX_GAP`` are read as one slice; the result keeps the order
    of ``rows``.
    """
    rows = np.asarray(rows)
    order = np.argsort(rows, kind="stable")
    ordered = rows[order]
    breaks = np.flatnonzero(np.diff(ordered) > MAX_GAP) + 1
    parts = [_read_slice(x, run) for run in np.split(ordered, breaks)]
    block = sparse.vstack(parts, format="csr") if sparse.issparse(parts[0]) else np.vstack(parts)
    inverse = np.empty_like(order)
    inverse[order] = np.arange(len(order))
    return block[inverse]


def _read_slice(x, rows: np.ndarray):
    """Rows ``rows`` (sorted, close together) read as the one slice they span."""
    lo, hi = int(rows[0]), int(rows[-1]) + 1
    block = x[lo:hi]
    if hasattr(block, "compute"):  # dask arrays (lazily read zarr)
        block = block.compute()
    if sparse.issparse(block):
        return sparse.csr_matrix(block)[rows - lo]
    return np.asarray(block)[rows - lo]


def _dense(block) -> torch.Tensor:
    array = block.toarray() if sparse.issparse(block) else block
    return torch.from_numpy(np.ascontiguousarray(array, dtype=np.float32))


def _rank_and_world() -> tuple[int, int]:
    if torch.distributed.is_available() and torch.distributed.is_initialized():
        return torch.distributed.get_rank(), torch.distributed.get_world_size()
    return 0, 1


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
            for start in range(0, len(self.indices), self.batch_size):
                rows = self.indices[start : start + self.batch_size]
                yield self._batch(read_rows(self.x, rows), rows)
            return
        rng = np.random.default_rng([settings.seed, self.epoch])
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


class BlockDataSplitter(DataSplitter):
    """:class:`~scvi.dataloaders.DataSplitter` that reads backed AnnData in contiguous blocks.

    In-memory data are split and loaded exactly as by the parent class. For backed data, the
    validation cells are whole blocks of consecutive rows (drawn at random with the scvi-tools
    seed), so training and validation both read contiguous slices of the file.

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

    def setup(self, stage: str | None = None) -> None:
        """Split the cells; for backed data, by whole blocks of consecutive rows.

        Parameters
        ----------
        stage
            Lightning stage (unused).
        """
        if not self.backed or self.external_indexing is not None:
            super().setup(stage)
            return
        n_obs = self.adata_manager.adata.n_obs
        starts = np.arange(0, n_obs, self.block_size)
        order = np.random.RandomState(seed=settings.seed).permutation(len(starts))
        blocks = [np.arange(s, min(s + self.block_size, n_obs)) for s in starts[order]]
        sizes = np.cumsum([len(b) for b in blocks])
        n_val_blocks = int(np.searchsorted(sizes, self.n_val)) + 1 if self.n_val > 0 else 0
        n_val_blocks = min(n_val_blocks, len(blocks) - 1)
        empty = np.zeros(0, dtype=np.int64)
        rest = np.concatenate(blocks[n_val_blocks:])
        self.val_idx = np.sort(np.concatenate(blocks[:n_val_blocks])) if n_val_blocks else empty
        self.train_idx = np.sort(rest[: self.n_train])
        self.test_idx = np.sort(rest[self.n_train :])

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
