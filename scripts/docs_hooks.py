"""MkDocs hooks: the CLI reference is generated from ``regiontrt.cli.build_parser()`` at build time.

``docs/cli.md`` holds the marker ``<!-- cli-reference -->``; :func:`on_page_markdown` replaces it
with one section per command (nested commands included): usage, description and a table of
arguments with their help and defaults. So the reference can never drift from the parser.

Our docstrings use Sphinx cross-reference roles (``:class:`~regiontrt.Engine```), which
mkdocstrings shows as text; :func:`on_page_content` renders them as plain code names.
"""

from __future__ import annotations

import argparse
import re
import sys
from pathlib import Path
from typing import Any

MARKER = "<!-- cli-reference -->"
ROLE = re.compile(r":(?:meth|class|func|attr|data|exc|mod|obj):<code>(~?)([^<]*)</code>")
ROOT = str(Path(__file__).resolve().parents[1])


def _cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", " ")


def _argument_rows(parser: argparse.ArgumentParser) -> list[str]:
    rows = []
    for action in parser._actions:  # argparse exposes no public list of its actions
        if isinstance(action, (argparse._HelpAction, argparse._SubParsersAction)):
            continue
        if action.option_strings:
            name = ", ".join(f"`{o}`" for o in action.option_strings)
            if action.nargs != 0:
                name += f" `{action.metavar or action.dest.upper()}`"
        else:
            name = f"`{action.metavar or action.dest}`"
        help_text = (action.help or "").replace("%(default)s", str(action.default))
        if action.choices and not isinstance(action, argparse._SubParsersAction):
            help_text += f" (one of: {', '.join(map(str, action.choices))})"
        default = action.default
        shown = "" if default in (None, False, [], argparse.SUPPRESS) else f"`{default}`"
        if action.required and action.option_strings:
            shown = "required"
        rows.append(f"| {_cell(name)} | {_cell(help_text)} | {_cell(shown)} |")
    return rows


def _sections(parser: argparse.ArgumentParser, name: str, level: int) -> list[str]:
    out = [f"{'#' * level} `{name}`", ""]
    if parser.description:
        out += [parser.description, ""]
    out += ["```text", parser.format_usage().strip(), "```", ""]
    rows = _argument_rows(parser)
    if rows:
        out += ["| argument | meaning | default |", "| --- | --- | --- |", *rows, ""]
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help for a in action._choices_actions}
            for sub_name, sub in action.choices.items():
                section = _sections(sub, f"{name} {sub_name}", min(level + 1, 4))
                if helps.get(sub_name) and not sub.description:
                    section.insert(2, f"{helps[sub_name]}\n")
                out += section
    return out


def cli_reference() -> str:
    """The Markdown reference of every ``regiontrt`` command."""
    # Document this checkout's parser, not another regiontrt the interpreter may find first (an
    # editable install's path entry sits before a folder that mkdocstrings appends).
    if sys.path[:1] != [ROOT]:
        sys.path.insert(0, ROOT)
    from regiontrt.cli import build_parser

    parser = build_parser()
    parser.prog = "regiontrt"
    return "\n".join(_sections(parser, "regiontrt", 2))


def on_page_markdown(markdown: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: expand the CLI reference marker."""
    if MARKER in markdown:
        return markdown.replace(MARKER, cli_reference())
    return markdown


def _role(match: re.Match[str]) -> str:
    tilde, name = match.groups()
    return f"<code>{name.rsplit('.', 1)[-1] if tilde else name}</code>"


def on_page_content(html: str, page: Any, config: Any, files: Any) -> str:
    """MkDocs event: ``:class:`~a.b.C``` (shown as text by mkdocstrings) becomes ``C`` in code."""
    return ROLE.sub(_role, html)
