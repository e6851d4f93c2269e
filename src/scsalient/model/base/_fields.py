"""AnnData fields shared by scsalient models."""

from __future__ import annotations

import warnings
from typing import TYPE_CHECKING

import numpy as np
import rich.table
from scipy import sparse
from scvi.data.fields import LayerField

from ._checks import InputKind, describe_location, inspect_expression, iter_row_blocks

if TYPE_CHECKING:
    from anndata import AnnData

_NAME = {"counts": "raw counts", "lognorm": "log-normalised values"}
_TREATMENT = {
    "counts": "raw counts: normalised inside the model to log1p(CP10k)",
    "lognorm": "log-normalised values: used as given",
}


class ExpressionLayerField(LayerField):
    """Expression matrix field that validates the data and records whether it holds counts.

    The whole matrix is scanned block by block at registration: NaN/inf, negative values and
    all-zero cells raise a :class:`ValueError` naming the layer. The detected input kind
    (``"counts"`` or ``"log-normalised"``) is stored in the state registry, shown by
    :meth:`~scvi.model.base.BaseModelClass.view_anndata_setup`, and enforced when the setup is
    transferred to query data.

    Parameters
    ----------
    registry_key
        Key to register the field under.
    layer
        Layer holding the matrix; ``None`` for ``.X``.
    allowed
        Input kinds the model accepts.
    """

    INPUT_KIND_KEY = "input_kind"

    def __init__(
        self,
        registry_key: str,
        layer: str | None,
        allowed: tuple[InputKind, ...] = ("counts", "lognorm"),
    ) -> None:
        super().__init__(registry_key, layer, is_count_data=False, correct_data_format=True)
        self.allowed = tuple(allowed)

    @property
    def where(self) -> str:
        """Location of the matrix, for messages."""
        return describe_location(self.attr_key)

    def register_field(self, adata: AnnData) -> dict:
        """Register the field after validating the matrix and detecting its kind.

        Parameters
        ----------
        adata
            The AnnData to register.
        """
        state = super().register_field(adata)
        kind = inspect_expression(self.get_field_data(adata), self.where, adata.obs_names)
        if kind not in self.allowed:
            wanted = " or ".join(_NAME[k] for k in self.allowed)
            raise ValueError(f"{self.where} holds {_NAME[kind]}, but this model needs {wanted}.")
        state[self.INPUT_KIND_KEY] = kind
        return state

    def transfer_field(self, state_registry: dict, adata_target: AnnData, **kwargs) -> dict:
        """Transfer the setup to new data, requiring the same kind of input as at training.

        Parameters
        ----------
        state_registry
            State registry of the source setup.
        adata_target
            Data the setup is transferred to.
        **kwargs
            Passed to :meth:`scvi.data.fields.LayerField.transfer_field`.
        """
        state = super().transfer_field(state_registry, adata_target, **kwargs)
        expected = state_registry.get(self.INPUT_KIND_KEY)
        if expected is not None and state[self.INPUT_KIND_KEY] != expected:
            raise ValueError(
                f"The model was set up on {_NAME[expected]}, but the query's {self.where} holds "
                f"{_NAME[state[self.INPUT_KIND_KEY]]}. "
                "Give the query the same kind of input."
            )
        return state

    def view_state_registry(self, state_registry: dict) -> rich.table.Table | None:
        """Show the detected input kind.

        Parameters
        ----------
        state_registry
            State registry of this field.
        """
        table = rich.table.Table(title=f"{self.registry_key} input")
        table.add_column("Data", justify="center", style="dodger_blue1", no_wrap=True)
        table.add_column("Detected input", justify="center", style="green")
        table.add_row(self.where, _TREATMENT[state_registry[self.INPUT_KIND_KEY]])
        return table


class AccessibilityLayerField(LayerField):
    """Chromatin accessibility field: checks the values and warns about peaks never accessible.

    NaN/inf and negative values raise a :class:`ValueError`; peaks with no accessible cell give a
    :class:`UserWarning` (they carry no information and only cost memory and time).

    Parameters
    ----------
    registry_key
        Key to register the field under.
    layer
        Layer holding the matrix; ``None`` for ``.X``.
    """

    def __init__(self, registry_key: str, layer: str | None) -> None:
        super().__init__(registry_key, layer, is_count_data=False, correct_data_format=True)

    def register_field(self, adata: AnnData) -> dict:
        """Register the field after validating the matrix.

        Parameters
        ----------
        adata
            The AnnData to register.
        """
        state = super().register_field(adata)
        check_accessibility(self.get_field_data(adata), describe_location(self.attr_key), adata.var_names)
        return state


def check_accessibility(x, where: str, var_names, *, warn_empty: bool = True) -> None:
    """Raise on NaN/inf or negative accessibility; warn about peaks accessible in no cell."""
    if x.shape[0] == 0 or x.shape[1] == 0:
        raise ValueError(f"{where} is empty (shape {x.shape}).")
    n_accessible = np.zeros(x.shape[1], dtype=np.int64)
    for _, block in iter_row_blocks(x):
        values = block.data if sparse.issparse(block) else block
        if values.size and not np.isfinite(values).all():
            raise ValueError(f"{where} contains NaN or infinite values.")
        if values.size and (values < 0).any():
            raise ValueError(f"{where} contains negative values; accessibility must be counts or 0/1.")
        n_accessible += np.asarray((block > 0).sum(axis=0)).ravel()
    never = np.flatnonzero(n_accessible == 0)
    if never.size and warn_empty:
        warnings.warn(
            f"{never.size} of {x.shape[1]} peaks in {where} are accessible in no cell "
            f"(e.g. {list(var_names[never[:3]])}); they carry no information. Consider removing them, "
            "e.g. with `sc.pp.filter_genes(atac, min_cells=1)`.",
            UserWarning,
            stacklevel=2,
        )
