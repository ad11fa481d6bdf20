"""The exception tree: one base, one class per way of failing.

InputError is bad input (exit code 2, nothing run); CommandError is a command
that failed while running a plan (exit code 1) and carries what it printed.
"""

from __future__ import annotations


class NetlabError(Exception):
    """Base of every error netlab raises on purpose."""

    exit_code = 1


class InputError(NetlabError):
    """A lab, topology file or option is invalid. Nothing has been run or written."""

    exit_code = 2

    def __init__(self, message: str, source: str | None = None, field: str | None = None):
        self.source = source
        self.field = field
        self.message = message
        super().__init__(": ".join(part for part in (source, field, message) if part))


class CommandError(NetlabError):
    """A command exited non-zero; like plumbum's ProcessExecutionError, it keeps everything."""

    def __init__(self, argv, exit_code: int, stdout: str, stderr: str):
        self.argv = tuple(argv)
        self.returncode = exit_code
        self.stdout = stdout
        self.stderr = stderr
        detail = stderr.strip().splitlines()[-1] if stderr.strip() else f"exit code {exit_code}"
        import shlex

        super().__init__(f"{shlex.join(self.argv)}: {detail}")


class ConnectionFailed(NetlabError):
    """A remote host could not be reached or logged into; nothing was run there."""


class ConnectionLost(NetlabError):
    """The connection to a remote host died during a run; its journal there records what was done."""
