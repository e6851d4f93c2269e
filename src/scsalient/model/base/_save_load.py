"""Saving and loading models: weights as safetensors, everything else as JSON, nothing pickled.

A saved model is a directory holding

* ``model.safetensors``: the module's state dict (parameters and buffers), tensors only;
* ``model.json``: the scvi-tools registry (setup arguments, genes, classes, input kind), the
  constructor arguments and every model attribute whose name ends in ``_`` (training
  settings, history, train/validation indices, ...);
* with ``save_anndata=True``, ``adata.h5ad`` (or ``mdata.h5mu`` for a MuData).

Loading reads these files only; neither can run code. The pickled ``model.pt`` that
scvi-tools writes (and scsalient wrote before) is read only when the caller opts in with
``trust_pickle=True``.
"""

from __future__ import annotations

import json
import logging
import math
import os
import warnings
from collections import defaultdict
from pathlib import Path
from typing import TYPE_CHECKING, Any

import anndata
import mudata
import numpy as np
import pandas as pd
import torch
from anndata import AnnData
from mudata import MuData
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from scvi.data._constants import _MODEL_NAME_KEY, _SETUP_ARGS_KEY, _SETUP_METHOD_NAME
from scvi.model._utils import parse_device_args
from scvi.model.base._constants import SAVE_KEYS
from scvi.model.base._save_load import _initialize_model

from ._query import conform_genes

if TYPE_CHECKING:
    from scvi._types import AnnOrMuData

logger = logging.getLogger(__name__)

#: what ``model.json`` says it is, and the version of its layout
FORMAT = "scsalient-model"
FORMAT_VERSION = 1
WEIGHTS_FILE = "model.safetensors"
ATTRIBUTES_FILE = "model.json"
#: the pickled file of scvi-tools (and of scsalient before this format)
PICKLE_FILE = SAVE_KEYS.MODEL_FNAME
#: key marking a JSON object that encodes a non-JSON value (array, frame, tuple, ...)
_TAG = "__scsalient_type__"
#: numpy dtype kinds stored as plain JSON numbers
_NUMERIC_KINDS = "biuf"


# ---------------------------------------------------------------------------- JSON conversion
def to_json(value: Any, where: str = "value") -> Any:
    """``value`` as JSON-serialisable data; :func:`from_json` restores it.

    Handles ``None``, booleans, numbers, strings, lists, tuples, dicts (any hashable key that is
    itself convertible), numpy scalars and arrays (numeric, boolean, or of strings), and pandas
    ``Index``, ``Series`` and ``DataFrame``.

    Parameters
    ----------
    value
        The value to convert.
    where
        Name of the value, for the error message.

    Raises
    ------
    TypeError
        For any other type (e.g. a function or a torch module): it cannot be stored without
        pickling.
    """
    if isinstance(value, float) and not math.isfinite(value):
        return {_TAG: "float", "value": repr(value)}  # strict JSON has no NaN or infinity
    if value is None or isinstance(value, bool | int | float | str):
        return value
    if isinstance(value, np.generic):
        return to_json(value.item(), where)
    if isinstance(value, np.ndarray):
        return _array_to_json(value, where)
    if isinstance(value, pd.DataFrame):
        return {
            _TAG: "DataFrame",
            "index": to_json(value.index, f"{where}.index"),
            "columns": [
                [to_json(name, f"{where}.columns"), to_json(value[name].to_numpy(), f"{where}[{name!r}]")]
                for name in value.columns
            ],
        }
    if isinstance(value, pd.Series):
        return {
            _TAG: "Series",
            "name": to_json(value.name, f"{where}.name"),
            "index": to_json(value.index, f"{where}.index"),
            "values": to_json(value.to_numpy(), where),
        }
    if isinstance(value, pd.Index):
        return {
            _TAG: "Index",
            "name": to_json(value.name, f"{where}.name"),
            "values": to_json(value.to_numpy(), where),
        }
    if isinstance(value, tuple):
        return {_TAG: "tuple", "items": [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]}
    if isinstance(value, list):
        return [to_json(v, f"{where}[{i}]") for i, v in enumerate(value)]
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and _TAG not in value:
            return {k: to_json(v, f"{where}[{k!r}]") for k, v in value.items()}
        return {
            _TAG: "dict",
            "items": [[to_json(k, where), to_json(v, f"{where}[{k!r}]")] for k, v in value.items()],
        }
    raise TypeError(
        f"{where} is a {type(value).__name__}, which a model file cannot hold (it stores only numbers, "
        "strings, lists, dicts, numpy arrays and pandas tables). Keep such objects out of attributes "
        "whose names end in '_'."
    )


