"""`python -m netlab`: the same CLI as the `netlab` console script."""

from netlab.cli import main

main()
