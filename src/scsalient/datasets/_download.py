"""Pinned, checksum-verified downloads of reference files (the Cell Ontology)."""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

logger = logging.getLogger(__name__)


@dataclass(frozen=True)
class Release:
    """One fixed release file: where it is served and the SHA-256 of its bytes.

    Attributes
    ----------
    name
        What the file is, for messages.
    url
        HTTPS address of this release (a versioned address, never a "latest" one).
    fname
        Name of the file in the cache; holds the version, so releases never share a file.
    sha256
        SHA-256 of the file as served. A cached or downloaded file with another hash is
        rejected.
    """

    name: str
    url: str
    fname: str
    sha256: str


#: Every file scsalient downloads. A download is verified against its SHA-256 (a cached
#: copy on every use); files that cannot be pinned are not downloaded at all.
RELEASES: dict[str, Release] = {
    # basic edition (is_a hierarchy, no imported terms) of Cell Ontology release 2022-11-25,
    # the release asset on GitHub
    "cl-basic": Release(
        name="Cell Ontology cl-basic.obo, release 2022-11-25",
        url="https://github.com/obophenotype/cell-ontology/releases/download/v2022-11-25/cl-basic.obo",
        fname="cl-basic_2022-11-25.obo",
        sha256="2d8eabdade868831d0b4e7af008ed69a998bc1ec3f70fdf0463c7b6d8c6b7169",
    ),
}

#: downloader passed to :func:`pooch.retrieve` (``None``: pooch's HTTP downloader)
DOWNLOADER: Callable | None = None


def cache_dir() -> Path:
    """Folder of the downloaded files (the user cache folder of scsalient)."""
    import pooch

    return Path(pooch.os_cache("scsalient"))


def fetch(release: Release) -> Path:
    """Local path of ``release``: the cached copy if its hash matches, else a verified download.

    Parameters
    ----------
    release
        The release file to get.

    Returns
    -------
    Path of the verified file.

    Raises
    ------
    ValueError
        If the file served at ``release.url`` does not have the pinned SHA-256 (it is then
        neither kept nor read).
    """
    import pooch

    if not release.url.startswith("https://"):
        raise ValueError(f"Refusing to download {release.name} over an insecure address: {release.url}")
    logger.info("Getting %s from the cache or %s (SHA-256 %s).", release.name, release.url, release.sha256)
    try:
        file = pooch.retrieve(
            url=release.url,
            known_hash=f"sha256:{release.sha256}",
            fname=release.fname,
            path=cache_dir(),
            progressbar=False,
            downloader=DOWNLOADER,
        )
    except ValueError as error:
        raise ValueError(
            f"The file downloaded for {release.name} from {release.url} does not have the pinned "
            f"SHA-256 {release.sha256}, so it was not used ({error}). Download the file yourself and "
            "pass it with `path=`."
        ) from None
    return Path(file)
