"""The ``scsalient`` command line: train a cell-type classifier, annotate query files with it.

Built on :mod:`click`. Exit codes (for pipelines): 0 done; 1 unexpected failure (with a
Python traceback); 2 input that cannot be used (missing file, bad option, missing labels
column, a directory that holds no model, too few of the model's genes, outputs that exist),
with a one-line message. See ``docs/cli.md``.
"""

from __future__ import annotations

import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING

import click

if TYPE_CHECKING:
    import pandas as pd
    from anndata import AnnData

#: exit status of an input that cannot be used (click's own usage errors use it too)
EXIT_INPUT = 2
#: ``--model`` choices and the classes they name
MODELS = {"nact": "NACT", "sctab": "SCTAB"}
#: columns of the salient-gene table
SALIENT_COLUMNS = [
    "cell_type",
    "n_cells",
    "rank",
    "gene",
    "gene_symbol",
    "score",
    "mean_share",
    "fraction_of_cells",
    "log2_ratio",
    "pval_adj",
]


class InputError(click.ClickException):
    """An input the command cannot use: ``Error: <message>`` on one line, exit status 2."""

    exit_code = EXIT_INPUT

    def __init__(self, message: str):
        super().__init__(" ".join(str(message).split()))


def _echo(message: str) -> None:
    """A progress message, on standard error (standard output stays free for pipelines)."""
    click.echo(message, err=True)


def _show_warning(message, category, filename, lineno, file=None, line=None) -> None:
    """Warnings as one line, without the source location a command-line user cannot act on."""
    click.echo(f"Warning: {' '.join(str(message).split())}", err=True)


@contextmanager
def _input_errors(where: str | None = None, hint: str = "") -> Iterator[None]:
    """Turn the package's checks of its input (``ValueError``, ``KeyError``) into exit status 2.

    The message is prefixed with ``where`` (the file it is about) and followed by ``hint``.
    Among them: a query holding fewer than half of the model's genes, a directory that holds
    no model, values that are not expression (negative, NaN).
    """
    try:
        yield
    except (ValueError, KeyError) as error:
        message = error.args[0] if isinstance(error, KeyError) and error.args else error
        prefix = f"{where}: " if where else ""
        raise InputError(f"{prefix}{message}{hint}") from error


def _read_h5ad(path: Path) -> AnnData:
    """Read an ``.h5ad`` file; a file that is not one is an input error."""
    import anndata

    try:
        return anndata.read_h5ad(path)
    except Exception as error:  # h5py, anndata and OS errors all mean "not readable"
        raise InputError(
            f"{path} could not be read as an .h5ad file ({type(error).__name__}: {error})."
        ) from error


def _check_column(adata: AnnData, path: Path, key: str, option: str) -> None:
    """Fail clearly when ``key`` is not a column of ``adata.obs``."""
    if key in adata.obs.columns:
        return
    columns = [str(c) for c in adata.obs.columns]
    shown = ", ".join(columns[:20]) + (f", ... ({len(columns)} in all)" if len(columns) > 20 else "")
    raise InputError(
        f"{path.name} has no column {key!r} in its cell metadata (adata.obs), given as {option}. "
        f"Its columns: {shown or 'none'}."
    )


def _model_class(name: str):
    import scsalient

    return getattr(scsalient.model, name)


# ------------------------------------------------------------------------------------ the group
@click.group(
    context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100},
    epilog="""\b
Typical use:
  scsalient train reference.h5ad --labels cell_type --model-dir my_model
  scsalient annotate sample1.h5ad sample2.h5ad --model-dir my_model --output annotated/

Run 'scsalient COMMAND --help' for the options of each command.""",
)
@click.version_option(package_name="scsalient", prog_name="scsalient")
def cli() -> None:
    """Annotate cell types in single-cell RNA data, with the genes behind each call.

    Train a classifier on a labelled reference (an .h5ad file), then annotate
    query files with it. Files can hold raw counts or log-normalised values:
    the model detects which.
    """
    # for this command only (restored when it ends, so that in-process callers keep theirs)
    click.get_current_context().with_resource(warnings.catch_warnings())
    warnings.showwarning = _show_warning
    # deprecation notices of the libraries underneath are for developers, not for this command's users
    warnings.filterwarnings("ignore", category=FutureWarning)
    warnings.filterwarnings("ignore", category=DeprecationWarning)
    for message in (".*number of training batches.*", ".*does not have many workers.*"):
        warnings.filterwarnings("ignore", message=message)


