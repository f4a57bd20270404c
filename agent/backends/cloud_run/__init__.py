"""Google Cloud Run v2 jobs (extra `gcp`); see backend.py for the design.

backend.py  CloudRunBackend: launch (a job per run, one execution), wait, kill, inspect, find
steps.py    every SDK call, through SdkCalls: create/run without duplicates, read, cancel, delete
watch.py    the watch engine's platform: one read per execution, start deadline, job cleanup
client.py   the run_v2 clients and credentials, and the one classifier of SDK errors
spec.py     the job to create from the payload (v1 bodies translated to v2)
status.py   how an execution ended, from its conditions and its tasks' last attempts
output.py   the execution's output: its Cloud Logging entries, once, in order, masked
system_log.py  why the system killed a task: the execution's system log, read once
"""

from agent.backends.cloud_run.backend import CloudRunBackend

__all__ = ["CloudRunBackend"]
