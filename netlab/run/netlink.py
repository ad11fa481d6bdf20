"""A namespace's links, addresses, routes and sysctls, read in-process over rtnetlink.

netlab.run.probes reads a namespace's state to answer many probes at once.
Reading it with `ip -j ... show` costs a process per namespace; here a
thread of this process enters the namespace (setns, by the namespace's file
under /run/netns), opens a netlink socket and the sysctl files there, dumps
the kernel's tables, and ends. Only that throwaway thread ever changes its
network namespace: the thread that runs commands never does, so no command is
ever started in the wrong namespace. The result has the shape of `ip -j`'s
output in the fields the probes read (a link's ifname, altnames, flags,
mtu, master and linkinfo.info_kind; an address's local; a route's dst,
gateway, dev and nexthops), so both ways are answered by the same code.

Needs root on this very host; netlab.run.probes falls back to the processes
when a read fails here (ReadError) and the probes themselves decide.
"""

from __future__ import annotations

import ctypes
import functools
import ipaddress
import os
import socket
import struct
import threading
from typing import Dict, Iterable, List, Optional, Tuple

NETNS_DIR = "/run/netns"
SECTIONS = frozenset(("link", "addr", "route"))  # what is read here; the rest takes a process

_CLONE_NEWNET = 0x40000000
_NLM_F_REQUEST, _NLM_F_DUMP = 0x1, 0x300
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_GETLINK, _RTM_GETADDR, _RTM_GETROUTE = 18, 22, 26
_IFLA_IFNAME, _IFLA_MTU, _IFLA_MASTER, _IFLA_LINKINFO, _IFLA_EXT_MASK, _IFLA_PROP_LIST = 3, 4, 10, 18, 29, 52
_IFLA_INFO_KIND, _IFLA_ALT_IFNAME = 1, 53
_RTEXT_FILTER_SKIP_STATS = 1 << 3  # the counters are the bulk of a link's message, and unread here
_IFA_ADDRESS, _IFA_LOCAL = 1, 2
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_MULTIPATH, _RTA_TABLE = 1, 4, 5, 9, 15
_RT_TABLE_MAIN = 254  # what `ip route show` lists
_RTM_F_CLONED = 0x200
_IFF_UP = 0x1
_HEADER = struct.Struct("=IHHII")  # nlmsghdr: length, type, flags, sequence, port
_ATTR = struct.Struct("=HH")  # rtattr: length, type
_IFINFO = struct.Struct("=BxHiII")  # ifinfomsg: family, type, index, flags, change
_IFADDR = struct.Struct("=BBBBI")  # ifaddrmsg: family, prefix length, flags, scope, index
_RTMSG = struct.Struct("=BBBBBBBBI")  # rtmsg: family, dst_len, src_len, tos, table, protocol, scope, type, flags


class ReadError(Exception):
    """The namespace could not be read here: ask the processes instead."""


class Gone(Exception):
    """The namespace's file is not there: the namespace, and all that was in it, is gone."""


def read_many(wanted: Dict[Optional[str], Tuple[Iterable[str], Iterable[str]]]) -> Dict[Optional[str], object]:
    """For each namespace of WANTED (None: this process's own) and its (sections, sysctl keys):
    the sections (those of SECTIONS) and the sysctls, as netlab.run.probes keeps a dump
    ({("json", SECTION): [...], ("sysctl", KEY): "VALUE\\n"}), or a Gone or ReadError. A
    sysctl that cannot be read, or whose value is more than one word, is left out (its probe
    asks sysctl itself). One throwaway thread visits the namespaces one after another: the
    reads are Python's work, which threads side by side would only take turns at."""
    outcome: Dict[Optional[str], object] = {}

    def visit() -> None:
        for netns in sorted(wanted, key=lambda name: name is not None):  # its own first, before it leaves
            sections, keys = wanted[netns]
            try:
                if netns is not None:
                    enter(netns)
                outcome[netns] = _read_here(set(sections), list(keys))
            except FileNotFoundError:
                outcome[netns] = Gone(netns)
            except OSError as error:
                outcome[netns] = ReadError(f"{netns}: {error.strerror}")
            except Exception as error:  # noqa: BLE001 - a message read wrong here: the processes answer instead
                outcome[netns] = error if isinstance(error, ReadError) else ReadError(f"{netns}: {error!r}")

    thread = threading.Thread(target=visit, name="netlink", daemon=True)
    thread.start()
    thread.join()
    return outcome


