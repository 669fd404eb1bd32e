"""Type checks of request fields against api/types.go: a wrong type is a 400 that names the field, never a 500 further in."""

from __future__ import annotations

from typing import Any

from .errors import ApiError

INT64 = (-(2**63), 2**63 - 1)  # Go's int, which every integer field of Ollama's API is


def _is(value: Any, kind: str) -> bool:
    if kind == "string":
        return isinstance(value, str)
    if kind == "boolean":
        return isinstance(value, bool)
    if kind == "integer":  # orjson reads 2.0 and numbers past 2^64 as floats; Go's json takes whole ones
        return isinstance(value, (int, float)) and not isinstance(value, bool) and float(value).is_integer()
    if kind == "number":
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if kind == "object":
        return isinstance(value, dict)
    if kind == "array":
        return isinstance(value, list)
    if kind == "array of strings":
        return isinstance(value, list) and all(isinstance(v, str) for v in value)
    raise AssertionError(kind)


def check(body: dict[str, Any], types: dict[str, str], where: str = "") -> None:
    """Every key of `types` present in `body` and not null must have its type."""
    for key, kind in types.items():
        value = body.get(key)
        if value is not None and not _is(value, kind):
            raise ApiError(400, f'field "{where}{key}" must be of type {kind}')


def integer(value: Any, name: str, low: int = INT64[0], high: int = INT64[1]) -> int:
    """A whole JSON number within [low, high] (Go's int64 unless narrower)."""
    if not _is(value, "integer"):
        raise ApiError(400, f'field "{name}" must be of type integer')
    number = int(value)
    if not low <= number <= high:
        raise ApiError(400, f'field "{name}" must be between {low} and {high}')
    return number


# api.Message and api.ToolCall: what a template may index into.
_MESSAGE = {"role": "string", "content": "string", "thinking": "string", "images": "array of strings",
            "tool_calls": "array", "tool_name": "string", "tool_call_id": "string"}  # fmt: skip
_FUNCTION = {"name": "string", "index": "integer"}


def message(m: Any, where: str) -> None:
    """One chat message: its fields' types, and each tool call an object whose `function` is an
    object with a string name and object (or JSON-string) arguments."""
    if not isinstance(m, dict):
        raise ApiError(400, f'field "{where}" must be of type object')
    check(m, _MESSAGE, where + ".")
    for i, call in enumerate(m.get("tool_calls") or []):
        at = f"{where}.tool_calls[{i}]"
        if not isinstance(call, dict):
            raise ApiError(400, f'field "{at}" must be of type object')
        check(call, {"function": "object", "id": "string", "type": "string"}, at + ".")
        fn = call.get("function") or {}
        check(fn, _FUNCTION, at + ".function.")
        arguments = fn.get("arguments")
        if arguments is not None and not isinstance(arguments, (dict, str)):
            raise ApiError(400, f'field "{at}.function.arguments" must be of type object')


def tools(value: Any) -> None:
    """api.Tools: an array of objects, each `function` (when present) an object with a string name."""
    if value is None:
        return
    if not isinstance(value, list):
        raise ApiError(400, 'field "tools" must be of type array')
    for i, tool in enumerate(value):
        if not isinstance(tool, dict):
            raise ApiError(400, f'field "tools[{i}]" must be of type object')
        check(tool, {"type": "string", "function": "object"}, f"tools[{i}].")
        check(tool.get("function") or {}, {"name": "string", "description": "string", "parameters": "object"},
              f"tools[{i}].function.")  # fmt: skip
