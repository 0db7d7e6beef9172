import os
import sys

# libgomp's threads spin while they wait for work; on shared cores (a class server, other
# processes) spinning threads take whole time slices from each other. Measured on 2 cores at load
# average 14: a 16-token SmolLM2 generation took 33 s spinning and 3.2 s passive
# (docs/performance.md). It must be set before torch loads OpenMP; a setting already made wins.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

from app.cli import main  # noqa: E402  # after the OpenMP setting, which torch reads once

sys.exit(main())
