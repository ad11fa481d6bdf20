"""Programs netlab runs inside a lab's namespaces: the lab service and the tcp/http client.

Standard library only, and they import nothing of netlab, so each can be
shipped as source to a remote host's python3 (netlab.remote.ssh) or carried
in an exported script (netlab.render.export). The lowest stage: every other
stage may import it.
"""

from pathlib import Path

_RUN_MAIN = "\nimport sys as _sys\n_sys.exit(main(_sys.argv[1:]))\n"


def source(name: str) -> str:
    """The program NAME (`serve`, `reach`) as one file of Python that runs its main(argv):
    `python3 - ARGS` with it on stdin."""
    return (Path(__file__).resolve().parent / f"{name}.py").read_text(encoding="utf-8") + _RUN_MAIN