# ------------------------------------------------------------------------------------ train
@cli.command(
    epilog="""\b
Examples:
  # N-ACT on the cell types in adata.obs["cell_type"]
  scsalient train reference.h5ad --labels cell_type --model-dir pbmc_model

\b
  # scTab, with the donor of each cell (training then relies less on donor effects)
  scsalient train reference.h5ad --labels cell_type --batch-key donor --model sctab --model-dir pbmc_sctab

\b
Output: MODEL_DIR with model.json and model.safetensors, read by 'scsalient annotate'
(and in Python by scsalient.model.NACT.load / SCTAB.load).
Exit status: 0 done, 2 unusable input (message on one line), 1 unexpected failure.""",
)
@click.argument("reference", type=click.Path(exists=True, dir_okay=False, path_type=Path))
@click.option(
    "--labels",
    "labels_key",
    required=True,
    metavar="KEY",
    help="Column of the cell metadata (adata.obs) holding the cell types to learn, e.g. cell_type.",
)
@click.option(
    "--model-dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory to save the trained model in (created; must be empty unless --overwrite).",
)
@click.option(
    "--model",
    "model_name",
    type=click.Choice(sorted(MODELS), case_sensitive=False),
    default="nact",
    show_default=True,
    help="nact: N-ACT, gene attention (fast, the default). sctab: scTab, TabNet gene masks.",
)
@click.option(
    "--batch-key",
    metavar="KEY",
    default=None,
    help="Column of adata.obs with the donor, sample or batch of each cell (optional). "
    "Training then adds differences between batches to the cells, so that the model relies "
    "less on batch effects. Query files do not need this column.",
)
@click.option(
    "--max-epochs",
    type=click.IntRange(min=1),
    default=None,
    metavar="N",
    help="Passes over the reference cells. Default: the model's own choice for the data size.",
)
@click.option("--overwrite", is_flag=True, help="Replace the model files in an existing --model-dir.")
def train(
    reference: Path,
    labels_key: str,
    model_dir: Path,
    model_name: str,
    batch_key: str | None,
    max_epochs: int | None,
    overwrite: bool,
) -> None:
    """Train a cell-type classifier on a labelled REFERENCE .h5ad file and save it.

    REFERENCE holds one row per cell, with raw counts or log-normalised values
    in .X and the cell types in the column given by --labels.
    """
    if model_dir.exists() and any(model_dir.iterdir()) and not overwrite:
        raise InputError(
            f"{model_dir} exists and is not empty: choose another --model-dir or pass --overwrite."
        )
    cls = _model_class(MODELS[model_name.lower()])
    _echo(f"Reading {reference} ...")
    adata = _read_h5ad(reference)
    _check_column(adata, reference, labels_key, "--labels")
    if batch_key is not None:
        _check_column(adata, reference, batch_key, "--batch-key")
    with _input_errors(str(reference)):
        cls.setup_anndata(adata, labels_key=labels_key, batch_key=batch_key)
        model = cls(adata)
    n_types = adata.obs[labels_key].nunique()
    _echo(
        f"Training {cls.__name__} on {adata.n_obs:,} cells, {adata.n_vars:,} genes "
        f"({model.input_kind}), {n_types} cell types ..."
    )
    model.train(**({} if max_epochs is None else {"max_epochs": max_epochs}))
    model.save(model_dir, overwrite=True)
    from scsalient.model.base._classifier import _best_validation_f1

    f1 = _best_validation_f1(model)
    score = "" if f1 is None else f" (validation macro-F1 {f1:.3f})"
    _echo(f"Saved the {cls.__name__} model to {model_dir}{score}.")


