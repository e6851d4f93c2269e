"""Document only the class members that scsalient itself defines.

scsalient's classes build on scvi-tools, Lightning and PyTorch classes that bring hundreds of
inherited members, documented (in their own docstring styles) by those projects. The class
pages list the members defined in scsalient, including those inherited from other scsalient
classes; the bases are linked from each page.
"""

from __future__ import annotations

import functools
from typing import Any

PACKAGE = "scsalient"
_MEMBER_TYPES = {"method", "attribute", "property", "class"}


def _defining_module(obj: Any) -> str | None:
    """Module whose code defines ``obj`` (a method, property or nested class), if any."""
    if isinstance(obj, property):
        obj = obj.fget
    elif isinstance(obj, functools.cached_property):
        obj = obj.func
    obj = getattr(obj, "__func__", obj)  # classmethod, staticmethod, bound method
    if not callable(obj):
        return None  # plain data: a class constant, an instance attribute
    module = getattr(obj, "__module__", None)
    return module if isinstance(module, str) else None


def skip_foreign_member(app, what: str, name: str, obj: Any, skip: bool, options) -> bool | None:
    """Skip class members whose code does not come from scsalient."""
    if what not in _MEMBER_TYPES or skip:
        return None
    module = _defining_module(obj)
    if module is None or not (module == PACKAGE or module.startswith(PACKAGE + ".")):
        return True
    return None


def setup(app):
    """Register the filter."""
    app.connect("autodoc-skip-member", skip_foreign_member)
    return {"parallel_read_safe": True, "parallel_write_safe": True}
