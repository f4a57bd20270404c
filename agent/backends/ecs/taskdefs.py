"""Task definitions: registered once per distinct content, found again by every agent.

A definition is identified by a digest of its normalised content (the register request:
defaults made explicit, empty fields dropped, environment and secrets sorted). The digest
is stored on the registered revision as the tag `flow-agent.io/taskdef-hash`, so any agent
- a replica, or this one after a restart - finds it with `ListTaskDefinitions(familyPrefix)`
and `DescribeTaskDefinition(include=["TAGS"])` instead of registering yet another revision
(Prefect's cache lived in one worker's memory: #16485, prefect-aws #180). Within an agent,
one lock per (credentials, family, digest) makes a burst of runs register at most once,
and the answer is cached, so the common launch makes no task-definition call at all.

Cleanup policy: revisions are kept, because they are what later runs reuse. With
`auto_deregister_task_definition` (a block's default), registering a new revision of a
family deregisters the older revisions *this agent family tagged* (never a definition
registered by someone else), so a family keeps one live flow-agent revision instead of
one per configuration change. Deregistering only marks a revision INACTIVE: running
tasks are unaffected; a launch that meets an INACTIVE cached revision registers again.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any, Final

import anyio

from agent.backends.base import BackendError, BackendUnavailable
from agent.backends.ecs.aws import Aws
from agent.backends.sdk import SdkCalls
from agent.observe.logging import get_logger

__all__ = ["HASH_TAG", "TaskDefinitions", "digest", "normalise"]

HASH_TAG: Final = "flow-agent.io/taskdef-hash"
_LOOKUP_DEPTH: Final = 25  # newest ACTIVE revisions of a family compared on a cache miss
_SORTED_LISTS: Final = ("environment", "secrets", "environmentFiles")

log = get_logger("agent.backends.ecs")


def normalise(value: Any) -> Any:
    """The content that decides equality: ECS defaults explicit, empties gone, lists sorted."""
    if isinstance(value, Mapping):
        return {k: normalise(v) for k, v in value.items() if _kept(v)}
    if isinstance(value, list):
        return [normalise(v) for v in value if _kept(v)]
    return value


def _kept(value: Any) -> bool:
    return value is False or value == 0 or bool(value)


def digest(task_definition: Mapping[str, Any]) -> str:
    td = dict(task_definition)
    td["tags"] = [t for t in td.get("tags") or [] if t.get("key") != HASH_TAG]
    td.setdefault("networkMode", "bridge")
    containers = []
    for container in td.get("containerDefinitions") or []:
        container = dict(container)
        container.setdefault("essential", True)
        for key in _SORTED_LISTS:
            if isinstance(container.get(key), list):
                container[key] = sorted(container[key], key=lambda i: json.dumps(i, sort_keys=True))
        containers.append(container)
    td["containerDefinitions"] = containers
    canonical = json.dumps(normalise(td), sort_keys=True, separators=(",", ":"), default=str)
    return hashlib.sha256(canonical.encode()).hexdigest()[:32]


def _revision(arn: str) -> tuple[str, int]:
    """("family", revision) of a task definition ARN."""
    name = arn.rsplit("/", 1)[-1]
    family, _, revision = name.rpartition(":")
    return family, int(revision) if revision.isdigit() else 0


class TaskDefinitions:
    """The agent's view of the task definitions it runs, shared through AWS tags."""

    def __init__(self, sdk: SdkCalls) -> None:
        self._sdk = sdk
        self._cache: dict[tuple[str, str, str], str] = {}
        self._locks: dict[tuple[str, str, str], anyio.Lock] = {}

    async def resolve(self, aws: Aws, td: Mapping[str, Any], *, deregister_superseded: bool) -> str:
        """The ARN of an ACTIVE revision equal to `td`: cached, found by tag, or registered."""
        key = (aws.key, str(td.get("family")), digest(td))
        if key in self._cache:
            return self._cache[key]
        lock = self._locks.setdefault(key, anyio.Lock())

        async def find_or_register() -> str:
            # retried as a whole: after a throttled register, another agent's registration
            # of the same content is usually there to be found
            return await self._find_or_register(aws, td, key[2], deregister_superseded)

        async with lock:
            if key not in self._cache:
                self._cache[key] = await self._sdk.retry.call(
                    find_or_register, retry_on=(BackendUnavailable,)
                )
        return self._cache[key]

    def forget(self, arn: str) -> None:
        """Drop a cached revision (it was found INACTIVE)."""
        for key in [k for k, v in self._cache.items() if v == arn]:
            del self._cache[key]

    async def _find_or_register(self, aws: Aws, td: Mapping[str, Any], wanted: str, deregister: bool) -> str:
        family = str(td.get("family"))
        found, superseded = await self._lookup(aws, family, wanted)
        if found:
            log.info("reusing the ECS task definition", task_definition=found)
            return found
        tags = [t for t in td.get("tags") or [] if t.get("key") != HASH_TAG]
        request = {**td, "tags": [*tags, {"key": HASH_TAG, "value": wanted}]}
        answer = await self._sdk.once(
            lambda: aws.ecs.register_task_definition(**request), "registering the ECS task definition"
        )
        arn = str(answer["taskDefinition"]["taskDefinitionArn"])
        log.info("registered an ECS task definition", task_definition=arn)
        if deregister:
            await self._deregister(aws, superseded)
        return arn

    async def _lookup(self, aws: Aws, family: str, wanted: str) -> tuple[str | None, list[str]]:
        """An ACTIVE revision tagged `wanted`, and our other tagged revisions of the family."""
        answer = await self._sdk.once(
            lambda: aws.ecs.list_task_definitions(familyPrefix=family, status="ACTIVE", sort="DESC"),
            "listing ECS task definitions",
        )
        arns = [a for a in answer.get("taskDefinitionArns") or [] if _revision(a)[0] == family]
        arns.sort(key=lambda a: _revision(a)[1], reverse=True)  # newest first, whatever the API did
        ours: list[str] = []
        for arn in arns[:_LOOKUP_DEPTH]:
            described = await self._sdk.once(
                lambda arn=arn: aws.ecs.describe_task_definition(taskDefinition=arn, include=["TAGS"]),
                "describing an ECS task definition",
            )
            tags = {t.get("key"): t.get("value") for t in described.get("tags") or []}
            if tags.get(HASH_TAG) == wanted:
                return arn, ours
            if HASH_TAG in tags:
                ours.append(arn)
        return None, ours

    async def _deregister(self, aws: Aws, arns: list[str]) -> None:
        for arn in arns:
            try:
                await self._sdk.once(
                    lambda arn=arn: aws.ecs.deregister_task_definition(taskDefinition=arn),
                    "deregistering an ECS task definition",
                )
            except BackendError as exc:  # housekeeping: never fails a launch
                log.warning(
                    "could not deregister a superseded task definition", task_definition=arn, error=str(exc)
                )
                continue
            self.forget(arn)
            log.info("deregistered a superseded ECS task definition", task_definition=arn)
