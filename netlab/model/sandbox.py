"""Sandbox mode: a lab's host side in a throwaway namespace, beside a fake internet.

The sandbox is two namespaces, PREFIX-host (plays the host) and PREFIX-wan
(plays the internet), joined by an uplink on 203.0.113.0/24, with an internet
host at 198.51.100.1 standing in for 8.8.8.8. Every lab namespace NAME becomes
PREFIX-NAME, so two sandboxes never collide. The commands that build it are
ordinary plan steps (plan.sandbox_items); this module only holds the names
and addresses, all in documentation ranges so no packet leaves the sandbox.
With `host_netns`, an existing namespace that netlab did not create plays the
host: the sandbox never creates or deletes it.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Optional

from netlab.errors import InputError

_PREFIX_RE = re.compile(r"[A-Za-z0-9_.][A-Za-z0-9_.-]{0,31}")


# Parameters a lab may declare whose values the sandbox decides.
SANDBOX_PARAMS = {"public_ip": "203.0.113.2", "uplink": "ens3", "internet_ip": "198.51.100.1"}


@dataclass(frozen=True)
class Sandbox:
    prefix: str
    uplink: str = SANDBOX_PARAMS["uplink"]  # the documents' name, so their tcpdump lines work
    wan_link: str = "wan0"
    host_address: str = SANDBOX_PARAMS["public_ip"] + "/24"
    wan_address: str = "203.0.113.1/24"
    internet_address: str = SANDBOX_PARAMS["internet_ip"] + "/32"
    host_netns: Optional[str] = None  # an existing namespace that plays the host
    joined: bool = False  # a multi-host lab's host: its namespace and uplink are the underlay's (netlab.render.multi)

    @property
    def host(self) -> str:
        return self.host_netns or f"{self.prefix}-host"

    @property
    def wan(self) -> str:
        return f"{self.prefix}-wan"

    @property
    def gateway(self) -> str:
        return self.wan_address.split("/")[0]

    def netns(self, name: str) -> str:
        """The real name of namespace NAME: `host` is the host's, the rest get the prefix."""
        return self.host if name == "host" else f"{self.prefix}-{name}"

    @classmethod
    def create(cls, prefix: str, lab_name: str, namespaces=()) -> "Sandbox":
        """A sandbox with PREFIX, or the lab's default prefix when PREFIX is empty."""
        prefix = prefix or default_prefix(lab_name)
        if not _PREFIX_RE.fullmatch(prefix):
            raise InputError(
                f"{prefix!r} is not a sandbox prefix (1-32 letters, digits, '_', '.', '-'; not starting with '-')",
                None,
                "--sandbox",
            )
        sandbox = cls(prefix)
        for name in ("wan", *namespaces):
            if len(sandbox.netns(name)) > 64:
                raise InputError(f"{sandbox.netns(name)!r} is longer than 64 characters", None, "--sandbox")
        return sandbox


def default_prefix(lab_name: str) -> str:
    """`nl-` and the initials of the lab's name: egress-ingress -> nl-ei."""
    words = [word for word in re.split(r"[-_.]", lab_name) if word]
    return "nl-" + "".join(word[0] for word in words)[:6].lower()