def _array_to_json(array: np.ndarray, where: str) -> dict:
    if array.dtype.kind in _NUMERIC_KINDS:
        data = array.ravel().tolist()
        if array.dtype.kind == "f" and not np.isfinite(array).all():  # read back by numpy
            data = [v if math.isfinite(v) else repr(v) for v in data]
        dtype = array.dtype.str
    elif array.dtype.kind in "OUS":
        data = [to_json(v, where) for v in array.ravel().tolist()]
        if any(isinstance(v, list) or (isinstance(v, dict) and v.get(_TAG) != "float") for v in data):
            raise TypeError(f"{where} is an object array holding containers; a model file cannot hold it.")
        dtype = "object" if array.dtype.kind == "O" else array.dtype.str
    else:
        raise TypeError(f"{where} is a numpy array of dtype {array.dtype}, which a model file cannot hold.")
    return {_TAG: "ndarray", "dtype": dtype, "shape": list(array.shape), "data": data}


def from_json(value: Any) -> Any:
    """Invert :func:`to_json`.

    Parameters
    ----------
    value
        Data read from JSON.
    """
    if isinstance(value, list):
        return [from_json(v) for v in value]
    if not isinstance(value, dict):
        return value
    kind = value.get(_TAG)
    if kind is None:
        return {k: from_json(v) for k, v in value.items()}
    if kind == "ndarray":
        dtype = np.dtype(object) if value["dtype"] == "object" else np.dtype(value["dtype"])
        if dtype.kind not in _NUMERIC_KINDS + "OUS":
            raise ValueError(f"Unsupported array dtype {value['dtype']!r} in the model file.")
        data = value["data"]
        if dtype.kind == "O":
            out = np.empty(len(data), dtype=object)
            out[:] = [from_json(v) for v in data]
            return out.reshape(value["shape"])
        return np.asarray(data, dtype=dtype).reshape(value["shape"])
    if kind == "Index":
        return pd.Index(from_json(value["values"]), name=from_json(value["name"]))
    if kind == "Series":
        return pd.Series(
            from_json(value["values"]), index=from_json(value["index"]), name=from_json(value["name"])
        )
    if kind == "DataFrame":
        columns = [(from_json(name), from_json(data)) for name, data in value["columns"]]
        index = from_json(value["index"])
        frame = pd.DataFrame({i: data for i, (_, data) in enumerate(columns)}, index=index)
        frame.columns = pd.Index([name for name, _ in columns])
        return frame
    if kind == "float":
        return float(value["value"])
    if kind == "tuple":
        return tuple(from_json(v) for v in value["items"])
    if kind == "dict":
        return {_hashable(from_json(k)): from_json(v) for k, v in value["items"]}
    raise ValueError(f"Unknown value type {kind!r} in the model file.")


def _hashable(key: Any) -> Any:
    return tuple(_hashable(k) for k in key) if isinstance(key, list) else key


# ---------------------------------------------------------------------------- files
def _path(dir_path: str | os.PathLike, prefix: str | None, name: str) -> Path:
    return Path(dir_path) / f"{prefix or ''}{name}"


def _weights_for_saving(module: torch.nn.Module) -> dict[str, torch.Tensor]:
    """The module's state dict on the CPU, contiguous, with no two tensors sharing memory."""
    state, seen = {}, set()
    for key, tensor in module.state_dict().items():
        tensor = tensor.detach().cpu().contiguous()
        pointer = tensor.untyped_storage().data_ptr()
        if pointer in seen and tensor.numel():  # tied weights: safetensors stores each once
            tensor = tensor.clone()
        seen.add(pointer)
        state[key] = tensor
    return state


