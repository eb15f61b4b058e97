"""Griffe extension for the API reference: read discover's docstrings as they are written.

discover's docstrings are Google style with two habits of reStructuredText that Markdown
misreads; this extension adapts them when the reference is built (the sources are not changed):

* ``Example:`` (singular) heads a section of doctest lines. Griffe's Google parser reads only
  ``Examples:`` as examples and renders ``Example:`` as an admonition whose ``>>>`` lines
  become nested quotes (and ``x[:3]`` a broken cross-reference), so it is read as
  ``Examples:``.
* Sphinx roles (``:func:`~discover.nn.lwta.LWTA```) are shown as code (``LWTA``; with ``~``
  the last dotted part, as Sphinx does).
"""

from __future__ import annotations

import re

import griffe

_EXAMPLE = re.compile(r"^(\s*)Example:[ \t]*$", re.M)
_ROLE = re.compile(r":(?:py:)?(?:func|class|meth|mod|data|attr|exc|obj|const):`(~?)([^`]+)`")


def _role(match: re.Match) -> str:
    target = match.group(2)
    return f"`{target.rsplit('.', 1)[-1] if match.group(1) else target}`"


class ReadDocstrings(griffe.Extension):
    def on_instance(self, *, obj, **kwargs) -> None:
        if obj.docstring is not None:
            text = _EXAMPLE.sub(r"\1Examples:", obj.docstring.value)
            obj.docstring.value = _ROLE.sub(_role, text)
