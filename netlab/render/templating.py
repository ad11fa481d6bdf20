"""The Jinja2 environment: where the templates are and how they render.

Templates live in the top-level `templates/` of a source checkout and are
installed as the package `netlab.templates`; both places are looked up, the
installed one first. StrictUndefined turns a missing value into an error.
"""

from __future__ import annotations

import contextvars
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
    env.globals["emit"] = _emit
    return env


_RENDERED = contextvars.ContextVar("netlab_rendered_steps")  # the list render_steps is filling


def _emit(step: dict) -> str:
    _RENDERED.get().append(step)
    return ""


def render_steps(template: str, **values) -> list:
    """The steps (mappings, as macros.j2's `step` makes them) that TEMPLATE emits, rendered with
    VALUES; handed over as they are, with no text in between. Anything else it writes is a bug."""
    steps: list = []
    token = _RENDERED.set(steps)
    try:
        text = environment().get_template(template).render(**values)
    finally:
        _RENDERED.reset(token)
    if text.strip():
        raise ValueError(f"{template} wrote text besides its steps: {text.strip()[:80]!r}")
    return steps
