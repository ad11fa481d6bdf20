"""Checking a live lab: its status, the documents' connectivity checks, and doctor.

Reads journals and probes the kernel of a host, local or remote; changes
nothing. May import every stage below it (remote, run, render, model).
"""
