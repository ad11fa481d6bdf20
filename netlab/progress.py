"""How `up` and `down` report on a terminal: one line per step, or one progress line.

When stdout is a terminal, the step being run rewrites a single line in place;
otherwise (a log, a pipe, CI) every step gets a line of its own. Undo lines,
the output of read-only steps and warnings always get lines of their own.
"""

from __future__ import annotations

import shutil
import sys

from netlab.runner import Reporter


class TerminalReporter(Reporter):
    def __init__(self, stream=None):
        self.stream = stream or sys.stdout
        self.tty = self.stream.isatty()
        self._pending = False

    def __enter__(self) -> "TerminalReporter":
        return self

    def __exit__(self, *exc) -> None:
        self._clear()

    def _clear(self) -> None:
        if self._pending:
            self.stream.write("\r\x1b[K")
            self.stream.flush()
            self._pending = False

    def _line(self, text: str) -> None:
        self._clear()
        self.stream.write(text + "\n")
        self.stream.flush()

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
        self.stream.write(text[: max(shutil.get_terminal_size().columns - 1, 10)])
        self.stream.flush()
        self._pending = True

    def output(self, step, text) -> None:
        for line in text.splitlines():
            self._line(f"    {line}")

    def warn(self, text) -> None:
        self._clear()
        sys.stderr.write(f"netlab: {text}\n")
        sys.stderr.flush()
