"""Rerun select and bakeoff on a world through their stage entries, under the float kernels and thread count
the environment gives, and print every verdict vital/results.py states from the metrics they wrote
(tests/test_conclusions.py). Prints one JSON line: kernels, threads, CPU seconds, findings.

python tests/conclusions_child.py ROOT PARAMS_JSON [STAGES]   (STAGES: comma-separated, default select,bakeoff)
"""

import json
import resource
import sys

import vital  # noqa: F401  (pins the kernels unless the environment chose them)
from vital.determinism import pin_threads
from vital.params import parse_params
from vital.paths import Paths
from vital.pipeline import STAGES
from vital.results import findings
from vital.stage import call

threads = pin_threads()
import torch  # noqa: E402  (after the pins)

paths, params = Paths(sys.argv[1]), parse_params(json.loads(sys.argv[2]))
for name in (sys.argv[3] if len(sys.argv) > 3 else "select,bakeoff").split(","):
    call(STAGES[name], params, paths)
usage = resource.getrusage(resource.RUSAGE_SELF)
print(
    json.dumps(
        {
            "kernels": torch.backends.cpu.get_cpu_capability(),
            "threads": torch.get_num_threads(),
            "cpu_s": round(usage.ru_utime + usage.ru_stime, 2),
            "findings": findings(paths),
        }
    )
)
