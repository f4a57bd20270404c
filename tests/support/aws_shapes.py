"""Strict checks of AWS wire answers against botocore's own service model.

botocore's parsers keep only the members a shape declares, so a double that invents a
field (or gives one the wrong type) would pass unnoticed through a boto3 client. These
helpers read the raw JSON of an answer and walk it against the operation's output shape:
an unknown member, a wrong type or a bad enum value is reported with its path.
"""

from __future__ import annotations

import json
from typing import Any

import botocore.session
from botocore.model import ListShape, MapShape, Shape, StructureShape
from botocore.parsers import create_parser

__all__ = ["output_shape", "parse_answer", "shape_errors"]

_session = botocore.session.get_session()


def output_shape(service: str, operation: str) -> StructureShape:
    model = _session.get_service_model(service)
    shape = model.operation_model(operation).output_shape
    assert isinstance(shape, StructureShape)
    return shape


def parse_answer(service: str, operation: str, body: dict[str, Any]) -> dict[str, Any]:
    """The answer as a boto3 client returns it (timestamps as datetimes, ...)."""
    model = _session.get_service_model(service)
    parser = create_parser(model.metadata["protocol"])
    raw = {"body": json.dumps(body).encode(), "headers": {}, "status_code": 200}
    parsed = parser.parse(raw, output_shape(service, operation))
    parsed.pop("ResponseMetadata", None)
    return parsed


def shape_errors(value: Any, shape: Shape, path: str = "$") -> list[str]:
    """Every place where `value` (raw JSON) departs from `shape`; empty when it conforms."""
    kind = shape.type_name
    if isinstance(shape, StructureShape):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a structure"]
        errors: list[str] = []
        members = {m.serialization.get("name", name): m for name, m in shape.members.items()}
        for key, item in value.items():
            if key not in members:
                errors.append(f"{path}.{key}: not a member of {shape.name}")
            else:
                errors += shape_errors(item, members[key], f"{path}.{key}")
        return errors
    if isinstance(shape, ListShape):
        if not isinstance(value, list):
            return [f"{path}: {type(value).__name__}, not a list"]
        return [e for i, item in enumerate(value) for e in shape_errors(item, shape.member, f"{path}[{i}]")]
    if isinstance(shape, MapShape):
        if not isinstance(value, dict):
            return [f"{path}: {type(value).__name__}, not a map"]
        return [e for k, item in value.items() for e in shape_errors(item, shape.value, f"{path}[{k!r}]")]
    return _scalar_errors(value, shape, kind, path)


def _scalar_errors(value: Any, shape: Shape, kind: str, path: str) -> list[str]:
    expected: dict[str, tuple[type, ...]] = {
        "string": (str,),
        "integer": (int,),
        "long": (int,),
        "boolean": (bool,),
        "double": (int, float),
        "float": (int, float),
        "timestamp": (int, float, str),
        "blob": (str,),
    }
    types = expected.get(kind)
    if types is None:
        return [f"{path}: unchecked shape type {kind}"]
    if not isinstance(value, types) or (kind in ("integer", "long") and isinstance(value, bool)):
        return [f"{path}: {type(value).__name__} {value!r}, not {kind}"]
    enum = getattr(shape, "enum", None) or []
    if enum and value not in enum:
        return [f"{path}: {value!r} is not one of {shape.name}'s values"]
    return []
