"""netlab: Linux network-namespace labs as exact, reviewable commands.

The public API for scripts and test authors:

    import netlab
    plan = netlab.make_plan("egress-ingress", sandbox="box1")
    print(netlab.export_script(plan))

    with netlab.up("egress-ingress", sandbox="box1") as lab:   # as root
        lab.run("ns0", ["ping", "-c", "1", "198.51.100.1"])

Submodules are imported on first use, so `import netlab` stays cheap.
"""

__version__ = "0.1.0"

_API = {
    "load": "netlab.model.source",
    "Topology": "netlab.model.topology",
    "Sandbox": "netlab.model.sandbox",
    "Plan": "netlab.render.plan",
    "Step": "netlab.render.plan",
    "build_plan": "netlab.render.plan",
    "make_plan": "netlab.render.plan",
    "up": "netlab.lab",
    "down": "netlab.lab",
    "Lab": "netlab.lab",
    "StepFailed": "netlab.run.runner",
    "Interrupted": "netlab.run.runner",
    "LabConflict": "netlab.run.runner",
    "LabBusy": "netlab.run.store",
    "export_script": "netlab.render.export",
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
