from __future__ import annotations

import gzip
import json
import sys
from pathlib import Path

import pandas as pd
import pytest

from scsalient.datasets import marker_database, read_gmt

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
MARKERS = DATA / "markers"
PANGLAO = MARKERS / "PanglaoDB_markers_27_Mar_2020.tsv.gz"
CELLMARKER = MARKERS / "CellMarker2_Human_Aug.csv"
HALLMARK = DATA / "gene_sets" / "h.all.v7.5.1.symbols.gmt"


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"shared file {path} not found")


def check_tidy(frame: pd.DataFrame) -> None:
    assert list(frame.columns) == ["cell_type", "gene", "weight"]
    assert not frame.duplicated(["cell_type", "gene"]).any()
    assert frame["weight"].dtype == float
    assert (frame["weight"] >= 0).all()
    assert frame["gene"].map(lambda g: isinstance(g, str) and g == g.strip() and g != "").all()


# --- GMT --------------------------------------------------------------------------------------


def test_read_gmt_skips_descriptions(tmp_path):
    path = tmp_path / "sets.gmt"
    path.write_text("SET_A\thttp://example.org/a\tG1\tG2\tG2\t\nSET_B\tno description\tG3\n\n")
    assert read_gmt(path) == {"SET_A": ["G1", "G2"], "SET_B": ["G3"]}
    gz = tmp_path / "sets.gmt.gz"
    with gzip.open(gz, "wt") as handle:
        handle.write("SET_A\tx\tG1\n")
    assert read_gmt(gz) == {"SET_A": ["G1"]}
    frame = marker_database(path)
    check_tidy(frame)
    assert frame["weight"].eq(1.0).all()
    assert len(frame) == 3


def test_read_gmt_errors(tmp_path):
    with pytest.raises(FileNotFoundError):
        read_gmt(tmp_path / "missing.gmt")
    duplicated = tmp_path / "dup.gmt"
    duplicated.write_text("A\tx\tG1\nA\tx\tG2\n")
    with pytest.raises(ValueError, match="twice"):
        read_gmt(duplicated)
    broken = tmp_path / "broken.gmt"
    broken.write_text("just-a-name\n")
    with pytest.raises(ValueError, match="GMT"):
        read_gmt(broken)


@needs(HALLMARK)
def test_read_hallmark_gmt():
    sets = read_gmt(HALLMARK)
    assert len(sets) == 50
    assert all(name.startswith("HALLMARK_") for name in sets)
    assert not any(gene.startswith("http") for genes in sets.values() for gene in genes)
    assert sets["HALLMARK_TNFA_SIGNALING_VIA_NFKB"][:3] == ["JUNB", "CXCL2", "ATF3"]
    assert 30 <= min(map(len, sets.values()))
    assert max(map(len, sets.values())) <= 200
    frame = marker_database(HALLMARK)
    check_tidy(frame)
    assert len(frame) == sum(map(len, sets.values()))


# --- PanglaoDB --------------------------------------------------------------------------------


@needs(PANGLAO)
def test_panglaodb_species_and_weights():
    human = marker_database(PANGLAO, species="human")
    mouse = marker_database(PANGLAO, species="mouse")
    check_tidy(human)
    check_tidy(mouse)
    # 8,286 rows: 7,507 "Mm Hs", 344 "Hs", 402 "Mm", the rest without a species
    assert len(human) == 7507 + 344
    assert len(mouse) == 7507 + 402
    assert human["cell_type"].nunique() == mouse["cell_type"].nunique() == 178
    # symbols: upper case for human, mouse style for mouse
    assert human["gene"].str.upper().eq(human["gene"]).all()
    assert mouse["gene"].str.capitalize().eq(mouse["gene"]).all()
    human_t = set(human.loc[human["cell_type"] == "T cells", "gene"])
    mouse_t = set(mouse.loc[mouse["cell_type"] == "T cells", "gene"])
    assert "CD3E" in human_t
    assert "Cd3e" in mouse_t
    # weights are the species' sensitivities
    assert human.set_index(["cell_type", "gene"]).loc[("Acinar cells", "CTRB1"), "weight"] == pytest.approx(
        1.0
    )
    assert mouse.set_index(["cell_type", "gene"]).loc[("Acinar cells", "Ctrb1"), "weight"] == pytest.approx(
        0.957143
    )
    assert human["weight"].between(0, 1).all()


