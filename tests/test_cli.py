"""The ``scsalient`` command line, run as a user runs it, on a small part of Kang et al. 2018 PBMCs.

Training and annotation go through ``python -m scsalient.cli`` in a subprocess (the code of
this checkout); the console script declared in ``pyproject.toml`` is checked to point at the
same function, and the error cases run in-process through click's test runner.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tomllib
from pathlib import Path

import anndata as ad
import numpy as np
import pandas as pd
import pytest
from click.testing import CliRunner

from scsalient import cli

pytestmark = [pytest.mark.realdata, pytest.mark.slow]

ROOT = Path(__file__).resolve().parents[1]
REFERENCE_DONORS = ["1015", "1244"]
QUERY_DONOR = "1256"


def run_cli(*args: str | Path) -> subprocess.CompletedProcess:
    """``python -m scsalient.cli ARGS`` with this checkout's code, one thread, output captured."""
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT / "src"), os.environ.get("PYTHONPATH", "")]))
    env.update(dict.fromkeys(("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"), "1"))
    return subprocess.run(
        [sys.executable, "-m", "scsalient.cli", *map(str, args)],
        capture_output=True,
        text=True,
        env=env,
        timeout=600,
    )


@pytest.fixture(scope="module")
def files(shared_data, tmp_path_factory) -> dict[str, Path]:
    """A 400-cell reference (two donors), two 100-cell queries (a third donor), one with foreign genes."""
    path = shared_data / "kang2018_pbmc_8k.h5ad"
    if not path.exists():
        pytest.skip(f"{path.name} not found in the shared data")
    kang = ad.read_h5ad(path)
    donors = kang.obs["donor_id"].astype(str).to_numpy()
    rng = np.random.default_rng(0)
    reference = rng.choice(np.flatnonzero(np.isin(donors, REFERENCE_DONORS)), 400, replace=False)
    query = rng.choice(np.flatnonzero(donors == QUERY_DONOR), 200, replace=False)
    folder = tmp_path_factory.mktemp("cli")
    out = {
        "reference": folder / "reference.h5ad",
        "query_a": folder / "query_a.h5ad",
        "query_b": folder / "query_b.h5ad",
        "foreign": folder / "foreign.h5ad",
    }
    kang[reference].copy().write_h5ad(out["reference"])
    kang[query[:100]].copy().write_h5ad(out["query_a"])
    kang[query[100:]].copy().write_h5ad(out["query_b"])
    foreign = kang[query[:100]].copy()
    n_renamed = int(0.6 * foreign.n_vars)  # 40% of the model's genes left: under the 50% needed
    foreign.var_names = [f"OTHER{i}" if i < n_renamed else g for i, g in enumerate(foreign.var_names)]
    foreign.write_h5ad(out["foreign"])
    return out


@pytest.fixture(scope="module")
def model_dir(files, tmp_path_factory) -> Path:
    model_dir = tmp_path_factory.mktemp("model") / "pbmc_model"
    result = run_cli(
        "train",
        files["reference"],
        "--labels",
        "cell_type",
        "--batch-key",
        "donor_id",
        "--model-dir",
        model_dir,
        "--max-epochs",
        "20",
    )
    assert result.returncode == 0, result.stderr
    assert "Training NACT on 400 cells, 2,511 genes (counts), 4 cell types" in result.stderr
    assert f"Saved the NACT model to {model_dir}" in result.stderr
    return model_dir


def test_train_saves_a_model_that_annotate_reads(model_dir):
    assert {"model.json", "model.safetensors"} <= {p.name for p in model_dir.iterdir()}


