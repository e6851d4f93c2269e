"""Ontology-aware F1 on a tiny hand-written ontology and on the real Cell Ontology."""

from __future__ import annotations

import numpy as np
import pytest
from sklearn.metrics import f1_score

import scsalient as ss
from scsalient.metrics import ontology_f1, ontology_f1_report

#   CL:1 cell
#   ├── CL:2 lymphocyte
#   │   ├── CL:3 T cell
#   │   │   └── CL:4 CD4 T cell
#   │   └── CL:5 B cell
#   └── CL:6 monocyte
TINY_OBO = """format-version: 1.2
ontology: tiny

[Term]
id: CL:1
name: cell

[Term]
id: CL:2
name: lymphocyte
is_a: CL:1

[Term]
id: CL:3
name: T cell
is_a: CL:2

[Term]
id: CL:4
name: CD4 T cell
is_a: CL:3

[Term]
id: CL:5
name: B cell
is_a: CL:2

[Term]
id: CL:6
name: monocyte
is_a: CL:1
"""


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    path = tmp_path_factory.mktemp("onto") / "tiny.obo"
    path.write_text(TINY_OBO)
    return ss.datasets.cell_ontology(path)


@pytest.mark.parametrize(
    ("truth", "prediction", "expected"),
    [
        ("T cell", "T cell", 1.0),  # exact
        ("T cell", "CD4 T cell", 1.0),  # child: more precise than the label, correct
        ("T cell", "lymphocyte", 0.0),  # parent: too coarse, wrong
        ("T cell", "B cell", 0.0),  # sibling: wrong
        ("lymphocyte", "CD4 T cell", 1.0),  # grandchild: correct
        ("CD4 T cell", "cell", 0.0),  # root: wrong
    ],
)
def test_single_cell_cases(tiny, truth, prediction, expected):
    assert ontology_f1([truth], [prediction], tiny, average="micro") == expected


def test_ids_and_names_mix_and_macro_average(tiny):
    ids_true = ["CL:3", "CL:3", "CL:5", "CL:6", "CL:6"]
    ids_pred = ["CL:4", "CL:2", "CL:5", "CL:6", "CL:3"]
    corrected = ["CL:3", "CL:2", "CL:5", "CL:6", "CL:3"]  # only the child prediction changes
    expected = f1_score(ids_true, corrected, average="macro", zero_division=0)
    assert ontology_f1(ids_true, ids_pred, tiny) == pytest.approx(expected)
    # plain F1 counts the child prediction as an error
    assert expected > f1_score(ids_true, ids_pred, average="macro")
    # the same labels spelled as a mix of IDs and names (case-insensitive) are the same classes
    mixed_true = ["CL:3", "T cell", "b cell", "monocyte", "CL:6"]
    mixed_pred = ["CD4 T cell", "CL:2", "B cell", "CL:6", "T cell"]
    assert ontology_f1(mixed_true, mixed_pred, tiny) == pytest.approx(expected)


def test_report(tiny):
    y_true = ["T cell", "T cell", "T cell", "B cell"]
    y_pred = ["CD4 T cell", "T cell", "lymphocyte", "B cell"]
    report = ontology_f1_report(y_true, y_pred, tiny)
    assert report.loc["T cell", "support"] == 3
    assert report.loc["T cell", "recall"] == pytest.approx(2 / 3)
    assert report.loc["T cell", "precision"] == 1.0
    assert report.loc["T cell", "n_subtype_predictions"] == 1
    assert report.loc["lymphocyte", "support"] == 0 and report.loc["lymphocyte", "f1"] == 0
    assert report.loc["B cell", "f1"] == 1.0
    assert np.isclose(report["f1"].mean(), ontology_f1(y_true, y_pred, tiny))


def test_bad_inputs(tiny, tmp_path):
    with pytest.raises(ValueError, match="neither IDs nor names.*'NK cell'"):
        ontology_f1(["T cell"], ["NK cell"], tiny)
    with pytest.raises(ValueError, match="true label.*CL:999"):
        ontology_f1(["CL:999"], ["T cell"], tiny)
    with pytest.raises(ValueError, match="equal length"):
        ontology_f1(["T cell", "B cell"], ["T cell"], tiny)
    with pytest.raises(ValueError, match="average"):
        ontology_f1(["T cell"], ["T cell"], tiny, average="binary")
    with pytest.raises(FileNotFoundError):
        ss.datasets.cell_ontology(tmp_path / "missing.obo")


@pytest.mark.realdata
def test_real_cell_ontology(shared_data):
    onto = ss.datasets.cell_ontology(shared_data / "ontology" / "cl-basic.obo")
    assert onto["CL:0000236"].name == "B cell"
    y_true = ["T cell", "T cell", "B cell", "CL:0000576"]  # CL:0000576 monocyte
    y_pred = ["CD4-positive, alpha-beta T cell", "lymphocyte", "B cell", "classical monocyte"]
    report = ontology_f1_report(y_true, y_pred, onto)
    assert report.loc["T cell", "recall"] == 0.5  # the subtype counts, the supertype does not
    assert report.loc["CL:0000576", "f1"] == 1.0  # classical monocyte is_a monocyte
    assert ontology_f1(y_true, y_pred, onto, average="micro") == pytest.approx(0.75)
