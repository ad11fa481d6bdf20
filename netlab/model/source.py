"""Where labs come from: the built-in catalog and topology files on disk.

`load(target)` takes a built-in lab name or a path to a YAML topology file,
reads it strictly (a duplicated key is an error, not a silent overwrite) and
returns a validated Topology. Every failure is an InputError of one line.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Mapping, Optional

from netlab.errors import InputError

LABS_DIR = Path(__file__).resolve().parent / "labs"


@dataclass(frozen=True)
class LabInfo:
    name: str
    title: str
    document: str
    path: Path
    stages: int = 0  # the tour's stages (netlab tour)


def builtin_path(name: str) -> Optional[Path]:
    path = LABS_DIR / f"{name}.yaml"
    return path if "/" not in name and path.is_file() else None


def catalog() -> List[LabInfo]:
    """The built-in labs, in the order of the lab series, then the labs beyond it by name."""
    labs = []
    for path in LABS_DIR.glob("*.yaml"):
        data = read_yaml(path.read_text(), path.name)
        labs.append(LabInfo(data["name"], data["title"], data["document"], path, len(data.get("stages") or ())))
    return sorted(labs, key=lambda lab: (not lab.document.startswith("Lab "), lab.document, lab.name))


def resolve(target: str) -> Path:
    """A built-in lab name or a topology file's path, as a readable file."""
    path = builtin_path(target)
    if path is not None:
        return path
    path = Path(target)
    if path.is_file():
        return path
    if path.is_dir():
        raise InputError("a directory, not a topology file (`netlab labs` lists the built-in labs)", target)
    raise InputError(not_found(target))


def not_found(word: str) -> str:
    """The message for WORD that is neither a built-in lab nor a file: with the built-in lab
    it most likely means, when one is close."""
    import difflib

    names = sorted(path.stem for path in LABS_DIR.glob("*.yaml"))
    close = difflib.get_close_matches(word, names, n=1, cutoff=0.6)
    hint = f"did you mean {close[0]}?" if close else "`netlab labs` lists the built-in labs"
    return f"no lab or file named {word!r}; {hint}"


def read_text(target: str) -> str:
    return _read(resolve(target))


def step_form_text(target: str) -> str:
    """TARGET as a step-form file: a nodes/links lab compiled into its ordered steps (netlab.model.nodes),
    its parameters still `${name}`, the rest of the file as it is; a step-form lab as written.
    TARGET is validated whole first: a bad file is an InputError, as for `plan`."""
    import yaml

    from netlab.model.nodes import FORM_KEYS, compile_steps, is_nodes_form
    from netlab.model.topology import parse_topology

    path = resolve(target)
    label = target if builtin_path(target) else str(path)
    text = _read(path)
    data = read_yaml(text, label)
    parse_topology(data, label)  # the whole file checked, as `plan` checks it
    if not is_nodes_form(data):
        return text

    def fail(where: str, message: str) -> InputError:
        return InputError(message, label, where)

    params = {key: str(value) for key, value in (data.get("params") or {}).items()}
    steps = compile_steps(fail, data, params)
    out = {}
    for key, value in data.items():
        if key == "nodes":
            out["steps"] = steps
        elif key not in FORM_KEYS:
            out[key] = value
    header = f"# {label} in the step form (netlab show --steps): its nodes and links compiled into steps\n"
    return header + yaml.safe_dump(out, sort_keys=False, default_flow_style=False, allow_unicode=True, width=100)