def test_annotate_writes_an_h5ad_and_two_tables_per_query(files, model_dir, tmp_path):
    output = tmp_path / "annotated"
    result = run_cli(
        "annotate",
        files["query_a"],
        files["query_b"],
        "--model-dir",
        model_dir,
        "--output",
        output,
        "--majority-voting",
    )
    assert result.returncode == 0, result.stderr
    assert result.stderr.count("Loading the NACT model") == 1  # once for both files
    assert "[2/2] Wrote query_b_annotated.h5ad" in result.stderr
    classes = {"CD4 T cells", "CD14+ Monocytes", "B cells", "NK cells"}
    for name in ("query_a", "query_b"):
        query = ad.read_h5ad(files[name])
        annotated = ad.read_h5ad(output / f"{name}_annotated.h5ad")
        assert annotated.obs_names.equals(query.obs_names)
        assert {"nact_prediction", "nact_confidence", "nact_majority_voting"} <= set(annotated.obs)
        assert "nact_attention" in annotated.obsm

        table = pd.read_csv(output / f"{name}_predictions.csv")
        columns = ["cell", "prediction", "confidence", "familiarity", "majority_voting", "agreement"]
        assert list(table.columns) == columns
        assert table["cell"].tolist() == query.obs_names.tolist()
        assert table["prediction"].tolist() == annotated.obs["nact_prediction"].astype(str).tolist()
        np.testing.assert_allclose(table["confidence"], annotated.obs["nact_confidence"], rtol=1e-6)
        assert set(table["prediction"]) <= classes | {"Unassigned"}
        assert table["confidence"].between(0, 1).all()
        # 20 short epochs on 400 cells already separate these four types on another donor
        truth = query.obs["cell_type"].astype(str).to_numpy()
        assert (table["majority_voting"].to_numpy() == truth).mean() > 0.8

        genes = pd.read_csv(output / f"{name}_salient_genes.csv")
        assert list(genes.columns) == cli.SALIENT_COLUMNS
        assigned = table["prediction"][table["prediction"] != "Unassigned"]
        assert set(genes["cell_type"]) == set(assigned)
        for cell_type, rows in genes.groupby("cell_type"):
            assert rows["rank"].tolist() == list(range(1, len(rows) + 1))
            assert len(rows) == 25
            assert (rows["n_cells"] == (assigned == cell_type).sum()).all()
        assert genes["gene"].isin(query.var_names).all()
        symbols = query.var["gene_symbols"].astype(str)
        assert (genes["gene_symbol"].to_numpy() == symbols[genes["gene"]].to_numpy()).all()
    # the genes behind the B-cell calls are B-cell genes
    genes = pd.read_csv(output / "query_b_salient_genes.csv")
    top_b = set(genes.loc[(genes["cell_type"] == "B cells") & (genes["rank"] <= 10), "gene_symbol"])
    assert top_b & {"CD79A", "CD79B", "MS4A1", "CD74", "HLA-DRA", "CD83"}


def test_too_few_of_the_model_genes_exit_2_with_one_line(files, model_dir, tmp_path):
    result = run_cli("annotate", files["foreign"], "--model-dir", model_dir, "--output", tmp_path)
    assert result.returncode == 2
    assert "Traceback" not in result.stderr
    errors = [line for line in result.stderr.splitlines() if line.startswith("Error:")]
    assert len(errors) == 1
    assert "foreign.h5ad" in errors[0]
    assert "only 1005 of the model's 2511 genes (40.0%); at least 50% are needed" in errors[0]
    assert not list(tmp_path.glob("foreign*"))


# --------------------------------------------------------------------------- in-process checks
def invoke(*args: str | Path):
    return CliRunner().invoke(cli.cli, [str(a) for a in args], prog_name="scsalient")


def _error_line(result) -> str:
    assert result.exception is None or isinstance(result.exception, SystemExit), result.exception
    lines = [line for line in result.output.splitlines() if line.startswith("Error:")]
    assert len(lines) == 1, result.output
    return lines[0]


def test_console_script_runs_the_command_line():
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    module, function = scripts["scsalient"].split(":")
    assert (module, function) == ("scsalient.cli", "main")
    result = invoke("--help")
    assert result.exit_code == 0
    assert "Usage: scsalient [OPTIONS] COMMAND" in result.output
    assert {"train", "annotate"} <= set(cli.cli.commands)


@pytest.mark.parametrize("command", ["train", "annotate"])
def test_help_gives_examples(command):
    result = invoke(command, "--help")
    assert result.exit_code == 0
    assert f"scsalient {command} " in result.output.split("Examples:")[1]
    assert "Exit status: 0 done, 2 unusable input" in result.output