@needs(PANGLAO)
def test_panglaodb_missing_sensitivity_falls_back_to_one(tmp_path):
    raw = pd.read_csv(PANGLAO, sep="\t")
    na_rows = raw[raw["sensitivity_human"].isna() & raw["species"].str.contains("Hs", na=False)]
    assert len(na_rows) > 0
    human = marker_database(PANGLAO).set_index(["cell_type", "gene"])
    for _, row in na_rows.head(10).iterrows():
        assert human.loc[(row["cell type"].strip(), row["official gene symbol"].strip()), "weight"] == 1.0


@needs(PANGLAO)
def test_panglaodb_types_without_sensitivities_get_weight_one():
    raw = pd.read_csv(PANGLAO, sep="\t")
    raw = raw[raw["species"].str.contains("Hs", na=False)]
    raw["cell type"] = raw["cell type"].str.strip()
    unmeasured = raw.groupby("cell type")["sensitivity_human"].apply(lambda s: not s.fillna(0).gt(0).any())
    assert unmeasured.sum() == 111
    assert unmeasured["B cells memory"]
    human = marker_database(PANGLAO)
    assert human.loc[human["cell_type"] == "B cells memory", "weight"].eq(1.0).all()
    totals = human.groupby("cell_type")["weight"].sum()
    assert (totals > 0).all()
    # within measured types a sensitivity of 0 stays 0 (RBPJL is not detected in human acinar cells)
    acinar = human[human["cell_type"] == "Acinar cells"].set_index("gene")["weight"]
    assert acinar["RBPJL"] == 0.0
    assert acinar["CTRB1"] == 1.0


@needs(PANGLAO)
def test_panglaodb_filters():
    immune = marker_database(PANGLAO, tissue=["Immune system", "blood"])
    assert 20 <= immune["cell_type"].nunique() <= 40
    assert {"B cells", "NK cells", "T cells", "Monocytes"} <= set(immune["cell_type"])
    assert "Hepatocytes" not in set(immune["cell_type"])
    strong = marker_database(PANGLAO, min_weight=0.5)
    assert (strong["weight"] >= 0.5).all()
    assert len(strong) < len(marker_database(PANGLAO))
    with pytest.raises(ValueError, match="No markers left"):
        marker_database(PANGLAO, tissue="Atlantis")


@needs(PANGLAO)
def test_short_name_with_local_path_never_downloads(monkeypatch):
    monkeypatch.setitem(sys.modules, "pooch", None)  # an import would fail
    frame = marker_database("panglaodb", path=PANGLAO)
    assert len(frame) == 7851
    assert frame.attrs["source"].startswith("PanglaoDB")


# --- CellMarker -------------------------------------------------------------------------------


@needs(CELLMARKER)
def test_cellmarker_derived_table():
    frame = marker_database(CELLMARKER)
    check_tidy(frame)
    assert frame["cell_type"].nunique() == 918
    raw = pd.read_csv(CELLMARKER)
    assert len(raw) == 2163
    b_cell = frame[frame["cell_type"] == "B cell"].set_index("gene")["weight"]
    assert b_cell.index[:3].tolist() == ["CD19", "MS4A1", "CD79A"]  # most often listed first
    assert b_cell["CD19"] > 100
    # weights count the listings over all tissues
    listings = raw.loc[raw["CT"] == "B cell", "Gene"].str.split(",").explode().str.strip()
    assert b_cell["CD79A"] == (listings == "CD79A").sum()
    blood = marker_database(CELLMARKER, tissue="Blood")
    assert blood["cell_type"].nunique() < frame["cell_type"].nunique()
    assert marker_database(CELLMARKER, min_weight=2)["weight"].min() >= 2
    with pytest.warns(UserWarning, match="human marker table"):
        marker_database(CELLMARKER, species="mouse")