def _read_attributes(path: Path) -> dict:
    try:
        content = json.loads(path.read_text())
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise ValueError(f"{path} is not a scsalient model file (not valid JSON: {error}).") from error
    if not isinstance(content, dict) or content.get("format") != FORMAT:
        raise ValueError(f"{path} is not a scsalient model file (no 'format': {FORMAT!r}).")
    version = content.get("format_version")
    if not isinstance(version, int):
        raise ValueError(f"{path} is not a scsalient model file (no integer 'format_version').")
    if version > FORMAT_VERSION:
        raise ValueError(
            f"{path} was written by a newer scsalient (model format {content['format_version']}, this "
            f"version reads up to {FORMAT_VERSION}); upgrade scsalient to load it."
        )
    return content


def _read_weights(path: Path) -> dict[str, torch.Tensor]:
    if not path.exists():
        raise ValueError(f"{path} is missing: the directory holds no model weights.")
    try:
        return load_file(path, device="cpu")
    except (SafetensorError, OSError, ValueError) as error:
        raise ValueError(f"{path} is not a safetensors file of model weights ({error}).") from error


def _read_pickled(path: Path) -> tuple[dict, dict[str, torch.Tensor]]:
    """Attributes and weights of a scvi-tools ``model.pt`` (unpickles it: trusted files only)."""
    content = torch.load(path, map_location="cpu", weights_only=False)
    state = content[SAVE_KEYS.MODEL_STATE_DICT_KEY]
    state.pop("pyro_param_store", None)
    return dict(content[SAVE_KEYS.ATTR_DICT_KEY]), state


def _read_saved_data(dir_path, prefix: str | None, registry: dict) -> AnnOrMuData | bool:
    """The AnnData (or MuData) saved with the model; ``False`` (with a warning) when there is none."""
    is_mudata = registry.get(_SETUP_METHOD_NAME) == "setup_mudata"
    path = _path(dir_path, prefix, SAVE_KEYS.MDATA_FNAME if is_mudata else SAVE_KEYS.ADATA_FNAME)
    if path.exists():
        data = mudata.read_h5mu(path) if is_mudata else anndata.read_h5ad(path)
        # a new object: without the set-up ids of the saved one, whose manager it would replace
        for uns in [data.uns, *(mod.uns for mod in getattr(data, "mod", {}).values())]:
            for key in [key for key in uns if key.startswith("_scvi")]:
                del uns[key]
        return data
    warnings.warn(
        f"{dir_path} holds no saved data ({path.name}) and none was given: the model is loaded without "
        "data. Pass the data to load(), or give it to the read-out methods.",
        UserWarning,
        stacklevel=4,
    )
    return False


def _missing_model_message(dir_path, prefix: str | None) -> str:
    weights, attributes = _path(dir_path, prefix, WEIGHTS_FILE), _path(dir_path, prefix, ATTRIBUTES_FILE)
    return f"{dir_path} holds no saved scsalient model ({attributes.name} and {weights.name})."


def saved_model_class(dir_path: str | os.PathLike, prefix: str | None = None) -> str:
    """Name of the model class (``"NACT"``, ``"SCTAB"``, ...) saved in ``dir_path``.

    Reads ``model.json`` only, so the class to load a directory with can be chosen before
    loading it.

    Parameters
    ----------
    dir_path
        Directory written by ``save``.
    prefix
        Prefix of the file names, as given to ``save``.

    Raises
    ------
    ValueError
        If the directory holds no scsalient model file, or one that names no model class.
    """
    path = _path(dir_path, prefix, ATTRIBUTES_FILE)
    if not path.is_file():
        raise ValueError(_missing_model_message(dir_path, prefix))
    content = _read_attributes(path)
    name = content.get("model_class")
    if name is None:  # files written before the class was recorded: the registry names it
        registry = content.get("attributes", {}).get("registry_", {})
        name = registry.get(_MODEL_NAME_KEY) if isinstance(registry, dict) else None
    if not isinstance(name, str):
        raise ValueError(f"{path} does not name the class of the model it holds.")
    return name


