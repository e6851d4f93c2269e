"""Pinned downloads, tested offline: the served file is a local copy handed to pooch."""

from __future__ import annotations

import hashlib
import re
import shutil
from pathlib import Path

import pytest

import scsalient as ss
from scsalient.datasets import _download, marker_database
from scsalient.datasets._download import RELEASES, Release

DATA = Path(__file__).resolve().parents[2].parent / "shared" / "data"
CL_BASIC = DATA / "ontology" / "cl-basic.obo"
PANGLAO = DATA / "markers" / "PanglaoDB_markers_27_Mar_2020.tsv.gz"


def needs(path: Path):
    return pytest.mark.skipif(not path.exists(), reason=f"shared file {path} not found")


def sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


class Server:
    """Stands in for the web: serves a local file to pooch and counts the requests."""

    def __init__(self, file: Path) -> None:
        self.file = file
        self.urls: list[str] = []

    def __call__(self, url, output_file, pooch, check_only=False):
        self.urls.append(url)
        shutil.copyfile(self.file, output_file)


@pytest.fixture
def cache(monkeypatch, tmp_path) -> Path:
    folder = tmp_path / "cache"
    monkeypatch.setattr(_download, "cache_dir", lambda: folder)
    return folder


def serve(monkeypatch, file: Path) -> Server:
    server = Server(file)
    monkeypatch.setattr(_download, "DOWNLOADER", server)
    return server


def test_every_release_is_pinned_https():
    assert RELEASES
    for key, release in RELEASES.items():
        assert release.url.startswith("https://"), key
        assert re.fullmatch(r"[0-9a-f]{64}", release.sha256), key
    assert len({release.fname for release in RELEASES.values()}) == len(RELEASES)
    # the Cell Ontology is a versioned release asset, not the moving "latest" address
    assert "/releases/download/v2022-11-25/" in RELEASES["cl-basic"].url


def test_insecure_address_is_refused(cache, monkeypatch, tmp_path):
    file = tmp_path / "x.txt"
    file.write_text("x")
    server = serve(monkeypatch, file)
    release = Release(name="x", url="http://example.org/x.txt", fname="x.txt", sha256=sha256(file))
    with pytest.raises(ValueError, match="insecure"):
        _download.fetch(release)
    assert server.urls == []


@needs(CL_BASIC)
def test_cell_ontology_pin_is_the_shared_release_file():
    assert sha256(CL_BASIC) == RELEASES["cl-basic"].sha256
    assert "data-version: cl/releases/2022-11-25/" in CL_BASIC.read_text()[:200]


@needs(CL_BASIC)
def test_cell_ontology_downloads_once_and_verifies(cache, monkeypatch):
    server = serve(monkeypatch, CL_BASIC)
    onto = ss.datasets.cell_ontology()
    assert onto["CL:0000236"].name == "B cell"
    assert server.urls == [RELEASES["cl-basic"].url]
    cached = cache / RELEASES["cl-basic"].fname
    assert sha256(cached) == RELEASES["cl-basic"].sha256
    ss.datasets.cell_ontology()  # from the cache
    assert len(server.urls) == 1


@needs(CL_BASIC)
def test_wrong_content_is_rejected_by_the_hash(cache, monkeypatch, tmp_path):
    tampered = tmp_path / "tampered.obo"
    tampered.write_text(CL_BASIC.read_text().replace("name: B cell\n", "name: evil cell\n", 1))
    server = serve(monkeypatch, tampered)
    with pytest.raises(ValueError, match="does not have the pinned SHA-256"):
        ss.datasets.cell_ontology()
    assert server.urls == [RELEASES["cl-basic"].url]
    assert not (cache / RELEASES["cl-basic"].fname).exists()  # not kept either

    # a tampered copy in the cache is not read: it is replaced by a verified download
    cache.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(tampered, cache / RELEASES["cl-basic"].fname)
    with pytest.raises(ValueError, match="does not have the pinned SHA-256"):
        ss.datasets.cell_ontology()
    serve(monkeypatch, CL_BASIC)
    assert ss.datasets.cell_ontology()["CL:0000236"].name == "B cell"
    assert sha256(cache / RELEASES["cl-basic"].fname) == RELEASES["cl-basic"].sha256


@needs(PANGLAO)
def test_a_pinned_marker_database_is_downloaded_and_verified(cache, monkeypatch, tmp_path):
    """The code path a pinned PanglaoDB release would take (none is pinned: see marker_database)."""
    assert "panglaodb" not in RELEASES
    release = Release(
        name="PanglaoDB markers (test pin)",
        url="https://example.org/PanglaoDB_markers_27_Mar_2020.tsv.gz",
        fname="PanglaoDB_markers_27_Mar_2020.tsv.gz",
        sha256=sha256(PANGLAO),
    )
    monkeypatch.setitem(RELEASES, "panglaodb", release)
    server = serve(monkeypatch, PANGLAO)
    downloaded = marker_database("panglaodb", species="human")
    assert server.urls == [release.url]
    assert downloaded.equals(marker_database(PANGLAO, species="human"))
    assert downloaded.attrs["source"] == "PanglaoDB (PanglaoDB_markers_27_Mar_2020.tsv.gz)"

    shutil.copyfile(DATA / "markers" / "CellMarker2_Human_Aug.csv", cache / release.fname)
    serve(monkeypatch, cache / release.fname)  # the server now hands out another file
    with pytest.raises(ValueError, match="does not have the pinned SHA-256"):
        marker_database("panglaodb")
