"""netlab's pytest plugin: a lab brought up for a test and taken down after it.

Installed with netlab (the `pytest11` entry point), so a test only asks for
the fixture:

    def test_the_namespace_reaches_the_internet(netlab_lab):
        lab = netlab_lab("egress-ingress")
        lab.run("ns0", ["ping", "-c", "1", "198.51.100.1"])  # a failure raises CommandError
        assert all(result.ok for result in lab.verify())

`netlab_lab(TARGET, **params)` brings up TARGET (a built-in lab or a topology
file) in a sandbox of its own and returns its netlab.Lab; every lab a test
brought up is taken down when the test ends, passed or failed. As root the
sandbox is an ordinary one; as any other user it is rootless
(netlab.run.rootless), so the same test runs without sudo.
"""

from __future__ import annotations

import itertools
import os
import secrets

import pytest

_numbers = itertools.count(1)
_RUN = f"nlpt{secrets.token_hex(2)}"  # this pytest run's labs: nlptXXXX-1, nlptXXXX-2, ...


@pytest.fixture
def netlab_lab():
    """A factory: `netlab_lab(TARGET, prefix=None, **params)` is a lab up in a sandbox (the
    prefix given, or one of this run's own), down again when the test ends."""
    import netlab

    labs = []

    def bring_up(target: str, prefix: str = None, **params):
        lab = netlab.up(target, sandbox=prefix or f"{_RUN}-{os.getpid() % 1000}-{next(_numbers)}",
                        params={key: str(value) for key, value in params.items()})
        labs.append(lab)
        return lab

    yield bring_up
    failures = []
    for lab in reversed(labs):
        try:
            lab.down()
        except Exception as error:  # one lab that cannot go down does not keep the others up
            failures.append(f"{lab.name}: {error}")
    if failures:
        pytest.fail("netlab_lab could not take down: " + "; ".join(failures), pytrace=False)
