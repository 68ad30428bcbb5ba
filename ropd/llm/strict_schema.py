"""The JSON-schema subset that OpenAI's strict structured outputs accept, and its one tightening for local decoding.

Every backend gets the same reply schema: OpenAI and vLLM with `strict: true`, xgrammar in this process.
Strict mode compiles the schema into a decoding grammar and refuses anything outside its subset with
HTTP 400, after which a client falls back to plain JSON mode and loses constrained decoding. So our
schemas keep to the portable core: objects with fixed property names, all required and no others;
enums; `anyOf` (with `{"type": "null"}` for an empty slot); arrays of one item schema; `$ref` into the
root `$defs`. Current OpenAI models also take `pattern`, `format`, numeric ranges and `minItems`/`maxItems`,
but fine-tuned models, older deployments and other OpenAI-compatible servers do not, and no strict mode
takes `prefixItems`, `const` or string lengths, so none of these is used.

A bound the subset cannot state as a keyword (a text length, an exact array length) is stated in the
description, where a remote model reads it, by `bounded_text` / `exact_array`; validation holds every
judge to it, and `tighten_for_local` turns the same words into keywords for the local grammar, so a
small local model stops inside its token budget. One schema, one statement of each bound.
"""

from __future__ import annotations

import copy
import re
from collections.abc import Mapping
from typing import Any

# Keywords of the portable strict subset; any other keyword is refused, as OpenAI refuses unknown ones.
ALLOWED_KEYWORDS = frozenset({"type", "description", "title", "properties", "required", "additionalProperties",
                              "items", "enum", "anyOf", "$ref", "$defs"})
TYPES = frozenset({"string", "number", "integer", "boolean", "object", "array", "null"})
MAX_NESTING = 10  # OpenAI: at most 10 levels of object nesting
MAX_PROPERTIES = 5000  # OpenAI: at most 5000 object properties in all

_AT_MOST_CHARS = re.compile(r"At most (\d+) characters\.$")
_EXACTLY_ITEMS = re.compile(r"Exactly (\d+) items\.$")

Path = tuple[str, ...]


def strict_violations(schema: dict[str, Any]) -> list[str]:
    """Every reason OpenAI strict mode (portable subset) would refuse `schema`, each naming its JSON path.

    Worded as OpenAI words its 400 ("In context=('properties', 'x'), 'minLength' is not permitted."), so
    a scripted server can refuse a schema exactly as the real service does; [] means strict mode accepts it.
    """
    problems: list[str] = []
    defs = schema.get("$defs") if isinstance(schema, dict) else None
    defs = defs if isinstance(defs, dict) else {}
    n_properties = 0

    def check(node: Any, path: Path, depth: int) -> None:
        nonlocal n_properties
        where = f"In context={path!r},"
        if not isinstance(node, dict):
            problems.append(f"{where} schema must be a JSON object, got {node!r}.")
            return
        for key in node:
            if key not in ALLOWED_KEYWORDS:
                problems.append(f"{where} {key!r} is not permitted.")
        if "$defs" in node and path:
            problems.append(f"{where} '$defs' is only permitted at the root.")
        types = node.get("type")
        type_list = types if isinstance(types, list) else [types] if types is not None else []
        for t in type_list:
            if t not in TYPES:
                problems.append(f"{where} type {t!r} is not supported.")
        if not ({"type", "anyOf", "enum", "$ref"} & node.keys()):
            problems.append(f"{where} schema must have a 'type', 'anyOf', 'enum' or '$ref'.")
        if "$ref" in node:
            ref = node["$ref"]
            if ref != "#" and not (isinstance(ref, str) and ref.startswith("#/$defs/") and ref[8:] in defs):
                problems.append(f"{where} '$ref' {ref!r} does not resolve to an entry of the root '$defs'.")
        if "enum" in node and not (isinstance(node["enum"], list) and node["enum"]):
            problems.append(f"{where} 'enum' must be a non-empty array.")
        if "anyOf" in node:
            if not path:
                problems.append(f"{where} the root schema must be an object, not 'anyOf'.")
            branches = node["anyOf"]
            if not (isinstance(branches, list) and branches):
                problems.append(f"{where} 'anyOf' must be a non-empty array of schemas.")
            else:
                for i, branch in enumerate(branches):
                    check(branch, (*path, "anyOf", str(i)), depth)
        if not path and "object" not in type_list:
            problems.append(f"{where} the root schema must be of type 'object'.")
        if "object" in type_list or "properties" in node:
            depth += 1
            if depth > MAX_NESTING:
                problems.append(f"{where} objects are nested {depth} deep, at most {MAX_NESTING} are permitted.")
            props = node.get("properties", {})
            if not isinstance(props, dict):
                problems.append(f"{where} 'properties' must be an object.")
                props = {}
            n_properties += len(props)
            if node.get("additionalProperties") is not False:
                problems.append(f"{where} 'additionalProperties' is required to be supplied and to be false.")
            required = node.get("required")
            if not isinstance(required, list):
                problems.append(f"{where} 'required' is required to be supplied and to be an array including "
                                "every key in properties.")
            else:
                if missing := [k for k in props if k not in required]:
                    problems.append(f"{where} 'required' is required to be supplied and to be an array including "
                                    f"every key in properties. Missing {missing[0]!r}.")
                if extra := [k for k in required if k not in props]:
                    problems.append(f"{where} extra required key {extra[0]!r} supplied.")
            for name, sub in props.items():
                check(sub, (*path, "properties", name), depth)
        if "array" in type_list or "items" in node:
            if "items" not in node:
                problems.append(f"{where} 'items' is required for an array.")
            elif node["items"] is False or node["items"] is True:
                problems.append(f"{where} 'items' must be a schema, not {str(node['items']).lower()}.")
            else:
                check(node["items"], (*path, "items"), depth)

    check(schema, (), 0)
    for name, sub in defs.items():
        check(sub, ("$defs", name), 0)
    if n_properties > MAX_PROPERTIES:
        problems.append(f"In context=(), the schema has {n_properties} object properties, at most "
                        f"{MAX_PROPERTIES} are permitted.")
    return problems