OFFICIAL_HEADER = (
    "species,tissue_class,tissue_type,uberonongology_id,cancer_type,cell_type,cell_name,cellontology_id,"
    "marker,Symbol,GeneID,Genetype,Genename,UNIPROTID,technology_seq,marker_source,PMID,Title,journal,year"
)


def official_row(species, tissue, cell, symbol):
    head = f"{species},{tissue},{tissue},U,Normal,Normal cell,{cell},CL,{symbol},{symbol}"
    return head + ",1,pc,name,P,FACS,Experiment,1,T,J,2020"


def test_cellmarker_official_layout(tmp_path):
    path = tmp_path / "Cell_marker_All.csv"
    rows = [
        official_row("Human", "Blood", "B cell", "MS4A1"),
        official_row("Human", "Lymph node", "B cell", "MS4A1"),
        official_row("Human", "Blood", "B cell", "CD19"),
        official_row("Human", "Blood", "T cell", ""),  # no symbol: dropped
        official_row("Mouse", "Spleen", "B cell", "Cd19"),
        official_row("Mouse", "Spleen", "T cell", "Cd3e"),
    ]
    path.write_text("\n".join([OFFICIAL_HEADER, *rows]) + "\n")
    human = marker_database(path)
    assert human.set_index(["cell_type", "gene"])["weight"].to_dict() == {
        ("B cell", "MS4A1"): 2.0,
        ("B cell", "CD19"): 1.0,
    }
    mouse = marker_database(path, species="mouse")
    assert set(mouse["gene"]) == {"Cd19", "Cd3e"}
    assert set(marker_database(path, tissue="lymph node")["gene"]) == {"MS4A1"}


PANGLAO_TABLE = (
    "species\tofficial gene symbol\tcell type\torgan\tsensitivity_human\tsensitivity_mouse\n"
    "Mm Hs\tCD3E\tT cells\tImmune system\t0.9\t0.8\n"
)


