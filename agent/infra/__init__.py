"""Job configuration: from a work pool's base job template to a typed backend config.

The path of one run:

1. `merge_job_variables` - deployment job variables, then the run's on top;
2. `resolve_job_configuration` - Prefect's algorithm (defaults, env merging, dot-keys,
   `{{ }}` templating with `apply_values`) applied to the pool's base job template;
3. a per-backend validator such as `process_config` - a frozen pydantic model, or an
   `InfraError` naming the field, the source and the fix.

`{{ prefect.blocks.* }}` and `{{ prefect.variables.* }}` placeholders survive step 2
untouched (`find_placeholders` lists them) so that a later pass can fetch them from the
server. `default_base_job_template` gives the template a new pool is created with.
"""

from __future__ import annotations

from agent.infra.defaults import default_base_job_template, known_pool_types
from agent.infra.merge import expand_dot_keys, merge_job_variables, resolve_job_configuration
from agent.infra.process import ProcessJobConfig, process_config
from agent.infra.templating import (
    BLOCK_PREFIX,
    VARIABLE_PREFIX,
    InfraError,
    NotSet,
    apply_values,
    find_placeholders,
)

__all__ = [
    "BLOCK_PREFIX",
    "VARIABLE_PREFIX",
    "InfraError",
    "NotSet",
    "ProcessJobConfig",
    "apply_values",
    "default_base_job_template",
    "expand_dot_keys",
    "find_placeholders",
    "known_pool_types",
    "merge_job_variables",
    "process_config",
    "resolve_job_configuration",
]
