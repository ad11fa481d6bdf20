"""Rendering: a Topology as the ordered Steps of a Plan, and a Plan as a bash script.

Pure: it fills the Jinja2 templates (templates/*.j2) and runs nothing.
May import netlab.model and below, never the stages that run or check.
"""