# ---------------------------------------------------------------------------- the mixin
class SaveLoadMixin:
    """``save`` and ``load`` of every scsalient model, in a format that never runs code on load.

    Replaces scvi-tools' pickled ``model.pt`` (read by ``torch.load(weights_only=False)``) by a
    safetensors file of weights and a JSON file of everything else. Genes (and, for the
    Translator, peaks) of data given to :meth:`load` are matched to the model's by name, as for
    query data. A model class with other data than one AnnData overrides
    :meth:`_conform_data`.
    """

    def _get_init_params(self, init_locals: dict) -> dict:
        """The constructor arguments to save, without the data (``adata`` or ``mdata``)."""
        params = super()._get_init_params(init_locals)
        for name in ("adata", "mdata"):
            params["non_kwargs"].pop(name, None)
        return params

    def save(
        self,
        dir_path: str | os.PathLike,
        prefix: str | None = None,
        overwrite: bool = False,
        save_anndata: bool = False,
        **anndata_write_kwargs,
    ) -> None:
        """Save the model: weights as safetensors, everything else as JSON (nothing is pickled).

        Writes ``model.safetensors`` (parameters and buffers: tensors only) and ``model.json``
        (setup arguments and registry, genes, classes, constructor arguments, training settings
        and history, train/validation indices), and with ``save_anndata`` the data as
        ``adata.h5ad`` (``mdata.h5mu`` for a MuData). With ``overwrite``, a pickled ``model.pt``
        left in the directory by an older version is removed. See :doc:`/save_load`.

        Parameters
        ----------
        dir_path
            Directory to write; created if needed.
        prefix
            Prefix of the file names.
        overwrite
            Write into an existing directory, replacing the model files there. If ``False``
            and the directory exists, a :class:`ValueError` is raised.
        save_anndata
            Also save the model's data.
        **anndata_write_kwargs
            Passed to :meth:`anndata.AnnData.write` (or :meth:`mudata.MuData.write`).
        """
        dir_path = Path(dir_path)
        if dir_path.exists() and not overwrite:
            raise ValueError(f"{dir_path} already exists: pass overwrite=True or choose another directory.")
        dir_path.mkdir(parents=True, exist_ok=True)
        attributes = {name: value for name, value in self._get_user_attributes() if name.endswith("_")}
        content = {
            "format": FORMAT,
            "format_version": FORMAT_VERSION,
            "model_class": type(self).__name__,
            "versions": _versions(),
            "var_names": to_json(self.get_var_names(), "var_names"),
            "attributes": {name: to_json(value, name) for name, value in sorted(attributes.items())},
        }
        text = json.dumps(content, indent=1, allow_nan=False)  # converted before anything is written
        if save_anndata:
            if self.adata is None:
                raise ValueError("The model holds no data to save: use save_anndata=False.")
            name = SAVE_KEYS.MDATA_FNAME if isinstance(self.adata, MuData) else SAVE_KEYS.ADATA_FNAME
            self.adata.write(_path(dir_path, prefix, name), **anndata_write_kwargs)
        save_file(_weights_for_saving(self.module), _path(dir_path, prefix, WEIGHTS_FILE))
        _path(dir_path, prefix, ATTRIBUTES_FILE).write_text(text)
        stale = _path(dir_path, prefix, PICKLE_FILE)
        if stale.exists():
            stale.unlink()
            logger.info("Removed %s, a model file of the old pickled format.", stale)

    @classmethod
    def load(
        cls,
        dir_path: str | os.PathLike,
        adata: AnnOrMuData | None = None,
        accelerator: str = "auto",
        device: int | str = "auto",
        prefix: str | None = None,
        trust_pickle: bool = False,
    ):
        """Load a model saved with :meth:`save`.

        Reads ``model.json`` and ``model.safetensors`` (and the saved data when ``adata`` is
        ``None``); neither can run code. The genes of ``adata`` are matched to the model's by
        name, as for query data: the model keeps its genes in its order, and when ``adata``'s
        differ (another order, some missing: zero-filled with a warning) the model is set up on
        a copy of ``adata`` in its gene order, with a warning. Fewer than half of the model's
        genes present is an error.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        adata
            Data to attach to the model. ``None`` uses the data saved with the model (or none,
            with a warning); ``False`` loads the model without data (give data to the read-out
            methods).
        accelerator
            Lightning accelerator to put the model on (``"auto"``, ``"cpu"``, ``"gpu"``, ...).
        device
            Device index or ``"auto"``.
        prefix
            Prefix of the file names, as given to :meth:`save`.
        trust_pickle
            Also read the pickled ``model.pt`` of scvi-tools' format, which earlier versions of
            scsalient wrote. Unpickling can run any code the file holds: only for files you
            trust. Save the model again to convert it (see :doc:`/save_load`).

        Returns
        -------
        The model, in evaluation mode.
        """
        return cls._load(dir_path, adata, accelerator, device, prefix, trust_pickle)

    @classmethod
    def _load(cls, dir_path, data, accelerator, device, prefix, trust_pickle):
        """Read the model files, attach ``data`` (matched to the model's features) and rebuild."""
        _, _, torch_device = parse_device_args(
            accelerator=accelerator, devices=device, return_device="torch", validate_single_device=True
        )
        attributes, state = cls._read_model_files(dir_path, prefix, trust_pickle)
        unexpected = sorted(name for name in attributes if not str(name).endswith("_"))
        missing = sorted({"registry_", "init_params_"} - set(attributes))
        if unexpected or missing:
            raise ValueError(
                f"{dir_path} does not hold a model as save() writes it (attributes missing: {missing}, "
                f"unexpected: {unexpected})."
            )
        registry = attributes.pop("registry_")
        for name in ("adata", "mdata"):  # older files may hold mdata=None: it is given positionally
            attributes.get("init_params_", {}).get("non_kwargs", {}).pop(name, None)
        registry[_FIELD_REGISTRIES] = defaultdict(dict, registry.get(_FIELD_REGISTRIES, {}))
        if registry.get(_MODEL_NAME_KEY, cls.__name__) != cls.__name__:
            name = registry[_MODEL_NAME_KEY]
            raise ValueError(
                f"{dir_path} holds a {name} model, not a {cls.__name__}: load it with {name}.load."
            )
        if data is None:
            data = _read_saved_data(dir_path, prefix, registry)
        if data is not False and data is not None:
            if _SETUP_ARGS_KEY not in registry:
                raise ValueError(f"{dir_path} does not record the setup arguments: it cannot set up data.")
            method = registry.get(_SETUP_METHOD_NAME, "setup_anndata")
            if method not in ("setup_anndata", "setup_mudata"):
                raise ValueError(f"{dir_path} names an unknown setup method {method!r}.")
            data = cls._conform_data(data, registry)
            getattr(cls, method)(data, source_registry=registry, **registry[_SETUP_ARGS_KEY])
        else:
            data = None
        init_params = attributes.get("init_params_", {})
        try:
            model = _initialize_model(cls, data, registry, attributes, None)
            model.module.on_load(model)
            model.module.load_state_dict(state)
        except (TypeError, RuntimeError) as error:
            raise ValueError(
                f"{dir_path} was saved by another version of {cls.__name__}, whose constructor arguments "
                f"({_argument_names(init_params)}) or weights do not fit this one: {error}. Train the model "
                "again with this version."
            ) from error
        model.to_device(torch_device)
        model.module.eval()
        if data is not None:
            model._validate_anndata(data)
        return model

    @classmethod
    def _read_model_files(cls, dir_path, prefix: str | None, trust_pickle: bool) -> tuple[dict, dict]:
        """The model's attributes and weights, from the safe files or (opted in) from ``model.pt``."""
        attributes_path = _path(dir_path, prefix, ATTRIBUTES_FILE)
        if attributes_path.exists():
            content = _read_attributes(attributes_path)
            if content.get("model_class", cls.__name__) != cls.__name__:
                name = content["model_class"]
                raise ValueError(
                    f"{dir_path} holds a {name} model, not a {cls.__name__}: load it with {name}.load."
                )
            attributes = from_json(content["attributes"])
            return attributes, _read_weights(_path(dir_path, prefix, WEIGHTS_FILE))
        pickled = _path(dir_path, prefix, PICKLE_FILE)
        if not pickled.exists():
            raise ValueError(_missing_model_message(dir_path, prefix))
        if not trust_pickle:
            raise ValueError(
                f"{dir_path} holds only {pickled.name}, a pickled model file (the format of scvi-tools and "
                "of older scsalient). Unpickling it can run any code it contains, so it is not read by "
                f"default. If you trust the file, load it with {cls.__name__}.load(..., trust_pickle=True) "
                "and save it again to convert it to the safe format."
            )
        logger.warning("Unpickling %s (trust_pickle=True): only do this for files you trust.", pickled)
        return _read_pickled(pickled)

    @classmethod
    def _conform_data(cls, data: AnnOrMuData, registry: dict) -> AnnOrMuData:
        """``data`` with the model's genes in the model's order (a copy when they differ)."""
        if not isinstance(data, AnnData):
            raise TypeError(f"{cls.__name__}.load needs an AnnData, got {type(data).__name__}.")
        genes = registered_names(registry, "X")
        conformed = conform_genes(data, genes, registry[_SETUP_ARGS_KEY].get("layer"))
        if conformed is not data:
            warn_conformed(f"{len(genes)} genes")
        return conformed

    @staticmethod
    def load_registry(dir_path: str | os.PathLike, prefix: str | None = None) -> dict:
        """The registry (setup arguments, fields and their state) saved with a model.

        Reads ``model.json`` only.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        prefix
            Prefix of the file names, as given to :meth:`save`.
        """
        path = _path(dir_path, prefix, ATTRIBUTES_FILE)
        if not path.exists():
            raise ValueError(
                _missing_model_message(dir_path, prefix)
                + " A pickled model.pt is read only by load(..., trust_pickle=True)."
            )
        return from_json(_read_attributes(path)["attributes"]["registry_"])

    @classmethod
    def view_setup_args(cls, dir_path: str | os.PathLike, prefix: str | None = None) -> None:
        """Print the setup arguments saved with a model.

        Parameters
        ----------
        dir_path
            Directory written by :meth:`save`.
        prefix
            Prefix of the file names, as given to :meth:`save`.
        """
        from scvi.data import AnnDataManager

        AnnDataManager.view_setup_method_args(cls.load_registry(dir_path, prefix))


