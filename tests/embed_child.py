"""Run the embed stage on a test world from one of several processes (tests/test_embed_parallel.py).

accelerate launch --multi_gpu --num_processes 2 tests/embed_child.py ROOT BATCH_SIZE TEXT_MODE
"""

import json
import sys

import torch

from vital.embed import run
from vital.params import EmbedParams
from vital.paths import Paths

torch.set_num_threads(1)
root, batch_size, text_mode = sys.argv[1], int(sys.argv[2]), sys.argv[3]
m = run(EmbedParams(batch_size=batch_size, text_mode=text_mode), Paths(root), force=True)
# the stage's record: rank 0's (with data_parallel) is the one run_stage writes as the evidence
# one write of one line, flushed: both ranks share the pipe, and print's text and newline are two writes that
# the other rank's line can land between
line = json.dumps({"rank_result_candidates": m["candidates"], "data_parallel": m.get("data_parallel")}) + "\n"
sys.stdout.write(line)
sys.stdout.flush()
