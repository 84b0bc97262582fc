"""Turns JSON answers into the generated dataclasses (types.py), field by field from their annotations.

Tolerant by design: fields a newer server adds are ignored, fields it omits are None, so an older SDK keeps working.
"""

import dataclasses
import functools
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


@functools.cache
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def parse(tp: Any, value: Any) -> Any:
    if value is None:
        return None
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        for option in typing.get_args(tp):
            if dataclasses.is_dataclass(option) and isinstance(value, dict):
                return parse(option, value)
        return value
    if origin is list and isinstance(value, list):
        (item,) = typing.get_args(tp)
        return [parse(item, v) for v in value]
    if origin is dict and isinstance(value, dict):
        _, item = typing.get_args(tp)
        return {k: parse(item, v) for k, v in value.items()}
    if isinstance(tp, type) and dataclasses.is_dataclass(tp) and isinstance(value, dict):
        hints = _hints(tp)
        return tp(**{f.name: parse(hints[f.name], value.get(f.name)) for f in dataclasses.fields(tp)})
    return value


def to_dict(obj: Any) -> Any:
    """The JSON shape of a parsed answer (for logging or re-serialising)."""
    return dataclasses.asdict(obj) if dataclasses.is_dataclass(obj) else obj
