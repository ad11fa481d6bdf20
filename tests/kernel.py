"""Test helpers that read the live kernel: snapshots of namespaces, and generated labs.

A snapshot is what `up` then `down` (or a failed `up`) must leave unchanged:
for each namespace, `ip -j -d link`, `ip -j addr`, `ip -j route show table
all`, `iptables-save` without counters or comments, the sysctls labs touch
and `tc -j qdisc show`; plus the list of namespaces under a prefix. Read-only commands only.
"""

from __future__ import annotations

import json
import re

from conftest import namespaces, sh

SYSCTLS = ("net.ipv4.ip_forward", "net.ipv4.conf.all.forwarding")


def _json(*argv):
    result = sh(*argv, check=True)
    return json.loads(result.stdout or "[]")


def iptables_rules(netns: str) -> str:
    """iptables-save of NETNS without its timestamped comments and packet counters."""
    text = sh("ip", "netns", "exec", netns, "iptables-save", check=True).stdout
    lines = [re.sub(r" \[\d+:\d+\]$", "", line) for line in text.splitlines() if not line.startswith("#")]
    return "\n".join(lines)


def _peer_namespaces(links: list, netns: str) -> list:
    """LINKS with each veth peer's namespace by name: the kernel's id for it (link_netnsid)
    is handed out on first use, so its number says when, not where."""
    names = {entry["nsid"]: entry.get("name") for entry in _json("ip", "-n", netns, "-j", "netns", "list-id")}
    for link in links:
        if "link_netnsid" in link:
            link["link_netns"] = names.get(link.pop("link_netnsid"), "unnamed")
    return links


def netns_snapshot(netns: str) -> dict:
    exec_ = ("ip", "netns", "exec", netns)
    return {
        "links": _peer_namespaces(_json(*exec_, "ip", "-j", "-d", "link", "show"), netns),
        "addresses": _peer_namespaces(_json(*exec_, "ip", "-j", "addr", "show"), netns),
        "routes": _json(*exec_, "ip", "-j", "route", "show", "table", "all"),
        "iptables": iptables_rules(netns),
        "sysctls": {key: sh(*exec_, "sysctl", "-n", key, check=True).stdout.strip() for key in SYSCTLS},
        "qdiscs": _json(*exec_, "tc", "-j", "qdisc", "show"),
    }


def snapshot(prefix: str) -> dict:
    """Every namespace named PREFIX-*, and the state of each."""
    names = [name for name in namespaces() if name.startswith(prefix + "-")]
    return {name: netns_snapshot(name) for name in names}


def changes(before: dict, after: dict) -> list:
    """What differs between two snapshots, as readable lines (empty when identical)."""
    lines = []
    for name in sorted(set(before) | set(after)):
        if name not in after:
            lines.append(f"namespace {name} is gone")
        elif name not in before:
            lines.append(f"namespace {name} was left behind")
        else:
            lines.extend(f"{name}: {key} changed" for key in before[name] if before[name][key] != after[name][key])
    return lines


def settled(state: dict, prefix: str = "", indexes: bool = False) -> dict:
    """A snapshot of a live lab without what the kernel changes on its own as time
    passes: timers, IPv6 autoconfiguration (the labs are IPv4 only), carrier and
    operstate while links settle. MAC addresses (random) and PREFIX are masked,
    so two sandboxes of one lab compare equal. With INDEXES, interface indexes
    are masked too, and links, addresses and routes are compared as sets: the
    indexes, and so the order of the kernel's lists, follow the order in which
    links were made, not what they are (a veth end made in its namespace gets
    that namespace's next one, a moved one keeps its own; the batched runner
    makes the links of two namespaces side by side)."""
    text = json.dumps(state, sort_keys=True)
    if prefix:
        text = text.replace(prefix, "PREFIX")
    text = re.sub(r'"([0-9a-f]{2}:){5}[0-9a-f]{2}"', '"MAC"', text)
    text = re.sub(r'"[0-9a-f]{4}\.[0-9a-f]{1,2}(:[0-9a-f]{1,2}){5}"', '"BRIDGE-ID"', text)  # no leading zeros
    return _strip(json.loads(text), indexes)


def _strip(value, indexes=False):
    if isinstance(value, list):
        items = [_strip(item, indexes) for item in value
                 if not (isinstance(item, dict) and (item.get("family") == "inet6" or ":" in str(item.get("dst", ""))))
                 and item != "NO-CARRIER"]
        if indexes and all(isinstance(item, dict) for item in items):
            items.sort(key=lambda item: json.dumps(item, sort_keys=True))
        return items
    if isinstance(value, dict):
        return {key: "INDEX" if indexes and key in INDEXES else _strip(item, indexes) for key, item in value.items()
                if not key.endswith("_timer") and key not in ("operstate", "tentative")}
    return value


INDEXES = ("ifindex", "link_index")  # numbers the kernel hands out in creation order
