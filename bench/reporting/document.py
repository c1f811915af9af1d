"""The report as data: sections of blocks, rendered both to Markdown and to self-contained HTML.

A :class:`Section` is a heading (title, level), its body :data:`Block` s and its subsections;
nothing looks at a title to decide what to draw. A :class:`Document` is a title and a list of
sections. Blocks: :class:`Paragraph` (``note`` = small print), :class:`Table` (a DataFrame, cells
as text), :class:`Image` (a PNG; in Markdown a path relative to the report folder, in HTML a
base64 ``data:`` URI, so index.html references nothing outside itself).
"""

from __future__ import annotations

import base64
import html
import re
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path

import pandas as pd

CSS = """body{font-family:system-ui,sans-serif;max-width:1150px;margin:2em auto;padding:0 1em;
color:#222}table{border-collapse:collapse;margin:.6em 0;font-size:.9em}
td,th{border:1px solid #ccc;padding:.25em .6em;text-align:right}th{background:#f0f0f0}
td:first-child,th:first-child{text-align:left}img{max-width:100%}
code{background:#f3f3f3;padding:0 .2em}.note{color:#666;font-size:.85em}"""


def _inline(text: str) -> str:
    """Escape, then `code` and **bold** spans (the only inline Markdown the report uses)."""
    text = re.sub(r"`([^`]+)`", r"<code>\1</code>", html.escape(text, quote=False))
    return re.sub(r"\*\*([^*]+)\*\*", r"<strong>\1</strong>", text)


@dataclass(frozen=True)
class Heading:
    level: int
    text: str

    def markdown(self, root: Path | None) -> str:
        return "#" * self.level + " " + self.text

    def html(self) -> str:
        return f"<h{self.level}>{_inline(self.text)}</h{self.level}>"


@dataclass(frozen=True)
class Paragraph:
    text: str
    note: bool = False  # small print (the regenerate line under a table or figure)

    def markdown(self, root: Path | None) -> str:
        return f"*{self.text}*" if self.note else self.text

    def html(self) -> str:
        return f"<p{' class=note' if self.note else ''}>{_inline(self.text)}</p>"


@dataclass(frozen=True, eq=False)
class Table:
    frame: pd.DataFrame

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
        return f"<table><thead><tr>{head}</tr></thead><tbody>{rows}</tbody></table>"


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


Block = Heading | Paragraph | Table | Image


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
        return [block for section in self.sections for block in section.flat()]

    def markdown(self) -> str:
        return "\n\n".join(block.markdown(self.root) for block in self.blocks()) + "\n"

    def html(self) -> str:
        return (
            f'<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
            f"<title>{html.escape(self.title)}</title><style>{CSS}</style></head>\n<body>\n"
            + "\n".join(block.html() for block in self.blocks())
            + "\n</body></html>\n"
        )
