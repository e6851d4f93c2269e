"""Render numpydoc "Returns" sections written in prose.

scsalient docstrings describe return values in sentences (types come from the signature),
as the scverse template recommends. Napoleon would read every unindented line of such a
section as a separate ``type`` entry and split the sentences into a bullet list. Here the
section is kept as one block of reStructuredText under ``:returns:``; a line of the form
``name : type`` is still shown as a name with its type.
"""

from __future__ import annotations

import re

from sphinx.ext.napoleon.docstring import NumpyDocstring

_NAME_TYPE = re.compile(r"(?P<name>\w+)\s+:\s+(?P<type>[\w.]+)")


def _returns_as_block(self: NumpyDocstring, section: str) -> list[str]:
    lines = self._dedent(self._consume_to_next_section())
    if lines and lines[0] == ":":  # marker put there by sphinx-autodoc-typehints for napoleon
        del lines[0]
    while lines and not lines[-1].strip():
        lines.pop()
    if not lines:
        return []
    lines = [
        f"**{m['name']}** (:class:`~{m['type']}`)" if (m := _NAME_TYPE.fullmatch(line)) else line
        for line in lines
    ]
    # the body starts on its own line, so it may open with a definition list (``name`` + indented text)
    return [":returns:", *(f"   {line}" if line else "" for line in lines), ""]


def setup(app):
    """Replace napoleon's numpy "Returns" parser."""
    NumpyDocstring._parse_returns_section = _returns_as_block
    return {"parallel_read_safe": True, "parallel_write_safe": True}
