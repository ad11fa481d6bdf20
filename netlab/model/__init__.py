"""The topology model: what a lab is, before any command exists.

Topology files and the built-in labs (labs/*.yaml) become validated, frozen
dataclasses; bad input stops here. Sandbox naming and the generated star lab
live here too. May import netlab.errors and netlab.programs, nothing above.
"""
