"""The executors of a lab of several hosts: this machine's, or one over SSH for each host.

netlab.run.multi runs a lab's parts with the executors it is given; this
module opens them. A host whose reach is `local`, and every host of a
sandbox (each a namespace of this machine), gets this machine's executor; any
other, a connection of its own (netlab.remote.ssh), all with the same ssh
options, opened one after another and closed when the `with` ends.
"""

from __future__ import annotations

import contextlib
from typing import Dict, Iterator, Sequence, Tuple

from netlab.remote.ssh import connect
from netlab.run.execute import Executor, local_executor


@contextlib.contextmanager
def executors(hosts: Sequence[Tuple[str, str]], sandbox: bool, ssh_opts: Sequence[str] = ()
              ) -> Iterator[Dict[str, Executor]]:
    """HOSTS: (name, reach) of each host; yields name -> its executor."""
    with contextlib.ExitStack() as stack:
        found: Dict[str, Executor] = {}
        for name, reach in hosts:
            found[name] = (local_executor() if sandbox or reach == "local"
                           else stack.enter_context(connect(reach, ssh_opts)))
        yield found
