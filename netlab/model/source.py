"""Where labs come from: the built-in catalog and topology files on disk.

`load(target)` takes a built-in lab name or a path to a YAML topology file,
reads it strictly (a duplicated key is an error, not a silent overwrite) and
returns a validated Topology. Every failure is an InputError of one line.
"""

from __future__ import annotations

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


def builtin_path(name: str) -> Optional[Path]:
    path = LABS_DIR / f"{name}.yaml"
    return path if "/" not in name and path.is_file() else None


def catalog() -> List[LabInfo]:
    """The built-in labs, in the order of the lab series."""
    labs = []
    for path in LABS_DIR.glob("*.yaml"):
        data = read_yaml(path.read_text(), path.name)
        labs.append(LabInfo(data["name"], data["title"], data["document"], path))
    return sorted(labs, key=lambda lab: (lab.document, lab.name))


def resolve(target: str) -> Path:
    """A built-in lab name or a topology file's path, as a readable file."""
    path = builtin_path(target)
    if path is not None:
        return path
    path = Path(target)
    if path.is_file():
        return path
    hint = "a directory, not a topology file" if path.is_dir() else "no built-in lab or file of that name"
    raise InputError(f"{hint} (`netlab labs` lists the built-in labs)", target)


def read_text(target: str) -> str:
    return _read(resolve(target))


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
            raise InputError(f"{assignment!r} is not key=value", None, "--set")
        overrides[key] = value
    return overrides


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
    that is not a plain word. libyaml parses when it is there (a large lab in a blink)."""
    import yaml

    try:
        try:
            node = yaml.compose(text, Loader=getattr(yaml, "CSafeLoader", yaml.SafeLoader))
        except yaml.YAMLError:
            node = yaml.compose(text, Loader=yaml.SafeLoader)  # the same error, in PyYAML's own words
        return None if node is None else _construct(node, label, yaml.constructor.SafeConstructor())
    except yaml.YAMLError as error:
        mark = getattr(error, "problem_mark", None)
        where = f"line {mark.line + 1}: " if mark else ""
        problem = getattr(error, "problem", None) or str(error).splitlines()[0]
        raise InputError(f"{where}not valid YAML: {problem}", label) from None


_STR, _MAP, _SEQ = "tag:yaml.org,2002:str", "tag:yaml.org,2002:map", "tag:yaml.org,2002:seq"


def _construct(node, label: str, scalars):
    """Python data from a composed YAML node: mappings to dicts (keys checked), sequences
    to lists, scalars by their resolved tag (SCALARS, a SafeConstructor, does the rare ones)."""
    import yaml

    if node.tag not in (_MAP, _SEQ, _STR):
        return scalars.construct_object(node)  # refuses what the safe subset does not know
    if isinstance(node, yaml.MappingNode):
        data = {}
        for key_node, value_node in node.value:
            key = _construct(key_node, label, scalars)
            line = key_node.start_mark.line + 1
            if not isinstance(key, (str, int, float, bool)) and key is not None:
                raise InputError(f"line {line}: a key must be a plain word, not {type(key).__name__}", label)
            if key in data:
                raise InputError(f"line {line}: key {key!r} appears twice", label)
            data[key] = _construct(value_node, label, scalars)
        return data
    if isinstance(node, yaml.SequenceNode):
        return [_construct(item, label, scalars) for item in node.value]
    return node.value