def test_missing_labels_column_exits_2(files, tmp_path):
    result = invoke("train", files["reference"], "--labels", "celltype", "--model-dir", tmp_path / "m")
    assert result.exit_code == 2
    line = _error_line(result)
    assert "has no column 'celltype'" in line
    assert "cell_type, donor_id" in line  # the columns it does have
    assert not (tmp_path / "m").exists()


def test_missing_batch_column_exits_2(files, tmp_path):
    result = invoke(
        "train", files["reference"], "--labels", "cell_type", "--batch-key", "donor", "--model-dir", tmp_path
    )
    assert result.exit_code == 2
    assert "has no column 'donor'" in _error_line(result)


def test_a_directory_without_a_model_exits_2(files, tmp_path):
    (tmp_path / "notes.txt").write_text("not a model")
    result = invoke("annotate", files["query_a"], "--model-dir", tmp_path, "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert "holds no saved scsalient model" in _error_line(result)
    assert not (tmp_path / "out").exists()


def test_a_corrupt_model_file_exits_2(files, tmp_path):
    (tmp_path / "model.json").write_text("{not json")
    result = invoke("annotate", files["query_a"], "--model-dir", tmp_path, "--output", tmp_path / "out")
    assert result.exit_code == 2
    assert "is not a scsalient model file" in _error_line(result)


@pytest.mark.parametrize("command", ["train", "annotate"])
def test_a_missing_file_exits_2(command, tmp_path):
    extra = ["--labels", "cell_type"] if command == "train" else ["--output", tmp_path / "out"]
    result = invoke(command, tmp_path / "absent.h5ad", "--model-dir", tmp_path, *extra)
    assert result.exit_code == 2
    assert "absent.h5ad' does not exist" in _error_line(result)


def test_a_file_that_is_not_h5ad_exits_2(tmp_path):
    path = tmp_path / "table.h5ad"
    path.write_text("cell,type\n")
    result = invoke("train", path, "--labels", "type", "--model-dir", tmp_path / "m")
    assert result.exit_code == 2
    assert "could not be read as an .h5ad file" in _error_line(result)


def test_existing_outputs_are_kept_unless_overwrite(files, model_dir, tmp_path):
    (tmp_path / "query_a_predictions.csv").write_text("keep me")
    result = invoke("annotate", files["query_a"], "--model-dir", model_dir, "--output", tmp_path)
    assert result.exit_code == 2
    assert "already exists: pass --overwrite" in _error_line(result)
    assert (tmp_path / "query_a_predictions.csv").read_text() == "keep me"
    result = invoke("train", files["reference"], "--labels", "cell_type", "--model-dir", model_dir)
    assert result.exit_code == 2
    assert "is not empty" in _error_line(result)


def test_two_queries_with_one_name_exit_2(files, model_dir, tmp_path):
    copy = tmp_path / "other" / files["query_a"].name
    copy.parent.mkdir()
    copy.write_bytes(files["query_a"].read_bytes())
    result = invoke("annotate", files["query_a"], copy, "--model-dir", model_dir, "--output", tmp_path)
    assert result.exit_code == 2
    assert "have the same file name" in _error_line(result)


def test_min_confidence_sends_less_confident_cells_to_unassigned(files, model_dir, tmp_path):
    result = invoke(
        "annotate",
        files["query_a"],
        "--model-dir",
        model_dir,
        "--output",
        tmp_path,
        "--min-confidence",
        "0.99",
    )
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "query_a_predictions.csv")
    unassigned = table["prediction"] == "Unassigned"
    assert unassigned.any()
    assert (unassigned == (table["confidence"] < 0.99)).all()
    assert "majority_voting" not in table
    genes = pd.read_csv(tmp_path / "query_a_salient_genes.csv")
    assert set(genes["cell_type"]) == set(table["prediction"][~unassigned])


