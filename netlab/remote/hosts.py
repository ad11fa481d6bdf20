"""The executors of a lab of several hosts: this machine's, or one over SSH for each host.

netlab.run.multi runs a lab's parts with the executors it is given; this
module opens them. A host whose reach is `local`, and every host of a
sandbox (each a namespace of this machine), gets this machine's executor; any
other, a connection of its own (netlab.remote.ssh), all with the same ssh
options, opened one after another and closed when the `with` ends. `down`
opens them leniently: a host it cannot reach is left out (and said why), so
that the hosts it can reach go down now and that one later.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Optional, Sequence, Tuple

from netlab.errors import ConnectionFailed
from netlab.remote.ssh import connect
from netlab.run.execute import Executor, local_executor


@contextlib.contextmanager
def executors(hosts: Sequence[Tuple[str, str]], sandbox: bool, ssh_opts: Sequence[str] = (),
              unreachable: Optional[Dict[str, str]] = None) -> Iterator[Dict[str, Executor]]:
    """HOSTS: (name, reach) of each host; yields name -> its executor. With UNREACHABLE (a dict),
    a host that cannot be connected to is left out and its name -> why put there, not raised."""
    with contextlib.ExitStack() as stack:
        found: Dict[str, Executor] = {}
        for name, reach in hosts:
            if sandbox or reach == "local":
                found[name] = local_executor()
                continue
            try:
                found[name] = stack.enter_context(connect(reach, ssh_opts))
            except ConnectionFailed as error:
                if unreachable is None:
                    raise
                unreachable[name] = str(error)
        yield found
