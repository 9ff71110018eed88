"""A griffe extension for the API reference: the project's plain-prose docstrings read as Markdown.

The docstrings are written as plain text (`docstring_style: null` in mkdocs.yml), laid out for a terminal:
a field list `name: text` one field per line, a table or formula indented under a line ending with ":",
hanging indents for continued fields, lists right under a sentence. Markdown would run all of that into one
paragraph, so each docstring is rewritten before rendering, without changing a word:

- a block indented 4 or more columns under a line that ends with ":" (or under a blank line) becomes a code
  block (a blank line is put before and after it), keeping its alignment;
- a line at the paragraph's own indentation that starts a field (`name: text`) or follows a hanging indent
  starts a new line (a Markdown hard break at the end of the line before it);
- a list item right under a sentence gets the blank line Markdown needs before a list;
- any other indented line continues its field or list item (Markdown joins it to the line above).

Loaded by mkdocstrings (mkdocs.yml: `extensions: [docs/griffe_plain_docstrings.py:PlainDocstrings]`) and
left out of the site (`exclude_docs`). Tested by tests/test_docs.py.
"""

from __future__ import annotations

import re
from typing import Any

import griffe

# `name: text` at the start of a line: a word, dotted name, code span or short phrase, then ": " and text
FIELD = re.compile(r"^(?:`[^`]+`|[A-Za-z_*][\w.*/\[\], '\"=()-]{0,40}?):\s+\S")
LIST_ITEM = re.compile(r"^(?:[-*+]|\d+[.)])\s+\S")


def _indent(line: str) -> int:
    return len(line) - len(line.lstrip(" "))


def to_markdown(text: str) -> str:
    """A plain-text docstring -> the same words as Markdown with its line structure kept (module docstring)."""
    out: list[str] = []
    code_indent: int | None = None  # indentation of the code block being copied, None outside one
    para_indent = 0  # indentation of the paragraph's first line
    prev = ""  # the previous line of the source ("" when blank)
    for line in text.splitlines():
        indent = _indent(line)
        if not line.strip():
            out.append("")
            prev = ""
            continue
        if code_indent is not None:
            if indent >= code_indent:
                out.append("    " + line[code_indent:])
                prev = line
                continue
            if out[-1]:
                out.append("")  # the block ends: what follows is prose again
            code_indent, prev = None, ""
        if prev and indent >= para_indent + 4 and prev.rstrip().endswith(":"):
            out.append("")
            code_indent = indent
            out.append("    " + line[indent:])
            prev = line
            continue
        if not prev:  # a new paragraph; an indented first line is already a Markdown code block
            if indent >= 4 and (not out or out[-1] == ""):
                code_indent = indent
                out.append("    " + line[indent:])
                prev = line
                continue
            para_indent = indent
        elif indent == para_indent:
            stripped = line.strip()
            if LIST_ITEM.match(stripped) and not LIST_ITEM.match(prev.strip()) and _indent(prev) == para_indent:
                out.append("")
            elif (FIELD.match(stripped) and not LIST_ITEM.match(stripped)) or _indent(prev) > para_indent:
                out[-1] = out[-1].rstrip() + "  "  # a hard break: a field, or the line after a hanging indent
        out.append(line)
        prev = line
    return "\n".join(out)


class PlainDocstrings(griffe.Extension):
    """Rewrites every docstring with `to_markdown` once griffe has loaded it."""

    def on_instance(self, *, obj: griffe.Object, **kwargs: Any) -> None:
        if obj.docstring is not None:
            obj.docstring.value = to_markdown(obj.docstring.value)