def test_min_familiarity_sends_unfamiliar_cells_to_unassigned(files, model_dir, tmp_path):
    args = ("--model-dir", model_dir, "--output", tmp_path, "--min-confidence", "0")
    result = invoke("annotate", files["query_a"], *args, "--min-familiarity", "0.5")
    assert result.exit_code == 0, result.output
    table = pd.read_csv(tmp_path / "query_a_predictions.csv")
    unassigned = table["prediction"] == "Unassigned"
    assert table["familiarity"].between(0, 1).all()
    assert unassigned.any() and (unassigned == (table["familiarity"] < 0.5)).all()
    annotated = ad.read_h5ad(tmp_path / "query_a_annotated.h5ad")
    assert annotated.uns["nact"]["min_familiarity"] == 0.5
    np.testing.assert_allclose(table["familiarity"], annotated.obs["nact_familiarity"], rtol=1e-6)


def test_salient_gene_table_without_assigned_cells_is_empty():
    from scipy import sparse

    from scsalient._constants import NACTKeys

    adata = ad.AnnData(
        obs=pd.DataFrame({NACTKeys.PREDICTION: pd.Categorical(["Unassigned"] * 3)}, index=list("abc")),
        var=pd.DataFrame(index=["g1", "g2"]),
    )
    adata.obsm[NACTKeys.ATTENTION] = sparse.csr_matrix(np.ones((3, 2), dtype=np.float32))
    table = cli.salient_gene_table(adata, NACTKeys, n_genes=5)
    assert list(table.columns) == cli.SALIENT_COLUMNS
    assert table.empty


@pytest.mark.parametrize("command", [[], ["train"], ["annotate"]])
def test_docs_page_shows_the_current_help(command):
    result = CliRunner().invoke(
        cli.cli, [*command, "--help"], prog_name="scsalient", terminal_width=78
    )  # an 80-column terminal
    assert result.exit_code == 0
    page = (ROOT / "docs" / "cli.md").read_text()
    block = f"$ {' '.join(['scsalient', *command, '--help'])}\n{result.output.rstrip()}\n```"
    assert block in page, "docs/cli.md is out of date: paste the output of this --help into it"


def test_sctab_is_trained_and_annotate_picks_its_class_from_the_model_dir(files, tmp_path):
    model_dir = tmp_path / "sctab_model"
    result = invoke(
        "train", files["reference"], "--labels", "cell_type", "--model", "sctab", "--model-dir", model_dir,
        "--max-epochs", "1",
    )  # fmt: skip
    assert result.exit_code == 0, result.output
    assert "Saved the SCTAB model" in result.output
    result = invoke("annotate", files["query_a"], "--model-dir", model_dir, "--output", tmp_path / "out")
    assert result.exit_code == 0, result.output
    assert "Loading the SCTAB model" in result.output
    annotated = ad.read_h5ad(tmp_path / "out" / "query_a_annotated.h5ad")
    table = pd.read_csv(tmp_path / "out" / "query_a_predictions.csv")
    assert table["prediction"].tolist() == annotated.obs["sctab_prediction"].astype(str).tolist()
    # scTab writes its uncertainty; the table gives the confidence, as for N-ACT
    np.testing.assert_allclose(table["confidence"], 1 - annotated.obs["sctab_uncertainty"], rtol=1e-5)
    genes = pd.read_csv(tmp_path / "out" / "query_a_salient_genes.csv")
    assert not genes.empty
    assert set(genes["cell_type"]) <= set(table["prediction"])


def _model_json(folder: Path, content: dict) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    header = {"format": "scsalient-model", "format_version": 1}
    (folder / "model.json").write_text(json.dumps({**header, **content}))
    return folder


def test_a_model_of_another_kind_exits_2(files, tmp_path):
    model_dir = _model_json(tmp_path / "ae", {"model_class": "ModuleAE", "attributes": {}})
    result = invoke("annotate", files["query_a"], "--model-dir", model_dir, "--output", tmp_path / "out")
    assert result.exit_code == 2
    line = _error_line(result)
    assert "holds a ModuleAE model; annotate needs a cell-type classifier (NACT or SCTAB)" in line


def test_saved_model_class_falls_back_to_the_registry(tmp_path):
    from scsalient.model.base._save_load import saved_model_class

    older = _model_json(tmp_path / "older", {"attributes": {"registry_": {"model_name": "SCTAB"}}})
    assert saved_model_class(older) == "SCTAB"
    unnamed = _model_json(tmp_path / "unnamed", {"attributes": {}})
    with pytest.raises(ValueError, match="does not name the class"):
        saved_model_class(unnamed)
