"""Azure Container Instances backend (extra `azure`): see `backend.py`.

`infrastructure_pid` is the container group's ARM resource id:

    /subscriptions/<subscription>/resourceGroups/<resource group>
        /providers/Microsoft.ContainerInstance/containerGroups/<name>

(one string, no spaces). None of its parts may contain "/", so any agent can parse it back
and delete the group.
"""

from agent.backends.aci.backend import AciBackend

__all__ = ["AciBackend"]
