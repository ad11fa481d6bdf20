"""How `up` and `down` report on a terminal: one line per step, or one progress line.

When stdout is a terminal, the step being run rewrites a single line in place;
otherwise (a log, a pipe, CI) every step gets a line of its own. Undo lines,
the output of read-only steps and warnings always get lines of their own.
"""

from __future__ import annotations

import os
import shutil
import sys
import threading

from netlab.run.runner import Reporter


class TerminalReporter(Reporter):
    """LABEL (a host of a lab of several, whose parts run side by side) starts each of its lines."""

    _writing = threading.Lock()  # the parts' reporters share a terminal

    def __init__(self, stream=None, label: str = ""):
        self.stream = stream or sys.stdout
        self.label = f"{label}: " if label else ""
        self.tty = self.stream.isatty() and not label
        self._pending = False

    def __enter__(self) -> "TerminalReporter":
        return self

    def __exit__(self, *exc) -> None:
        self._clear()

    def _write(self, text: str, stream=None) -> None:
        """Write; a reader that went away (`netlab up | head`) must never stop a step or an undo."""
        stream = stream or self.stream
        try:
            with self._writing:
                stream.write(text)
                stream.flush()
        except (OSError, ValueError):
            self.stream = open(os.devnull, "w")  # noqa: SIM115 - lives as long as the reporter
            self.tty = False

    def _clear(self) -> None:
        if self._pending:
            self._pending = False
            self._write("\r\x1b[K")

    def _line(self, text: str) -> None:
        self._clear()
        self._write(self.label + text + "\n")

    def step(self, step, total, action) -> None:
        if action == "undo":
            self._line(f"- {step.undo_command}")
            return
        if action == "found":
            text = f"[{step.index}/{total}] already in effect, left as it was: {step.command}"
        else:
            text = f"[{step.index}/{total}] {step.command}"
        if not self.tty:
            self._line(text)
            return
        self._clear()
        self._write(text[: max(shutil.get_terminal_size().columns - 1, 10)])
        self._pending = True

    def output(self, step, text) -> None:
        for line in text.splitlines():
            self._line(f"    {line}")

    def warn(self, text) -> None:
        self._clear()
        try:
            sys.stderr.write(f"netlab: {self.label}{text}\n")
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
