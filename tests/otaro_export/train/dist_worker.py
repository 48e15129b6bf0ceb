"""One rank of tuning jobs for test_distributed.py: ``torchrun --standalone --nproc-per-node N dist_worker.py JOBS``.

JOBS is a JSON file holding a list of jobs, run one after the other in the same processes
(one torchrun start for several runs). A job: ``config`` (TuneConfig fields), ``output``,
``resume``, ``stop_after`` (stop as if killed once that many steps are done; only the
checkpoints written before remain).
"""

import json
import sys

import torch

from otaro_export.train.distributed import DistContext
from otaro_export.train.trainer import Tuner
from otaro_export.train.tune_config import TuneConfig


class Killed(Exception):
    pass


def run(job: dict) -> None:
    stop_after = job.get("stop_after")

    def on_step(step: int) -> None:
        if stop_after is not None and step == stop_after:
            raise Killed

    tuner = Tuner(TuneConfig(**job["config"]), progress=False, log=lambda line: None)
    try:
        tuner.run(job["output"], resume=job.get("resume", False), on_step=on_step)
    except Killed:
        pass


if __name__ == "__main__":
    torch.set_num_threads(1)
    group = DistContext.from_env("cpu")  # one process group for all jobs: gloo cannot set one up twice
    try:
        with open(sys.argv[1], encoding="utf-8") as f:
            for job in json.load(f):
                run(job)
    finally:
        group.close()
