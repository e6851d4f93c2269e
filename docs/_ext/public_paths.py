"""Refer to classes by the public paths under which their projects document them.

Type hints and base classes carry the module where a class is defined, often a private one
(``anndata._core.anndata.AnnData``, ``scvi.train._trainingplans.TrainingPlan``,
``scsalient.model.base._classifier.ClassifierMixin``). Cross-references to those paths do not
resolve, because the documentation (ours and other projects', through intersphinx) lists the
classes under their public paths (``anndata.AnnData``, ``scvi.train.TrainingPlan``,
``scsalient.model.base.ClassifierMixin``).
"""

from __future__ import annotations

from typing import Any

#: modules whose public path is not found by dropping private components
_OVERRIDES = {
    "pandas.core": "pandas",
    "scsalient.model.nact": "scsalient.model",
}


def public_module(module: str) -> str:
    """Public module path for the private module ``module`` (cut at its first private part)."""
    parts = module.split(".")
    for i, part in enumerate(parts):
        if part.startswith("_"):
            parts = parts[:i]
            break
    public = ".".join(parts)
    for prefix, replacement in _OVERRIDES.items():
        if public == prefix or public.startswith(prefix + "."):
            return replacement
    return public


class PublicModule:
    """:func:`public_module` as a picklable config value (``typehints_fixup_module_name``).

    Sphinx caches config values with the environment and cannot cache plain functions.
    """

    def __call__(self, module: str) -> str:
        return public_module(module)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PublicModule)

    def __hash__(self) -> int:
        return hash(PublicModule)

    def __repr__(self) -> str:
        return f"{PublicModule.__name__}()"


def public_bases(app, name: str, obj: Any, options, bases: list) -> None:
    """Show the bases of a documented class under their public paths."""
    for i, base in enumerate(bases):
        module = getattr(base, "__module__", None)
        qualname = getattr(base, "__qualname__", None)
        if isinstance(base, type) and module and qualname and module != "builtins":
            bases[i] = f":py:class:`~{public_module(module)}.{qualname}`"


def setup(app):
    """Register the base-class rewriting (type hints use ``typehints_fixup_module_name``)."""
    app.connect("autodoc-process-bases", public_bases)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