def _read(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as error:
        raise InputError(f"cannot read: {getattr(error, 'strerror', None) or error}", str(path)) from None


def parse_overrides(assignments: Iterable[str]) -> Dict[str, str]:
    """`--set key=value` options, as a mapping; the topology checks the keys."""
    overrides = {}
    for assignment in assignments:
        key, sep, value = assignment.partition("=")
        if not sep or not key:
            raise InputError(f"{shown(assignment)} is not key=value", None, "--set")
        if CONTROL.search(assignment):
            raise InputError(f"{shown(assignment)} has a control character, which no field may hold", None, "--set")
        overrides[key] = value
    return overrides


# C0 (newline, carriage return, tab, NUL, ESC, ...), DEL and C1: in no text of a lab. They could end a
# comment of an exported script, or make a terminal show another command than the one that runs.
CONTROL = re.compile(r"[\x00-\x1f\x7f-\x9f]")
MAX_BYTES = 64 << 20  # a topology file's size: a star lab of 5000 namespaces is a few MB
MAX_DEPTH = 64  # nesting of mappings and sequences; a lab needs four
MAX_ALIASES = 100  # YAML aliases (*name); each resolves to the one value of its anchor, never a copy


def shown(text: str, limit: int = 60) -> str:
    """TEXT quoted for a message: control characters escaped, long text cut."""
    text = text if len(text) <= limit else text[:limit] + "..."
    return repr(text)


def load(target: str, params: Optional[Mapping[str, str]] = None, sandbox: bool = False):
    """Read and validate a lab: a built-in name or a topology file's path.

    With sandbox=True the parameters a sandbox decides (the public address,
    the uplink, the internet host) take the sandbox's values.
    """
    from netlab.model.sandbox import SANDBOX_PARAMS
    from netlab.model.topology import parse_topology

    path = resolve(target)
    label = target if builtin_path(target) else str(path)
    data = read_yaml(_read(path), label)
    overrides = dict(params or {})
    if sandbox:
        declared = data.get("params") if isinstance(data, dict) else None
        for key, value in SANDBOX_PARAMS.items():
            if key in overrides:
                raise InputError(f"{key} is decided by --sandbox ({value}); drop one of the two", None, f"--set {key}")
            if isinstance(declared, dict) and key in declared:
                overrides[key] = value
    return parse_topology(data, label, overrides)


def read_yaml(text: str, label: str):
    """TEXT as plain data (YAML's safe subset); a key given twice is an error, as is a key
    that is not a plain word, a control character in any text, and a file built to hurt
    (too large, too deep, too many aliases: refused as the parser reaches it, and an alias is
    its anchor's one value, never a copy). libyaml parses when it is there (a large lab in a
    blink); the data is built from the parser's events as they come, with no tree of YAML
    nodes, which for a lab of thousands of namespaces would take many times its size."""
    import yaml

    if len(text) > MAX_BYTES:
        raise InputError(f"{len(text)} bytes is more than a topology file may hold ({MAX_BYTES})", label)
    try:
        try:
            return _build(yaml.parse(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader)), label)
        except yaml.YAMLError as error:  # the same error again, in PyYAML's own words
            if "maximum nesting depth" in str(error):  # libyaml's own bound, far above ours
                raise InputError(f"nested deeper than {MAX_DEPTH} levels; a lab needs four", label) from None
            return _build(yaml.parse(text, Loader=yaml.SafeLoader), label)
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{where}not valid YAML: {problem}", label) from None


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"
_COLLECTIONS = frozenset((_MAP, _SEQ, "tag:yaml.org,2002:set", "tag:yaml.org,2002:omap", "tag:yaml.org,2002:pairs"))


class _Open:
    """A mapping or sequence being built: its value, where it is (PATH, for messages), its
    anchor, where it begins (MARK), and for a mapping the key whose value comes next."""

    __slots__ = ("data", "path", "anchor", "mark", "key")
    NO_KEY = object()

    def __init__(self, data, path: str, anchor: Optional[str], mark):
        self.data, self.path, self.anchor, self.mark, self.key = data, path, anchor, mark, self.NO_KEY

    def child_path(self) -> str:
        """The path of the value that comes next in it: a key's is the mapping's own."""
        if isinstance(self.data, list):
            return f"{self.path}[{len(self.data) + 1}]"
        if self.key is self.NO_KEY:
            return self.path
        return f"{self.path}.{self.key}" if self.path else str(self.key)


