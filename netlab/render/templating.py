"""The Jinja2 environment: where the templates are and how they render.

Templates live in the top-level `templates/` of a source checkout and are
installed as the package `netlab.templates`; both places are looked up, the
installed one first. StrictUndefined turns a missing value into an error.
"""

from __future__ import annotations

import functools
import ipaddress
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent.parent  # netlab/


def templates_dir() -> Path:
    for candidate in (_PACKAGE / "templates", _PACKAGE.parent / "templates"):
        if (candidate / "macros.j2").is_file():
            return candidate
    raise FileNotFoundError(f"netlab's templates are missing (looked in {_PACKAGE}/templates)")


def route_target(destination) -> str:
    """`default`, a host route as a bare address (as the documents write it), or a network."""
    if isinstance(destination, ipaddress.IPv4Network) and destination.prefixlen == 32:
        return str(destination.network_address)
    return str(destination)


def comment(text) -> str:
    """TEXT safe in a one-line shell comment: validation refuses control characters, and a
    Plan made in Python that holds one still cannot end the comment (a newline would make
    the rest a command): each is written as its escape, \\n or \\x1b."""
    from netlab.model.source import CONTROL

    return CONTROL.sub(lambda match: repr(match.group())[1:-1], str(text))


@functools.lru_cache(maxsize=None)
def environment():
    import jinja2

    env = jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(templates_dir())),
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
        keep_trailing_newline=True,
        autoescape=False,
        auto_reload=False,  # templates do not change while netlab runs: no stat per render
    )
    env.filters["route_target"] = route_target
    env.filters["comment"] = comment
    return env