# ------------------------------------------------------------------------------------ annotate
@cli.command(
    epilog="""\b
Examples:
  scsalient annotate query.h5ad --model-dir pbmc_model --output annotated/

\b
  # several files (the model is loaded once), majority voting over clusters
  scsalient annotate donor1.h5ad donor2.h5ad --model-dir pbmc_model --output annotated/ --majority-voting

\b
Output, in OUTPUT, for each QUERY file NAME.h5ad:
  NAME_annotated.h5ad     the query with the model's results added (predictions in
                          .obs, probabilities and per-cell gene shares in .obsm)
  NAME_predictions.csv    one row per cell: cell, prediction, confidence
                          (and majority_voting, agreement with --majority-voting)
  NAME_salient_genes.csv  the top genes behind each predicted cell type
Exit status: 0 done, 2 unusable input (message on one line), 1 unexpected failure.
Files are annotated in order; at the first unusable one the command stops with
status 2 (the files before it are written).""",
)
@click.argument(
    "queries",
    nargs=-1,
    required=True,
    metavar="QUERY...",
    type=click.Path(exists=True, dir_okay=False, path_type=Path),
)
@click.option(
    "--model-dir",
    required=True,
    type=click.Path(exists=True, file_okay=False, path_type=Path),
    help="Directory of a model saved by 'scsalient train' (or by model.save in Python).",
)
@click.option(
    "--output",
    "output_dir",
    required=True,
    type=click.Path(file_okay=False, path_type=Path),
    help="Directory for the results (created if needed).",
)
@click.option(
    "--min-confidence",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    metavar="P",
    help="Cells whose confidence (calibrated probability of the predicted type) is below P "
    "are labelled Unassigned. Default: the model's own threshold; 0 labels every cell.",
)
@click.option(
    "--min-familiarity",
    type=click.FloatRange(0.0, 1.0),
    default=None,
    metavar="P",
    help="Cells whose familiarity (how much they resemble any type of the reference, a "
    "p-value in 0-1) is below P are labelled Unassigned. Default: the model's own "
    "threshold; 0 labels every cell.",
)
@click.option(
    "--majority-voting",
    is_flag=True,
    help="Also give each cell the most frequent prediction of its cluster (cells are "
    "over-clustered first, as in CellTypist).",
)
@click.option(
    "--n-genes",
    type=click.IntRange(min=1),
    default=25,
    show_default=True,
    metavar="N",
    help="Salient genes listed per predicted cell type.",
)
@click.option("--overwrite", is_flag=True, help="Replace result files that already exist in OUTPUT.")
def annotate(
    queries: tuple[Path, ...],
    model_dir: Path,
    output_dir: Path,
    min_confidence: float | None,
    min_familiarity: float | None,
    majority_voting: bool,
    n_genes: int,
    overwrite: bool,
) -> None:
    """Predict the cell type of every cell in one or more QUERY .h5ad files.

    Each QUERY holds one row per cell, with raw counts or log-normalised values
    in .X and genes named as in the reference (at least half of the model's
    genes must be present; missing ones are treated as not expressed).
    """
    outputs = {query: _output_paths(output_dir, query) for query in queries}
    _check_outputs(outputs, overwrite)
    model = _load_classifier(model_dir)
    output_dir.mkdir(parents=True, exist_ok=True)
    threshold = "default" if min_confidence is None else min_confidence
    familiarity = "default" if min_familiarity is None else min_familiarity
    for i, (query, (h5ad, predictions, genes)) in enumerate(outputs.items(), start=1):
        _echo(f"[{i}/{len(queries)}] Reading {query} ...")
        adata = _read_h5ad(query)
        _echo(f"[{i}/{len(queries)}] Annotating {adata.n_obs:,} cells ...")
        with _input_errors(str(query)):
            model.annotate(
                adata,
                min_confidence=threshold,
                min_familiarity=familiarity,
                majority_voting=majority_voting,
            )
        table = prediction_table(adata, model._keys, majority_voting)
        table.to_csv(predictions, index=False)
        salient_gene_table(adata, model._keys, n_genes).to_csv(genes, index=False)
        adata.write_h5ad(h5ad)
        counts = table["prediction"].value_counts()
        summary = ", ".join(f"{name} {n:,}" for name, n in counts.items())
        _echo(f"[{i}/{len(queries)}] Wrote {h5ad.name}, {predictions.name}, {genes.name}: {summary}.")
    _echo(f"Done: results in {output_dir}.")


def _output_paths(output_dir: Path, query: Path) -> tuple[Path, Path, Path]:
    stem = query.name.removesuffix(".h5ad")
    return (
        output_dir / f"{stem}_annotated.h5ad",
        output_dir / f"{stem}_predictions.csv",
        output_dir / f"{stem}_salient_genes.csv",
    )


def _check_outputs(outputs: dict[Path, tuple[Path, ...]], overwrite: bool) -> None:
    """Before any work: two queries may not write the same files, nor (without --overwrite) old ones."""
    seen: dict[Path, Path] = {}
    for query, paths in outputs.items():
        if paths[0] in seen:
            raise InputError(
                f"{seen[paths[0]]} and {query} have the same file name, so their results would overwrite "
                "each other: rename one, or annotate them into different --output directories."
            )
        seen[paths[0]] = query
        existing = [p for p in paths if p.exists()]
        if existing and not overwrite:
            raise InputError(f"{existing[0]} already exists: pass --overwrite or choose another --output.")


