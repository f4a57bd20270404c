"""AWS ECS: each flow run is one ECS task (extra `ecs`, boto3).

backend.py   EcsBackend: launch (RunTask), wait, kill (StopTask), inspect, parse_pid
taskdefs.py  task definitions reused by content digest, shared across agents by a tag
watch.py     one loop for all tasks: batched DescribeTasks, start deadlines, outcomes
aws.py       sessions and clients per credentials; SDK errors mapped in one place
"""

from __future__ import annotations

from agent.backends.ecs.backend import EcsBackend

__all__ = ["EcsBackend"]
