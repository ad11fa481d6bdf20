"""Running a Plan on a host: the executor, the batches, the runner, its journal and lock.

Applies Steps through plumbum with a write-ahead journal and undoes them on
failure or `down`. May import netlab.render and below, never remote or check.
"""
