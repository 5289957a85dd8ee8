"""OpenMP threads that wait at a barrier sleep instead of spinning; imported by the CLI before torch loads.

OpenMP reads ``OMP_WAIT_POLICY`` once, when torch loads its runtime, so this
must run before the process's first ``import torch``: :mod:`bigl.cli` imports
it first (``tests/bigl/test_cli.py`` checks the order). A policy the user set
is kept.

Why: every torch operation splits its work over the intra-op threads and ends
at a barrier. By default a thread that finishes its share spins there; on a
shared machine (a training job beside the CLI, the usual case on a 2-core
workstation) the other thread is waiting for a core, and the spinning costs
the process its CPU share. Measured (docs/benchmarks.md, "CPU inference
speed"): the segmenter over a whole-brain volume took 0.40-0.47 x a 2-thread
matmul reference with spinning threads and 0.21-0.22 x with sleeping ones,
the same as with one thread; on a quiet machine a sleeping thread costs a
wake-up (microseconds) per operation of milliseconds.
"""

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