def enter(netns: str) -> None:
    """Move the calling thread (one that runs no command, and ends after) into the network
    namespace NETNS, by its file under /run/netns. Raises OSError (FileNotFoundError: gone)."""
    fd = os.open(f"{NETNS_DIR}/{netns}", os.O_RDONLY | os.O_CLOEXEC)
    try:
        if hasattr(os, "setns"):  # Python 3.12
            os.setns(fd, _CLONE_NEWNET)
        elif _libc().setns(fd, _CLONE_NEWNET) != 0:
            code = ctypes.get_errno()
            raise OSError(code, f"setns: {os.strerror(code)}")
    finally:
        os.close(fd)


@functools.lru_cache(maxsize=1)
def _libc():
    return ctypes.CDLL(None, use_errno=True)


def _read_here(sections: set, keys: List[str]) -> dict:
    dump: dict = {}
    for key in keys:
        value = _sysctl(key)
        if value is not None:
            dump[("sysctl", key)] = value + "\n"
    if not sections & SECTIONS:
        return dump
    try:
        with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0) as sock:
            sock.bind((0, 0))
            links = _links(sock)  # the others name their links by index: the links are always read
            names = {link["ifindex"]: link["ifname"] for link in links}
            for link in links:
                master = link.pop("master_index", None)
                if master is not None and master in names:
                    link["master"] = names[master]
            if "link" in sections:
                dump[("json", "link")] = links
            if "addr" in sections:
                dump[("json", "addr")] = _addresses(sock, names)
            if "route" in sections:
                dump[("json", "route")] = _routes(sock, names)
    except OSError as error:
        raise ReadError(f"rtnetlink: {error.strerror}") from None
    return dump


def _sysctl(key: str) -> Optional[str]:
    """KEY's value as `sysctl -n KEY` prints it, if it is one word; else None."""
    try:
        with open("/proc/sys/" + key.replace(".", "/"), encoding="utf-8", errors="replace") as file:
            value = file.read().strip()
    except OSError:
        return None
    return value if value and len(value.split()) == 1 else None


# ------------------------------------------------------------ rtnetlink
def _dump(sock, kind: int, payload: bytes):
    """Each message (its payload) of a dump request KIND."""
    sock.send(_HEADER.pack(_HEADER.size + len(payload), kind, _NLM_F_REQUEST | _NLM_F_DUMP, 1, 0) + payload)
    while True:
        data = sock.recv(1 << 16)  # the kernel sends at most 32 KiB of a dump at a time
        offset = 0
        while offset + _HEADER.size <= len(data):
            length, message, _, _, _ = _HEADER.unpack_from(data, offset)
            if length < _HEADER.size:
                raise ReadError("rtnetlink: a message shorter than its header")
            if message == _NLMSG_DONE:
                return
            if message == _NLMSG_ERROR:
                code = struct.unpack_from("=i", data, offset + _HEADER.size)[0]
                if code:
                    raise ReadError(f"rtnetlink: {os.strerror(-code)}")
            else:
                yield data[offset + _HEADER.size:offset + length]
            offset += (length + 3) & ~3
        if not data:
            raise ReadError("rtnetlink: the dump ended without its end")


def _attributes(data: bytes, offset: int) -> Dict[int, bytes]:
    """The attributes from OFFSET, by type (nested and byte-order flags dropped)."""
    return dict(_all_attributes(data, offset))


def _all_attributes(data: bytes, offset: int) -> List[Tuple[int, bytes]]:
    """The attributes from OFFSET as (type, value), in order and with repeats (a link's altnames)."""
    found = []
    while offset + _ATTR.size <= len(data):
        length, kind = _ATTR.unpack_from(data, offset)
        if length < _ATTR.size:
            break
        found.append((kind & 0x3FFF, data[offset + _ATTR.size:offset + length]))
        offset += (length + 3) & ~3
    return found


