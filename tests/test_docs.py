"""Consistency between the code and its documentation.

These checks read the sources of the documentation; they do not build it (``make docs``
does, with warnings as errors).
"""

from __future__ import annotations

import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

import scsalient
from scsalient import _constants

DOCS = Path(__file__).resolve().parents[1] / "docs"
NAMESPACES = ("model", "pp", "tl", "pl", "datasets", "metrics")

_SECTION_UNDERLINE = re.compile(r"^-{3,}\s*$")


# --------------------------------------------------------------------------------------------
# helpers


def _key_constants() -> dict[str, str]:
    """``Class.NAME -> value`` for every public ``Final`` string in ``scsalient._constants``."""
    keys = {}
    for class_name, cls in vars(_constants).items():
        if not inspect.isclass(cls) or cls.__module__ != _constants.__name__:
            continue
        for name, annotation in vars(cls).get("__annotations__", {}).items():
            is_final = annotation == "Final" or str(annotation).startswith(("Final", "typing.Final"))
            if name.startswith("_") or not is_final:
                continue
            value = getattr(cls, name)
            assert isinstance(value, str), f"{class_name}.{name} is not a string: {value!r}"
            keys[f"{class_name}.{name}"] = value
    return keys


def _api_entries() -> list[str]:
    """Fully qualified names listed in the autosummary blocks of ``docs/api.md``."""
    entries, current_module, in_autosummary = [], None, False
    for line in (DOCS / "api.md").read_text().splitlines():
        if m := re.match(r"\.\. currentmodule:: (\S+)", line.strip()):
            current_module = m[1]
        if line.strip().startswith(".. autosummary::"):
            in_autosummary = True
            continue
        if in_autosummary:
            stripped = line.strip()
            if not stripped or stripped.startswith(":"):
                continue
            if not line.startswith((" ", "\t")) or stripped.startswith(("..", "```")):
                in_autosummary = False
                continue
            name = stripped.lstrip("~")
            entries.append(name if current_module is None else f"{current_module}.{name}")
    return entries


def _resolve(qualified_name: str) -> Any:
    parts = qualified_name.split(".")
    for split in range(len(parts), 0, -1):
        try:
            obj = importlib.import_module(".".join(parts[:split]))
        except ImportError:
            continue
        for attribute in parts[split:]:
            obj = getattr(obj, attribute)
        return obj
    raise ImportError(qualified_name)


def _namespace_objects() -> dict[str, Any]:
    """Every public function and class exported by the user-facing namespaces."""
    objects = {}
    for namespace in NAMESPACES:
        module = getattr(scsalient, namespace)
        for name in module.__all__:
            obj = getattr(module, name)
            if inspect.isfunction(obj) or inspect.isclass(obj):
                objects[f"scsalient.{namespace}.{name}"] = obj
    return objects


