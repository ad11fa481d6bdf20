"""Remote hosts over SSH: one connection per run, an executor there, its journal and lock.

A run executor and store for a host at the other end of ssh, so the runner
works there unchanged. May import netlab.run and below, never check.
"""