def _load_classifier(model_dir: Path):
    """The NACT or SCTAB model saved in ``model_dir``, loaded without data."""
    from scsalient.model.base._save_load import saved_model_class

    with _input_errors(hint=" Give the --model-dir that 'scsalient train' wrote."):
        name = saved_model_class(model_dir)
    if name not in MODELS.values():
        raise InputError(
            f"{model_dir} holds a {name} model; annotate needs a cell-type classifier "
            f"({' or '.join(MODELS.values())})."
        )
    _echo(f"Loading the {name} model from {model_dir} ...")
    with _input_errors(), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*holds no saved data.*")
        return _model_class(name).load(model_dir, adata=False)


# ------------------------------------------------------------------------------------ tables
def prediction_table(adata: AnnData, keys, majority_voting: bool) -> pd.DataFrame:
    """One row per cell: its name, prediction, confidence and familiarity (and the majority vote).

    Parameters
    ----------
    adata
        Data annotated by a classifier's ``annotate``.
    keys
        The classifier's keys (:class:`~scsalient._constants.NACTKeys` or ``SCTABKeys``).
    majority_voting
        Add the columns ``majority_voting`` and ``agreement``.
    """
    import pandas as pd

    table = pd.DataFrame(
        {
            "cell": adata.obs_names.astype(str),
            "prediction": adata.obs[keys.PREDICTION].to_numpy(),
            # the calibrated top probability, whichever confidence column the model writes
            "confidence": adata.obsm[keys.PROBABILITIES].max(axis=1, skipna=False).to_numpy(),
            "familiarity": adata.obs[keys.FAMILIARITY].to_numpy(),
        }
    )
    if majority_voting:
        table["majority_voting"] = adata.obs[keys.MAJORITY_VOTING].to_numpy()
        table["agreement"] = adata.obs[keys.AGREEMENT].to_numpy()
    return table


def salient_gene_table(adata: AnnData, keys, n_genes: int) -> pd.DataFrame:
    """The top ``n_genes`` salient genes of each predicted cell type, as a long table.

    Ranks the genes of the cells predicted as each type (``Unassigned`` cells and cells
    without a prediction left out) with :func:`scsalient.tl.salient_genes` on the per-cell
    explanation written by ``annotate``: TF-IDF of the genes in the cells' top lists times
    their mean share, or the mean share alone when a single type was predicted.

    Parameters
    ----------
    adata
        Data annotated by a classifier's ``annotate`` (with its explanation).
    keys
        The classifier's keys.
    n_genes
        Genes per cell type.
    """
    import numpy as np
    import pandas as pd
    from anndata import AnnData

    from scsalient._gene_symbols import SYMBOL_COLUMNS
    from scsalient.model.base._annotate import UNASSIGNED
    from scsalient.tl import salient_genes

    predicted = pd.Series(adata.obs[keys.PREDICTION].to_numpy(dtype=object), index=adata.obs_names)
    predicted = predicted.where(predicted != UNASSIGNED)
    n_cells = predicted.value_counts()
    if len(n_cells) == 0:
        return pd.DataFrame(columns=SALIENT_COLUMNS)
    light = AnnData(  # only what the ranking reads: the groups and the explanation
        obs=pd.DataFrame({"group": pd.Categorical(predicted)}, index=adata.obs_names),
        var=pd.DataFrame(index=adata.var_names),
    )
    light.obsm[keys.EXPLANATION] = adata.obsm[keys.EXPLANATION]
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*without cells.*")
        record = salient_genes(
            light,
            "group",
            attention_key=keys.EXPLANATION,
            n_top=min(100, adata.n_vars),
            n_genes=n_genes,
            tfidf=len(n_cells) >= 2,
            inplace=False,
        )
    symbol_column = next((c for c in SYMBOL_COLUMNS if c in adata.var.columns), None)
    symbols = adata.var[symbol_column].astype(str) if symbol_column else None
    frames = []
    for group in record["names"].dtype.names:
        names = np.asarray(record["names"][group]).astype(str)
        frames.append(
            pd.DataFrame(
                {
                    "cell_type": group,
                    "n_cells": int(n_cells.get(group, 0)),
                    "rank": np.arange(1, len(names) + 1),
                    "gene": names,
                    "gene_symbol": symbols.reindex(names).to_numpy() if symbols is not None else names,
                    "score": record["scores"][group],
                    "mean_share": record["mean_attention"][group],
                    "fraction_of_cells": record["tf"][group],
                    "log2_ratio": record["attention_log2_ratio"][group],
                    "pval_adj": record["pvals_adj"][group],
                }
            )
        )
    return pd.concat(frames, ignore_index=True)[SALIENT_COLUMNS]


def main() -> None:
    """Run the command line (the ``scsalient`` entry point)."""
    cli(prog_name="scsalient")


if __name__ == "__main__":
    main()
