"""``workbook sweep SPEC``: run an experiment spec's trials as Ray tasks.

    workbook sweep digits-smoke                       # local Ray, results in runs/digits-smoke
    workbook sweep full --address ray://head:10001    # a cluster (or RAY_ADDRESS)

Every trial is one Ray task that calls the one training function
(``qatlab.train.run_trial``) and returns its record, its log and its checkpoints to
this process, which writes them (``workbook.results``): a cluster needs no shared
filesystem. A rerun into the same directory resumes: trials with an ``ok`` result
are not run again, failed and missing ones are.

FP32 pretraining is a Ray task of its own, one per FP32 configuration (``fp32_key``):
its result, the checkpoint's bytes, is an argument of every trial that starts from
it, so Ray runs those trials after it, on any node, and none pretrains it again.
A spec's ``mixed:`` block adds a plan task per base config after that task; the
trials its configurations become are submitted when it ends.

Failures: a trial that raises is recorded ``failed`` with its traceback (run_trial
never raises); a worker process or node that dies is Ray's business — the task is
retried up to ``resources.max_retries`` times, then recorded ``failed`` with
``failure: infra`` and the attempts the driver saw start (the message gives the
same count). A failed FP32 task fails its trials with its error. Results the disk
refuses (full, read-only) fail the trial with ``failure: disk`` and leave its folder
as it was; a rerun runs it. Before anything runs: a folder holding another spec's
results is refused (``--force`` moves them aside), and so is a per-trial request
no node can satisfy (unless an autoscaler may add one). The command exits 1 when
any trial of the spec failed, after all results are written, 2 for usage errors,
130 when interrupted.

The modules, one job each: ``cli`` (arguments, joining Ray), ``plan`` (what runs),
``worker`` and ``node`` (a trial inside its task), ``fp32`` (FP32 models shared as
task results), ``tasks`` (the remote functions), ``cluster`` (capacity, GPUs),
``flight`` (tasks in flight, which of them run), ``mixed`` (a spec's ``mixed:``
block: plan tasks, the trials they add, their hardware costs), ``driver`` (submit, wait, record),
``progress``, ``records`` and ``summary``. None imports torch or Ray at import time
(``workbook --help``).
"""

from __future__ import annotations

from workbook.sweep.cli import add_arguments, connect, positive_int, run
from workbook.sweep.driver import run_sweep
from workbook.sweep.plan import MODES, plan
from workbook.sweep.summary import SweepSummary
from workbook.sweep.worker import LOG_TAIL_BYTES, execute_trial

__all__ = [
    "LOG_TAIL_BYTES", "MODES", "SweepSummary", "add_arguments", "connect", "execute_trial", "plan", "positive_int",
    "run", "run_sweep",
]  # fmt: skip
