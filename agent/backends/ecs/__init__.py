"""AWS ECS: each flow run is one ECS task (extra `ecs`, boto3).

backend.py   EcsBackend: launch (RunTask), find, wait, kill (StopTask), inspect, parse_pid
taskdefs.py  task definitions reused by content digest, shared across agents by a tag
watch.py     the watch engine's ECS platform: batched DescribeTasks, start deadlines, outcomes
lookup.py    a run's task found by its `startedBy` (ListTasks), for an agent that did not launch it
output.py    the flow container's CloudWatch Logs stream, line by line, to the run's output sink
aws.py       sessions and clients per credentials; SDK errors classified in one place
"""

from __future__ import annotations

from agent.backends.ecs.backend import EcsBackend

__all__ = ["EcsBackend"]
