"""The report as data: sections of blocks, rendered both to Markdown and to self-contained HTML.

A :class:`Section` is a heading (title, level), its body :data:`Block` s and its subsections;
nothing looks at a title to decide what to draw. A :class:`Document` is a title and a list of
sections. Blocks: :class:`Paragraph` (``note`` = small print), :class:`Bullets` (a list),
:class:`Table` (a DataFrame, cells as text), :class:`Image` (a PNG; in Markdown a path relative
to the report folder, in HTML a base64 ``data:`` URI, so index.html references nothing outside
itself).

Every heading gets an anchor (:func:`slug`, GitHub's rule, so that the links work in the
rendered report.md as in index.html, where it is the heading's ``id``); the document's
:class:`Contents` (after the first section) links to every heading of levels 2 and 3.
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import pandas as pd

CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.6em 0;font-size:.9em;display:block;
overflow-x:auto;max-width:100%}table.nowrap td{white-space:nowrap}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}.note{color:#666;font-size:.85em}"""


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** spans (the only inline Markdown the report uses)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


def slug(text: str) -> str:
    """A heading's anchor as GitHub makes it: lower case, only letters, digits, ``_``, ``-``
    and spaces kept, spaces → ``-`` (a repeated one gets ``-1``, ``-2``: :func:`anchored`)."""
    return re.sub(r"[^\w\- ]", "", text.strip().lower()).replace(" ", "-")


@dataclass(frozen=True)
class Heading:
    level: int
    text: str
    anchor: str = ""  # set by Document (unique in it)

    def markdown(self, root: Path | None) -> str:
        return "#" * self.level + " " + self.text

    def html(self) -> str:
        anchor = f' id="{html.escape(self.anchor)}"' if self.anchor else ""
        return f"<h{self.level}{anchor}>{_inline(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Contents:
    """Links to ``headings`` (levels 2 and 3: a nested list)."""

    headings: tuple[Heading, ...] = ()

    def markdown(self, root: Path | None) -> str:
        return "\n".join("  " * (h.level - 2) + f"- [{h.text}](#{h.anchor})" for h in self.headings)

    def html(self) -> str:
        """A list of the level-2 headings, each with a list of its level-3 ones."""
        parts: list[str] = []
        nested = False
        for heading in self.headings:
            link = f'<a href="#{html.escape(heading.anchor)}">{_inline(heading.text)}</a>'
            if heading.level == 2:
                parts += ["</ul>"] * nested + ["</li>"] * bool(parts) + [f"<li>{link}"]
                nested = False
            else:  # a level-3 heading: in the list of the level-2 one before it
                parts += ["<li>"] * (not parts) + ["<ul>"] * (not nested) + [f"<li>{link}</li>"]
                nested = True
        parts += ["</ul>"] * nested + ["</li>"] * bool(parts)
        return f"<nav><ul>{''.join(parts)}</ul></nav>"


@dataclass(frozen=True)
class Paragraph:
    text: str
    note: bool = False  # small print (the regenerate line under a table or figure)

    def markdown(self, root: Path | None) -> str:
        return f"*{self.text}*" if self.note else self.text

    def html(self) -> str:
        return f"<p{' class=note' if self.note else ''}>{_inline(self.text)}</p>"


@dataclass(frozen=True)
class Bullets:
    """A list of items (each a line of inline Markdown)."""

    items: tuple[str, ...]

    def markdown(self, root: Path | None) -> str:
        return "\n".join(f"- {item}" for item in self.items)

    def html(self) -> str:
        return "<ul>" + "".join(f"<li>{_inline(item)}</li>" for item in self.items) + "</ul>"


@dataclass(frozen=True, eq=False)
class Table:
    """A DataFrame; in HTML its cells are kept on one line ('0.19 ± 0.01' unbroken) unless
    ``wrap`` (prose cells), and a table wider than the page scrolls by itself."""

    frame: pd.DataFrame
    wrap: bool = False

    def markdown(self, root: Path | None) -> str:
        frame = self.frame.astype(str).map(lambda cell: cell.replace("|", "\\|"))
        rows = [list(frame.columns), ["---"] * frame.shape[1], *frame.to_numpy().tolist()]
        return "\n".join("| " + " | ".join(row) + " |" for row in rows)

    def html(self) -> str:
        head = "".join(f"<th>{_inline(str(c))}</th>" for c in self.frame.columns)
        rows = "".join(
            "<tr>" + "".join(f"<td>{_inline(str(c))}</td>" for c in row) + "</tr>"
            for row in self.frame.to_numpy().tolist()
        )
        kind = "" if self.wrap else " class=nowrap"
        return f"<table{kind}><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


@dataclass(frozen=True)
class Image:
    path: Path
    alt: str

    def markdown(self, root: Path | None) -> str:
        relative = self.path.relative_to(root) if root is not None else self.path.name
        return f"![{self.alt}]({Path(relative).as_posix()})"

    def html(self) -> str:
        data = base64.b64encode(self.path.read_bytes()).decode("ascii")
        alt = html.escape(self.alt)
        return f'<figure><img src="data:image/png;base64,{data}" alt="{alt}"></figure>'


Block = Heading | Paragraph | Bullets | Table | Image | Contents
CONTENTS = "Contents"


def anchored(blocks: Sequence[Block]) -> list[Block]:
    """``blocks`` with every heading's anchor set: its :func:`slug`, ``-1``, ``-2``, … appended
    to a repeated one (GitHub's rule)."""
    seen: dict[str, int] = {}
    out: list[Block] = []
    for block in blocks:
        if isinstance(block, Heading):
            base = slug(block.text)
            count = seen.get(base, 0)
            seen[base] = count + 1
            block = replace(block, anchor=base if count == 0 else f"{base}-{count}")
        out.append(block)
    return out


@dataclass(frozen=True)
class Section:
    """A heading, the blocks under it and its subsections (one level deeper)."""

    title: str
    blocks: tuple[Block, ...] = ()
    subsections: tuple[Section, ...] = ()
    level: int = 2

    def flat(self) -> Iterator[Block]:
        """The heading, the body, then each subsection's blocks, in reading order."""
        yield Heading(self.level, self.title)
        yield from self.blocks
        for subsection in self.subsections:
            yield from subsection.flat()


@dataclass(frozen=True)
class Document:
    """The report: a title (the HTML page's) and its sections; ``root`` = the report folder."""

    title: str
    sections: Sequence[Section]
    root: Path | None = None  # figure paths in Markdown are relative to it

    def blocks(self) -> list[Block]:
        """Every block in reading order, the contents after the first section's body."""
        blocks = [block for section in self.sections for block in section.flat()]
        second = next(
            (i for i, b in enumerate(blocks) if i and isinstance(b, Heading) and b.level <= 2),
            len(blocks),
        )
        blocks[second:second] = [Heading(2, CONTENTS), Contents()]
        blocks = anchored(blocks)
        listed = tuple(
            b for b in blocks if isinstance(b, Heading) and 2 <= b.level <= 3 and b.text != CONTENTS
        )
        return [Contents(listed) if isinstance(b, Contents) else b for b in blocks]

    def markdown(self) -> str:
        return "\n\n".join(block.markdown(self.root) for block in self.blocks()) + "\n"

    def html(self) -> str:
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(block.html() for block in self.blocks())
            + "\n</body></html>\n"
        )