_FIELD_REGISTRIES = "field_registries"


def _argument_names(init_params: dict) -> str:
    """The saved constructor argument names, for error messages."""
    names = list(init_params.get("non_kwargs", {})) + [
        name for group in init_params.get("kwargs", {}).values() if isinstance(group, dict) for name in group
    ]
    return ", ".join(names) or "none"


def registered_names(registry: dict, key: str) -> pd.Index:
    """The feature names (columns) of field ``key`` of a registry, in the model's order."""
    return pd.Index(
        np.asarray(registry[_FIELD_REGISTRIES][key]["state_registry"]["column_names"]).astype(str)
    )


def warn_conformed(features: str) -> None:
    """Warn that data given to ``load`` were matched to the model's ``features`` on a copy."""
    warnings.warn(
        f"The data given to load() do not hold the model's {features} in the model's order. They are "
        "matched by name (as for query data): the model keeps its own features and order, and is set "
        "up on a copy of the data in that order (model.adata). Pass your object to the read-out "
        "methods (e.g. model.annotate(adata)) to write results into it.",
        UserWarning,
        stacklevel=5,
    )


def _versions() -> dict[str, str]:
    import scvi

    import scsalient

    return {"scsalient": scsalient.__version__, "scvi-tools": scvi.__version__, "torch": torch.__version__}
