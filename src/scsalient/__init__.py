"""scsalient: glass-box deep-learning models for single-cell data."""

from importlib.metadata import PackageNotFoundError, version

# scvi-tools 1.4.2 uses rich.pretty in view_anndata_setup without importing it (fixed in 1.4.3)
import rich.pretty

from . import datasets, metrics, model, pl, pp, tl

try:
    __version__ = version("scsalient")
except PackageNotFoundError:  # pragma: no cover - source checkout without install
    __version__ = "0.0.0"

__all__ = ["datasets", "metrics", "model", "pl", "pp", "tl", "__version__"]