def _text(value: bytes) -> str:
    return value.split(b"\0", 1)[0].decode("utf-8", "replace")


def _u32(value: bytes) -> int:
    return struct.unpack_from("=I", value)[0]


def _links(sock) -> List[dict]:
    request = _IFINFO.pack(socket.AF_UNSPEC, 0, 0, 0, 0) + _ATTR.pack(8, _IFLA_EXT_MASK) + \
        struct.pack("=I", _RTEXT_FILTER_SKIP_STATS)
    links = []
    for message in _dump(sock, _RTM_GETLINK, request):
        _, _, index, flags, _ = _IFINFO.unpack_from(message)
        attributes = _attributes(message, _IFINFO.size)
        if _IFLA_IFNAME not in attributes:
            continue
        link = {"ifindex": index, "ifname": _text(attributes[_IFLA_IFNAME]),
                "flags": ["UP"] if flags & _IFF_UP else []}
        if _IFLA_MTU in attributes:
            link["mtu"] = _u32(attributes[_IFLA_MTU])
        if _IFLA_MASTER in attributes:
            link["master_index"] = _u32(attributes[_IFLA_MASTER])
        info = _attributes(attributes.get(_IFLA_LINKINFO, b""), 0)
        if _IFLA_INFO_KIND in info:
            link["linkinfo"] = {"info_kind": _text(info[_IFLA_INFO_KIND])}
        altnames = [_text(value) for kind, value in _all_attributes(attributes.get(_IFLA_PROP_LIST, b""), 0)
                    if kind == _IFLA_ALT_IFNAME]
        if altnames:
            link["altnames"] = altnames
        links.append(link)
    return links


def _addresses(sock, names: Dict[int, str]) -> List[dict]:
    """The IPv4 addresses, by link as `ip -j addr show` groups them (only the links that have one)."""
    by_link: Dict[int, dict] = {}
    for message in _dump(sock, _RTM_GETADDR, _IFADDR.pack(socket.AF_INET, 0, 0, 0, 0)):
        family, prefix, _, _, index = _IFADDR.unpack_from(message)
        attributes = _attributes(message, _IFADDR.size)
        local = attributes.get(_IFA_LOCAL, attributes.get(_IFA_ADDRESS))
        if family != socket.AF_INET or local is None or len(local) != 4 or index not in names:
            continue
        entry = by_link.setdefault(index, {"ifindex": index, "ifname": names[index], "addr_info": []})
        entry["addr_info"].append({"family": "inet", "local": socket.inet_ntoa(local), "prefixlen": prefix})
    return list(by_link.values())


def _routes(sock, names: Dict[int, str]) -> List[dict]:
    """The IPv4 routes of the main table, as `ip -j route show` lists them."""
    routes = []
    for message in _dump(sock, _RTM_GETROUTE, _RTMSG.pack(socket.AF_INET, 0, 0, 0, 0, 0, 0, 0, 0)):
        family, dst_len, _, _, table, _, _, _, flags = _RTMSG.unpack_from(message)
        attributes = _attributes(message, _RTMSG.size)
        if _RTA_TABLE in attributes:
            table = _u32(attributes[_RTA_TABLE])
        if family != socket.AF_INET or table != _RT_TABLE_MAIN or flags & _RTM_F_CLONED:
            continue
        destination = socket.inet_ntoa(attributes[_RTA_DST]) if _RTA_DST in attributes else "0.0.0.0"
        route: dict = {"dst": "default" if dst_len == 0 else
                       destination if dst_len == 32 else str(ipaddress.IPv4Network(f"{destination}/{dst_len}",
                                                                                    strict=False))}
        if _RTA_GATEWAY in attributes:
            route["gateway"] = socket.inet_ntoa(attributes[_RTA_GATEWAY])
        if _RTA_OIF in attributes:
            index = _u32(attributes[_RTA_OIF])
            route["dev"] = names.get(index, f"if{index}")
        if _RTA_MULTIPATH in attributes:
            route["nexthops"] = []  # read the old way: its gateways are not where the probe looks
        routes.append(route)
    return routes