def _defined_in_scsalient(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or ""
    return module == "scsalient" or module.startswith("scsalient.")


def _public_members(cls: type) -> dict[str, Any]:
    """Public methods and properties of ``cls`` whose code comes from scsalient (as documented)."""
    members = {}
    for name in dir(cls):
        if name.startswith("_"):
            continue
        raw = inspect.getattr_static(cls, name)
        function = raw.fget if isinstance(raw, property) else getattr(raw, "__func__", raw)
        if callable(function) and _defined_in_scsalient(function):
            members[name] = raw.fget if isinstance(raw, property) else getattr(cls, name)
    return members


def _documented_objects() -> dict[str, Any]:
    """Objects of the API reference: its autosummary entries and the methods of its classes."""
    objects = {}
    for qualified_name in _api_entries():
        obj = _resolve(qualified_name)
        objects[qualified_name] = obj
        if inspect.isclass(obj):
            for name, member in _public_members(obj).items():
                objects[f"{qualified_name}.{name}"] = member
    return objects


def _docstring_parameters(doc: str) -> list[str] | None:
    """Names in the numpydoc "Parameters" section of ``doc`` (``None`` if it has none)."""
    lines = inspect.cleandoc(doc).splitlines()
    for i in range(len(lines) - 1):
        if lines[i].strip() == "Parameters" and _SECTION_UNDERLINE.match(lines[i + 1]):
            break
    else:
        return None
    names = []
    for j in range(i + 2, len(lines)):
        line = lines[j]
        if j + 1 < len(lines) and line.strip() and _SECTION_UNDERLINE.match(lines[j + 1]):
            break  # next section
        if not line.strip() or line.startswith((" ", "\t")):
            continue  # description
        entry = line.split(" : ")[0]
        names.extend(name.strip() for name in entry.split(","))
    return names


def _signature_parameters(obj: Any) -> list[str]:
    names = []
    for index, parameter in enumerate(inspect.signature(obj).parameters.values()):
        if index == 0 and parameter.name in ("self", "cls") and not inspect.isclass(obj):
            continue
        if parameter.kind is inspect.Parameter.VAR_POSITIONAL:
            names.append(f"*{parameter.name}")
        elif parameter.kind is inspect.Parameter.VAR_KEYWORD:
            names.append(f"**{parameter.name}")
        else:
            names.append(parameter.name)
    return names


# --------------------------------------------------------------------------------------------
# tests


def test_every_key_is_documented():
    keys = _key_constants()
    assert len(keys) >= 10, f"found only {len(keys)} key constants: {keys}"
    table_keys = set(re.findall(r"^\|\s*`([^`]+)`\s*\|", (DOCS / "stored_results.md").read_text(), re.M))
    missing = {name: value for name, value in keys.items() if value not in table_keys}
    assert not missing, f"keys missing from the table in docs/stored_results.md: {missing}"


def test_every_public_object_is_in_the_api_reference():
    documented = set(_api_entries())
    missing = sorted(set(_namespace_objects()) - documented)
    assert not missing, f"public objects missing from docs/api.md: {missing}"


def test_api_reference_entries_exist():
    broken = []
    for qualified_name in _api_entries():
        try:
            _resolve(qualified_name)
        except (ImportError, AttributeError):
            broken.append(qualified_name)
    assert not broken, f"docs/api.md lists objects that do not exist: {broken}"


def test_docstrings_have_no_unrendered_placeholders():
    objects = {**_namespace_objects(), **_documented_objects()}
    unrendered = sorted(name for name, obj in objects.items() if "%(" in (obj.__doc__ or ""))
    assert not unrendered, f"docstrings with unrendered %(...)s placeholders: {unrendered}"


def _callables_with_parameters() -> dict[str, Any]:
    objects = {**_namespace_objects(), **_documented_objects()}
    return {name: obj for name, obj in objects.items() if not isinstance(obj, property) and callable(obj)}


@pytest.mark.parametrize("name", sorted(_callables_with_parameters()))
def test_docstring_parameters_match_signature(name):
    obj = _callables_with_parameters()[name]
    expected = _signature_parameters(obj)
    documented = _docstring_parameters(obj.__doc__ or "")
    if documented is None:
        assert not expected, f"{name} has parameters {expected} but no Parameters section"
        return
    missing = [p for p in expected if p not in documented]
    extra = [p for p in documented if p not in expected]
    assert not missing, f"{name}: parameters missing from the docstring: {missing}"
    assert not extra, f"{name}: documented parameters not in the signature: {extra}"
    assert documented == expected, f"{name}: documented in the order {documented}, signature {expected}"


def test_landing_figure_is_made_by_the_code_shown():
    """The landing page and the README show the code that made their figure, and that figure."""
    script = (DOCS / "landing_example.py").read_text()
    saved = re.search(r'plt\.savefig\("docs/(_static/[^"]+\.png)"', script)
    assert saved, "docs/landing_example.py must save its figure under docs/_static/"
    assert (DOCS / saved[1]).is_file(), f"run `python docs/landing_example.py` to make {saved[1]}"

    index = (DOCS / "index.md").read_text()
    assert re.search(r"```\{literalinclude\} landing_example\.py\n", index)
    assert f"]({saved[1]})" in index

    readme = (DOCS.parent / "README.md").read_text()
    blocks = re.findall(r"```python\n(.*?)```", readme, flags=re.DOTALL)
    assert script in blocks, "the README's example must be docs/landing_example.py, unchanged"
    assert f"](docs/{saved[1]})" in readme
    setup = re.findall(r"```bash\n(.*?)```", readme, flags=re.DOTALL)
    commands = [line.split("#")[0].strip() for block in setup for line in block.splitlines()]
    assert [c for c in commands if c] == ["make demo", "make test"]
