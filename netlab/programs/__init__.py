"""Programs netlab runs inside a lab's namespaces: the lab service and the tcp/http client.

Standard library only, and they import nothing of netlab, so each can be
shipped as source to a remote host's python3 (netlab.remote.ssh). The lowest
stage: every other stage may import it.
"""
