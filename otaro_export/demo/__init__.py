"""``otaro demo``: one artifact, loaded once, a precision per task: the phone-app story.

* :mod:`.tasks`: the task script (``choose`` and ``generate`` tasks);
* :mod:`.policy`: the precision policy (task name / kind -> E5M3..E5M8);
* :mod:`.harness`: loads the artifact once and runs the script, reporting
  precision, latency, tokens/s and resident memory per task;
* :mod:`.mobile_bundle` (+ :mod:`.token_bytes`): the model + tokenized tasks
  for the Android/iOS example apps (``otaro demo --write-mobile-bundle``).

The built-in policy and task script are ``default_policy.toml`` and
``default_tasks.toml`` beside this file (copies: examples/policy.toml, examples/tasks.toml).
"""

from otaro_export.demo.harness import DemoReport, TaskResult, run_demo, score_options
from otaro_export.demo.policy import Policy, load_policy, parse_policy, parse_precision
from otaro_export.demo.tasks import Task, load_tasks, parse_tasks
from otaro_export.demo.toml_io import DemoConfigError

__all__ = [
    "DemoConfigError",
    "DemoReport",
    "Policy",
    "Task",
    "TaskResult",
    "load_policy",
    "load_tasks",
    "parse_policy",
    "parse_precision",
    "parse_tasks",
    "run_demo",
    "score_options",
]
