"""Small helpers shared by ``tl`` and ``pl``."""

from __future__ import annotations

from collections.abc import Sequence


def select_groups(groups: str | Sequence[str] | None, available: list[str], key: str) -> list[str]:
    """The requested groups (all when ``None``), checked against those stored under ``uns[key]``."""
    if groups is None:
        return available
    groups = [str(group) for group in ([groups] if isinstance(groups, str) else groups)]
    missing = [group for group in groups if group not in available]
    if missing:
        raise KeyError(f"Groups {missing} are not in adata.uns[{key!r}] (available: {available}).")
    return groups