def _build(events, label: str):
    """Python data from the parser's EVENTS: mappings to dicts (keys checked), sequences to
    lists, scalars by their resolved tag (a SafeConstructor does the rare ones; a tag it does
    not know is refused). An alias is its anchor's value again; one met while that value is
    still being built (it would hold itself) is a cycle, refused. The errors of PyYAML's
    composer (a second document, an undefined or duplicate anchor) are its own."""
    import yaml
    from yaml.composer import ComposerError

    resolver, scalars = yaml.resolver.Resolver(), yaml.constructor.SafeConstructor()
    anchors: dict = {}  # anchor -> (its value, its mark)
    building: set = set()  # anchors whose collection is still open
    stack: List[_Open] = []
    result, documents, aliases = None, None, 0

    def refused(mark, what: str, path: str = "") -> InputError:
        return InputError(f"line {mark.line + 1}: {path + ': ' if path else ''}{what}", label)

    def put(value, mark) -> None:
        nonlocal result
        if not stack:
            result = value
            return
        top = stack[-1]
        if isinstance(top.data, list):
            top.data.append(value)
        elif top.key is _Open.NO_KEY:
            if not isinstance(value, (str, int, float, bool)) and value is not None:
                raise refused(mark, f"a key must be a plain word, not {type(value).__name__}")
            if value in top.data:
                raise refused(mark, f"key {shown(str(value))} appears twice")
            top.key = value
        else:
            top.data[top.key] = value
            top.key = _Open.NO_KEY

    def anchored(event, value) -> None:
        if event.anchor is None:
            return
        if event.anchor in anchors:
            raise ComposerError(f"found duplicate anchor {event.anchor!r}; first occurrence",
                                anchors[event.anchor][1], "second occurrence", event.start_mark)
        anchors[event.anchor] = (value, event.start_mark)

    for event in events:
        if isinstance(event, yaml.ScalarEvent):
            path = stack[-1].child_path() if stack else ""
            tag = event.tag
            if tag is None or tag == "!":
                tag = resolver.resolve(yaml.ScalarNode, event.value, event.implicit)
            if tag in _COLLECTIONS:  # a mapping's or a list's tag on a single value
                raise refused(event.start_mark, f"the tag {tag!r} makes no plain data")
            if tag != _STR:
                node = yaml.ScalarNode(tag, event.value, event.start_mark, event.end_mark, event.style)
                try:
                    value = scalars.construct_object(node)  # refuses what the safe subset does not know
                except (ValueError, TypeError, KeyError, OverflowError):  # `!!int abc`, `!!timestamp 2020-13-45`
                    raise refused(event.start_mark, f"{shown(event.value)} does not read as its tag "
                                                    f"!!{tag.rpartition(':')[2]} says", path) from None
                finally:
                    scalars.constructed_objects.clear()
            elif CONTROL.search(event.value):
                raise refused(event.start_mark, f"{shown(event.value)} has a control character "
                                                f"(U+{ord(CONTROL.search(event.value).group()):04X}), which no field "
                                                "may hold", path)
            else:
                value = event.value
            anchored(event, value)
            put(value, event.start_mark)
        elif isinstance(event, (yaml.MappingStartEvent, yaml.SequenceStartEvent)):
            if len(stack) >= MAX_DEPTH:
                raise refused(event.start_mark, f"nested deeper than {MAX_DEPTH} levels; a lab needs four")
            mapping = isinstance(event, yaml.MappingStartEvent)
            if event.tag not in (None, "!", _MAP if mapping else _SEQ):
                node_class = yaml.MappingNode if mapping else yaml.SequenceNode  # a tag the safe subset does not
                scalars.construct_object(node_class(event.tag, [], event.start_mark, event.end_mark))  # know: refused
                raise refused(event.start_mark, f"the tag {event.tag!r} makes no plain data")
            opened = _Open({} if mapping else [], stack[-1].child_path() if stack else "", event.anchor,
                           event.start_mark)
            anchored(event, opened.data)
            if event.anchor is not None:
                building.add(event.anchor)
            stack.append(opened)
        elif isinstance(event, (yaml.MappingEndEvent, yaml.SequenceEndEvent)):
            done = stack.pop()
            building.discard(done.anchor)
            put(done.data, done.mark)  # a key is said where it begins
        elif isinstance(event, yaml.AliasEvent):
            aliases += 1
            if aliases > MAX_ALIASES:
                raise refused(event.start_mark, f"more than {MAX_ALIASES} aliases")
            if event.anchor not in anchors:
                raise ComposerError(None, None, f"found undefined alias {event.anchor!r}", event.start_mark)
            if event.anchor in building:  # said at the line of the value that would hold itself
                raise refused(anchors[event.anchor][1], "an alias refers to a value that holds it (a cycle)",
                              (stack[-1].child_path() if stack else "") or "the file")
            put(anchors[event.anchor][0], event.start_mark)
        elif isinstance(event, yaml.DocumentStartEvent):
            if documents is not None:
                raise ComposerError("expected a single document in the stream", documents,
                                    "but found another document", event.start_mark)
            documents = event.start_mark
    return result
