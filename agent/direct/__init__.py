"""Direct runs: a command on a block's or a work pool's infrastructure, with no flow run.

The same kinds, customizations and backends as flow runs (`build.py`), run to the end with
Ctrl-C meaning kill and clean up (`run.py`), by one session (`session.py`), or detached with
a follower that keeps the output and does the cleanup (`detach.py`).
"""

from agent.direct.build import DIRECT_LABEL, DirectBuilder, DirectError, Request, Target, direct_name
from agent.direct.run import Result
from agent.direct.session import DirectSession, InfraId

__all__ = [
    "DIRECT_LABEL",
    "DirectBuilder",
    "DirectError",
    "DirectSession",
    "InfraId",
    "Request",
    "Result",
    "Target",
    "direct_name",
]
