"""``--help`` of the command-line tools (``l2s-bids``, ``l2s-train``, ``l2s-demo``): every option
shows its default, the description and epilog keep their line breaks, and reST markup taken from
docstrings (``x``, :func:`x`) is printed as plain text.

Example
-------
>>> import argparse
>>> p = argparse.ArgumentParser(prog="x", description="``x`` does it", formatter_class=HelpFormatter)
>>> _ = p.add_argument("--n", type=int, default=3, help="how many")
>>> "(default: 3)" in p.format_help() and "``" not in p.format_help()
True
"""

from __future__ import annotations

import argparse
import re

_ROLE = re.compile(r":[a-z]+:`~?([^`<]+?)(?:\s*<[^>]*>)?`")


def plain(text: str) -> str:
    """reST inline markup -> plain text: ``:func:`~a.b.c``` -> ``c``, double backticks dropped."""
    text = _ROLE.sub(lambda m: m.group(1).strip().rsplit(".", 1)[-1], text)
    return text.replace("``", "").replace("`", "")


def _default_text(action: argparse.Action) -> str:
    default = action.default
    if isinstance(action, (argparse._StoreTrueAction, argparse._CountAction)) or default is False:
        return "off" if not default else str(default)
    if default is None or default == [] or default == ():
        return "none"
    if isinstance(default, (list, tuple)):
        return " ".join(map(str, default))
    return str(default)


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """Keeps description/epilog line breaks, appends ``(default: ...)`` to every option's help
    that does not already say its default, and prints reST markup as plain text."""

    def _get_help_string(self, action):
        text = action.help or ""
        if (action.option_strings and action.default is not argparse.SUPPRESS and not action.required
                and "default" not in text.lower() and not isinstance(action, argparse._VersionAction)):
            text = f"{text} (default: {_default_text(action).replace('%', '%%')})".strip()
        return text

    def _expand_help(self, action):
        return plain(super()._expand_help(action))

    def _fill_text(self, text, width, indent):
        return super()._fill_text(plain(text), width, indent)