def test_database_name_never_reads_the_working_directory(monkeypatch, tmp_path):
    """A file named like a database in the working directory is not the database."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "panglaodb").write_text(PANGLAO_TABLE)
    (tmp_path / "cellmarker").write_text("Tissue,CT,Gene\nBlood,B cell,CD19\n")

    def no_download(*args, **kwargs):
        raise AssertionError("nothing may be downloaded")

    monkeypatch.setattr("pooch.retrieve", no_download)
    for name in ("panglaodb", "PanglaoDB", "cellmarker"):
        with pytest.raises(ValueError, match=r"needs `path=`.*does not download"):
            marker_database(name)
    # the same file is read when given explicitly as a path
    frame = marker_database(Path("panglaodb"))
    assert frame.to_dict("records") == [{"cell_type": "T cells", "gene": "CD3E", "weight": 0.9}]
    assert marker_database("panglaodb", path="panglaodb").equals(frame)
    assert marker_database(Path("cellmarker"))["gene"].tolist() == ["CD19"]
    with pytest.raises(FileNotFoundError, match="path= of 'panglaodb'"):
        marker_database("panglaodb", path=tmp_path / "elsewhere.tsv.gz")
    with pytest.raises(ValueError, match="only used with a database name"):
        marker_database(Path("panglaodb"), path="panglaodb")


# --- pegasus ----------------------------------------------------------------------------------

PEGASUS = sorted(MARKERS.glob("pegasus_*_cell_markers.json")) if MARKERS.exists() else []


@pytest.mark.skipif(not PEGASUS, reason=f"pegasus marker files not found in {MARKERS}")
@pytest.mark.parametrize("path", PEGASUS, ids=lambda p: p.stem)
def test_pegasus_files(path):
    species = "mouse" if "_mouse_" in path.name else "human"
    frame = marker_database(path, species=species)
    check_tidy(frame)
    content = json.loads(path.read_text())

    def names(cell_types):
        for cell_type in cell_types:
            yield cell_type["name"]
            if "subtypes" in cell_type:
                yield from names(cell_type["subtypes"]["cell_types"])

    assert set(frame["cell_type"]) == set(names(content["cell_types"]))
    assert not frame["gene"].str.endswith(("+", "-")).any()
    assert 30 <= len(frame) <= 400
    if species == "mouse":
        assert frame["gene"].str[1:].str.islower().mean() > 0.8


@needs(MARKERS / "pegasus_human_immune_cell_markers.json")
def test_pegasus_weights_and_negative_markers():
    frame = marker_database(MARKERS / "pegasus_human_immune_cell_markers.json")
    weights = frame.set_index(["cell_type", "gene"])["weight"]
    assert weights[("T cell", "CD3D")] == 0.75
    assert weights[("T cell", "TRAC")] == 0.25
    assert weights[("CD4 Naive T cell", "CCR7")] == 1.0  # subtypes are cell types of their own
    # "CD4 CTL" lists CD4+ with CD8A-/CD8B-: the negative markers are dropped
    ctl = set(frame.loc[frame["cell_type"] == "CD4 CTL", "gene"])
    assert "CD4" in ctl
    assert not {"CD8A", "CD8B"} & ctl
    with pytest.warns(UserWarning, match="human markers"):
        marker_database(MARKERS / "pegasus_human_immune_cell_markers.json", species="mouse")


# --- in-memory sources and errors -------------------------------------------------------------


def test_mapping_and_frame_sources():
    lists = marker_database({"B": ["MS4A1", "CD79A", "MS4A1"], "T": ("CD3E",)})
    check_tidy(lists)
    assert lists.set_index(["cell_type", "gene"])["weight"].to_dict() == {
        ("B", "MS4A1"): 1.0,
        ("B", "CD79A"): 1.0,
        ("T", "CD3E"): 1.0,
    }
    weighted = marker_database({"B": {"MS4A1": 0.9, "CD79A": 0.2}}, min_weight=0.5)
    assert weighted.to_dict("records") == [{"cell_type": "B", "gene": "MS4A1", "weight": 0.9}]
    frame = pd.DataFrame(
        {"cell_type": ["B", "B", " T "], "gene": ["CD19", "CD19", "CD3E"], "weight": [0.1, 0.7, 1]}
    )
    tidy = marker_database(frame)
    assert tidy.to_dict("records") == [
        {"cell_type": "B", "gene": "CD19", "weight": 0.7},  # duplicates keep the largest weight
        {"cell_type": "T", "gene": "CD3E", "weight": 1.0},
    ]
    assert marker_database(frame[["cell_type", "gene"]])["weight"].eq(1.0).all()


def test_tidy_table_file_round_trip(tmp_path):
    frame = marker_database({"B": {"MS4A1": 0.9}, "T": {"CD3E": 0.5}})
    path = tmp_path / "markers.tsv"
    frame.to_csv(path, sep="\t", index=False)
    pd.testing.assert_frame_equal(marker_database(path), frame, check_like=True)


def test_source_errors(tmp_path):
    with pytest.raises(ValueError, match="species"):
        marker_database({"B": ["CD19"]}, species="zebrafish")
    with pytest.raises(TypeError, match="list of genes"):
        marker_database({"B": "CD19"})
    with pytest.raises(TypeError, match="source"):
        marker_database(42)
    with pytest.raises(FileNotFoundError, match="neither an existing file"):
        marker_database(tmp_path / "nothing.gmt")
    with pytest.raises(ValueError, match="No markers left"):
        marker_database({"B": {"CD19": 0.1}}, min_weight=0.5)
    with pytest.raises(ValueError, match="No markers left"):
        marker_database({"B": []})
    with pytest.raises(ValueError, match="non-negative"):
        marker_database({"B": {"CD19": -1}})
    with pytest.raises(ValueError, match="tissue"):
        marker_database({"B": ["CD19"]}, tissue="Blood")
    with pytest.raises(ValueError, match="path"):
        marker_database({"B": ["CD19"]}, path="x.tsv")
    unknown = tmp_path / "table.csv"
    unknown.write_text("a,b,c\n1,2,3\n")
    with pytest.raises(ValueError, match="Cannot tell the format"):
        marker_database(unknown)
    bad_json = tmp_path / "markers.json"
    bad_json.write_text(json.dumps({"something": []}))
    with pytest.raises(ValueError, match="pegasus"):
        marker_database(bad_json)