def strict_object(properties: Mapping[str, dict[str, Any]]) -> dict[str, Any]:
    """The only object strict mode takes: these properties, every one required, no others."""
    return {"type": "object", "properties": dict(properties), "required": list(properties),
            "additionalProperties": False}


def nullable(schema: dict[str, Any]) -> dict[str, Any]:
    """`schema` or null: how strict mode spells an optional value (every property stays required)."""
    return {"anyOf": [schema, {"type": "null"}]}


def bounded_text(max_chars: int, description: str) -> dict[str, Any]:
    """A non-empty string of at most `max_chars`, stated in words: strict mode takes no `maxLength`."""
    return {"type": "string", "description": f"{description} At most {max_chars} characters."}


def exact_array(items: dict[str, Any], n: int, description: str) -> dict[str, Any]:
    """An array of exactly `n` items, stated in words: strict mode takes no `minItems`/`maxItems`."""
    return {"type": "array", "items": items, "description": f"{description} Exactly {n} items."}


def tighten_for_local(schema: dict[str, Any]) -> dict[str, Any]:
    """The grammar-side copy of `schema`: the bounds `bounded_text`/`exact_array` state in words become keywords.

    xgrammar takes length keywords, so the local decoder enforces what validation would otherwise reject,
    and a small model cannot run a criterion past the token budget. The input is not modified.
    """
    out = copy.deepcopy(schema)

    def walk(node: Any) -> None:
        if isinstance(node, list):
            for item in node:
                walk(item)
            return
        if not isinstance(node, dict):
            return
        desc = node.get("description")
        if isinstance(desc, str):
            if node.get("type") == "string" and (m := _AT_MOST_CHARS.search(desc)):
                node.update(minLength=1, maxLength=int(m.group(1)))
            if node.get("type") == "array" and (m := _EXACTLY_ITEMS.search(desc)):
                node.update(minItems=int(m.group(1)), maxItems=int(m.group(1)))
        for key in ("properties", "$defs"):
            if isinstance(node.get(key), dict):
                walk(list(node[key].values()))
        walk(node.get("items"))
        walk(node.get("anyOf"))

    walk(out)
    return out
