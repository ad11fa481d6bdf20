"""The Python API for test authors: a lab that is up, as a context manager.

    import netlab
    with netlab.up("egress-ingress", sandbox="t1") as lab:
        lab.run("ns0", ["ping", "-c", "1", "198.51.100.1"])
    # here the lab is down again, also when the block raised

`up` returns only when every step is in place; when a step fails it has
already rolled back and raises StepFailed. Leaving the `with` block always
takes the lab down. As an ordinary user, a sandbox lab is rootless
(netlab.run.rootless): the same calls, no root needed.
"""

from __future__ import annotations

from typing import Mapping, Optional, Sequence

from netlab.render.plan import Plan
from netlab.run.execute import Result, local_executor


class Lab:
    """A lab that is up on this host (or in its sandbox; as an ordinary user, a rootless one)."""

    def __init__(self, plan: Plan, state_dir=None, reporter=None):
        self.plan = plan
        self.state_dir = state_dir
        self.reporter = reporter
        self.executor = local_executor()  # what runs its commands: this host, or its rootless namespaces
        self.is_up = False

    @property
    def name(self) -> str:
        """Its name on this host, as `netlab status` shows it."""
        return self.plan.name

    def netns(self, name: str) -> Optional[str]:
        """The real name of the lab's namespace NAME; `host` is the host side (None: the root namespace)."""
        if name == "host" and self.plan.sandbox is None:
            return self.plan.host_netns
        return self.plan.netns(name)  # a sandbox maps `host` to its host namespace itself

    def up(self) -> "Lab":
        from netlab.run.runner import up

        up(self.plan, self.state_dir, self.reporter, self.executor)
        self.is_up = True
        return self

    def down(self) -> None:
        """Take the lab down (a lab that is not up is nothing to do)."""
        from netlab.run.runner import down

        down(self.name, self.state_dir, self.reporter, self.executor, exact=True)
        self.is_up = False

    def run(self, netns: str, argv: Sequence[str], check: bool = True) -> Result:
        """Run ARGV in the lab's namespace NETNS ("host" for the host side); with CHECK, a failure raises CommandError."""
        result = self.executor.run(tuple(argv), self.netns(netns))
        if check and not result.ok:
            raise result.error()
        return result

    def verify(self):
        """Run the lab's checks against the live lab: a list of netlab.check.verify.CheckResult (`.ok`, `.detail`)."""
        from netlab.check.verify import run_checks

        return run_checks(self.plan.checks, self.executor)

    def status(self):
        """Each step's live state (see netlab.check.status)."""
        from netlab.check.status import lab_steps

        return lab_steps(self.name, self.state_dir, self.executor)[1]

    def __enter__(self) -> "Lab":
        if not self.is_up:
            self.up()
        return self

    def __exit__(self, *exc) -> None:
        if self.is_up:
            self.down()


def up(target: str, *, sandbox: Optional[str] = None, host_netns: Optional[str] = None,
       params: Optional[Mapping[str, str]] = None, state_dir=None, reporter=None) -> Lab:
    """Bring up TARGET (a built-in lab or a topology file's path) and return it, as a context manager.

    `sandbox` is a prefix ("" for the lab's default) to build it in a sandbox;
    `host_netns` an existing namespace to play the host.
    """
    from netlab.errors import InputError
    from netlab.render.plan import make_plan, several_hosts

    plan = make_plan(target, sandbox, host_netns, params)
    if several_hosts(plan):
        raise InputError("the Python API takes a lab of one host, for now; a lab of several hosts: `netlab up`",
                         target)
    return Lab(plan, state_dir, reporter).up()


def down(name: str, state_dir=None, reporter=None):
    """Take down the lab called NAME on this host; returns the runner's Outcome."""
    from netlab.run.runner import down as run_down

    return run_down(name, state_dir, reporter)
