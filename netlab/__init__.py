"""netlab: Linux network-namespace labs as exact, reviewable commands.

The public API for scripts and test authors:

    import netlab
    topology = netlab.load("egress-ingress", params={"public_ip": "10.0.0.25"})
    plan = netlab.build_plan(topology, sandbox=netlab.Sandbox.for_lab(topology))
    print(netlab.export_script(plan))

Submodules are imported on first use, so `import netlab` stays cheap.
"""

__version__ = "0.1.0"

_API = {
    "load": "netlab.source",
    "Topology": "netlab.topology",
    "Sandbox": "netlab.sandbox",
    "Plan": "netlab.plan",
    "Step": "netlab.plan",
    "build_plan": "netlab.plan",
    "export_script": "netlab.export",
    "NetlabError": "netlab.errors",
    "InputError": "netlab.errors",
    "CommandError": "netlab.errors",
}

__all__ = ["__version__", *_API]


def __getattr__(name):
    module = _API.get(name)
    if module is None:
        raise AttributeError(f"module 'netlab' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
