"""One tune in a child process, for tests/test_tune.py to SIGKILL.

python tests/tune_child.py WORLD NAME SLEEP_S    (with the repository root on PYTHONPATH)

Tunes with test_tune's params and outputs under WORLD. From its first checkpoint on it sleeps SLEEP_S
after every optimizer step, which gives the parent time to kill it before the end and costs the test
nothing before that checkpoint.
"""

import sys
import time
from pathlib import Path

from tests.test_tune import _params, _tune


def main() -> None:
    world, name, sleep_s = Path(sys.argv[1]), sys.argv[2], float(sys.argv[3])
    tp = _params()

    def slow(step: int, loss: float) -> None:
        if step >= tp.checkpoint_every:
            time.sleep(sleep_s)

    _tune(world, name, tp, on_step=slow)


if __name__ == "__main__":
    main()
