"""Generate a typed Python module from a tracking plan: one function per event.

    stock_order_submit(client, stock_code="600519", side="buy", price=1688.5, quantity=100)

is the same call as

    client.track("stock_order_submit", {"stock_code": "600519", "side": "buy", "price": 1688.5, "quantity": 100})

but a type checker now knows the event's name, which properties exist, which are
required and what values they take, so a typo or a missing property fails in
the editor instead of in the collector's quarantine.

How the plan maps onto Python:

- Every property is a keyword-only argument. Required ones have no default;
  optional ones default to `UNSET`, a sentinel that leaves the property out of
  the event (an explicit `None` is sent as null, where the plan allows null).
- `enum` and `const` become `Literal[...]`; `string`, `integer`, `number`,
  `boolean`, `null` become `str`, `int`, `float`, `bool`, `None`; arrays become
  `list[...]`; objects with declared properties become `TypedDict`s (other
  objects `Mapping[str, object]`); a schema without a type is `object`.
- Names that are not usable as Python names are renamed (`class` -> `class_`,
  `$x` -> `x`, `2fa` -> `p_2fa`); the event still carries the plan's name,
  and the docstring says so. `time` is the keyword for the event's own time, so a
  property named `time` is `time_`.
- The client is the first, positional-only argument: anything with
  `track(event, properties, /, *, time=None)` fits (`TrackingClient`), and the
  function returns what `track` returns, so an asyncio client's call is
  awaited: `await stock_order_submit(async_client, ...)`.
- PII-tagged properties take the raw value; the SDK applies the tag.

The output is deterministic (events sorted by name), formatted as `ruff format`
would leave it, and passes `mypy --strict` and ruff's checks.
"""

from __future__ import annotations

import hashlib
import json
import keyword
import re
import unicodedata
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from ._schemakit import json_kind, types_of
from .model import EventSpec, Plan

__all__ = ["generate_module"]

# Lines are kept within ruff's default width, so the module passes in projects
# that keep the default; maidian's own limit (120) is wider.
LINE_WIDTH: Final = 88

_PY_TYPES: Final = {"string": "str", "integer": "int", "number": "float", "boolean": "bool", "null": "None"}
_TYPE_ORDER: Final = ("string", "integer", "number", "boolean", "array", "object", "null")
_PII_NOTES: Final = {
    "hash": "PII: sent as its keyed hash (the SDK hashes it).",
    "mask": "PII: sent masked (the SDK masks it).",
    "drop": "PII: never sent (the SDK drops it).",
}
# Names the generated module defines or imports at the top level.
_MODULE_NAMES: Final = frozenset(
    {
        "annotations",
        "enum",
        "Mapping",
        "Final",
        "Literal",
        "NotRequired",
        "Protocol",
        "TypedDict",
        "TypeVar",
        "PLAN_NAME",
        "PLAN_VERSION",
        "PLAN_DIGEST",
        "EVENT_NAMES",
        "TrackingClient",
        "Unset",
        "UNSET",
        "CommonProperties",
        "UserProperties",
    }
)


# -- text -----------------------------------------------------------------------------


def _width(text: str) -> int:
    """Display width as ruff measures line length: wide (CJK) characters count twice."""
    if text.isascii():
        return len(text)
    return sum(2 if unicodedata.east_asian_width(ch) in "WF" else 1 for ch in text)


def _wrap(text: str, width: int) -> list[str]:
    """Wrap at spaces, or anywhere between wide characters, within `width` display columns."""
    lines: list[str] = []
    for paragraph in text.split("\n"):
        if _width(paragraph) <= width:
            lines.append(paragraph.rstrip())
            continue
        body = paragraph.lstrip(" ")
        lead = paragraph[: len(paragraph) - len(body)]  # an indented line keeps its indent when wrapped
        lines += [lead + wrapped for wrapped in _wrap_paragraph(body, width - len(lead))]
    return lines


def _wrap_paragraph(text: str, width: int) -> list[str]:
    """Wrap one unindented paragraph."""
    lines: list[str] = []
    line, used, trail = "", 0, 0  # the line, its width without trailing spaces, their count
    for token in re.findall(r"[\u1100-\uffff]|[^\s\u1100-\uffff]+\s*|\s+", text):
        word = token.rstrip()
        if not word:
            line, trail = line + token, trail + len(token)
        elif line.strip() and used + trail + _width(word) > width:
            lines.append(line.rstrip())
            line, used, trail = word, _width(word), len(token) - len(word)
            line += token[len(word) :]
        else:
            line, used, trail = line + token, used + trail + _width(word), len(token) - len(word)
    lines.append(line.rstrip())
    return lines


def _clean(text: str) -> str:
    """Plan text made safe for a docstring or comment: printable, no backslashes or triple quotes."""
    text = text.replace("\r\n", "\n").replace("\r", "\n").replace("\t", " ")
    if not text.replace("\n", "").isprintable():
        text = "".join(ch if ch == "\n" or ch.isprintable() else " " for ch in text)
    return text.replace("\\", "\\\\").replace('"""', '\\"\\"\\"').strip()


def _sentence(text: str) -> str:
    """`text` ending like a sentence, so notes appended after it read apart."""
    text = text.strip()
    return text + "." if text[-1:].isalnum() and text[-1:].isascii() else text


def _literal(value: str) -> str:
    """A string literal in the quotes `ruff format` prefers (double, unless single needs fewer escapes)."""
    quote = "'" if value.count('"') > value.count("'") else '"'
    out = []
    for ch in value:
        if ch in ("\\", quote):
            out.append("\\" + ch)
        elif ch == "\n":
            out.append("\\n")
        elif ch == "\t":
            out.append("\\t")
        elif ch == "\r":
            out.append("\\r")
        elif not ch.isprintable():
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    return quote + "".join(out) + quote


def _value(value: object) -> str | None:
    """A Python literal for a JSON scalar that `Literal[...]` accepts, or None."""
    if isinstance(value, bool):
        return "True" if value else "False"
    if isinstance(value, int):
        return str(value)
    if isinstance(value, str):
        return _literal(value)
    return None


def _camel(*parts: str) -> str:
    words = [w for p in parts for w in re.split(r"[^0-9A-Za-z]+", p) if w]
    name = "".join(w[:1].upper() + w[1:] for w in words) or "Properties"
    return name if name[0].isalpha() else "P" + name


def _identifier(name: str) -> str:
    """A usable, public Python name for a plan name."""
    out = re.sub(r"[^0-9A-Za-z_]", "_", name).lstrip("_")
    if not out or out[0].isdigit():
        out = "p_" + out
    if keyword.iskeyword(out) or out == "time":
        out += "_"
    return out


def _unique(name: str, taken: set[str]) -> str:
    candidate, n = name, 2
    while candidate in taken:
        candidate, n = f"{name}_{n}", n + 1
    taken.add(candidate)
    return candidate


def _natural(name: str) -> tuple[int, list[int | str]]:
    """ruff's order for `__all__`: SCREAMING_CASE, then CamelCase, then the rest, each in natural order."""
    group = 0 if name.upper() == name else 1 if name[:1].isupper() else 2
    return group, [int(p) if p.isdigit() else p for p in re.split(r"(\d+)", name)]


# -- the module ---------------------------------------------------------------------------


@dataclass
class _Param:
    name: str  # the Python keyword
    wire: str  # the property name in the plan
    annotation: str
    required: bool
    doc: str


@dataclass
class _Module:
    plan: Plan
    typeddicts: list[list[str]] = field(default_factory=list)
    typeddict_names: set[str] = field(default_factory=lambda: set(_MODULE_NAMES))
    imports: set[str] = field(default_factory=lambda: {"Final", "Protocol", "TypeVar"})
    public: list[str] = field(default_factory=list)

    def annotation(self, schema: Mapping[str, Any], owner: tuple[str, ...]) -> str:
        """The Python type of a property schema."""
        for key in ("enum", "const"):
            if key in schema:
                values = schema[key] if key == "enum" else [schema[key]]
                literal = self._literal_type(values)
                if literal is not None:
                    return literal
                if not schema.get("type"):  # values such as 1.5 that Literal cannot hold: their types
                    return self.annotation({"type": sorted({json_kind(v) for v in values})}, owner)
        types = types_of(schema)
        if not types:
            return "object"
        parts: list[str] = []
        for t in _TYPE_ORDER:
            if t not in types or (t == "integer" and "number" in types):
                continue
            if t == "array":
                items = schema.get("items")
                inner = self.annotation(items, (*owner, "item")) if isinstance(items, Mapping) else "object"
                parts.append(f"list[{inner}]")
            elif t == "object":
                parts.append(self.object_type(schema, owner))
            else:
                parts.append(_PY_TYPES[t])
        return " | ".join(dict.fromkeys(parts))

    def _literal_type(self, values: Iterable[object]) -> str | None:
        shown: list[str] = []
        nullable = False
        for v in values:
            if v is None:
                nullable = True
                continue
            text = _value(v)
            if text is None:
                return None
            shown.append(text)
        if not shown:
            return "None" if nullable else None
        self.imports.add("Literal")
        return f"Literal[{', '.join(dict.fromkeys(shown))}]" + (" | None" if nullable else "")

    def object_type(self, schema: Mapping[str, Any], owner: tuple[str, ...]) -> str:
        props = schema.get("properties")
        if not props or schema.get("additionalProperties") is True:
            self.imports.add("Mapping")
            return "Mapping[str, object]"
        return self.typeddict(_camel(*owner), props, set(schema.get("required", ())), owner, total=True)

    def typeddict(
        self,
        name: str,
        props: Mapping[str, Any],
        required: set[str],
        owner: tuple[str, ...],
        *,
        total: bool,
        doc: str = "",
    ) -> str:
        """Define a TypedDict (class syntax when every key is a plain name, else the functional form)."""
        name = _unique(name, self.typeddict_names)
        self.imports.add("TypedDict")
        fields = []
        for key, sub in props.items():
            annotation = self.annotation(sub, (*owner, key)) if isinstance(sub, Mapping) else "object"
            if total and key not in required:
                self.imports.add("NotRequired")
                annotation = f"NotRequired[{annotation}]"
            fields.append((key, annotation))
        plain = all(k.isidentifier() and not keyword.iskeyword(k) and not k.startswith("_") for k, _ in fields)
        if plain:
            lines = [f"class {name}(TypedDict{'' if total else ', total=False'}):"]
            if doc:
                lines += _docstring(doc, "    ")
                if fields:
                    lines.append("")
            lines += [f"    {k}: {a}" for k, a in fields] or ["    pass"]
        else:
            lines = [f"{name} = TypedDict(", f"    {_literal(name)},", "    {"]
            lines += [f"        {_literal(k)}: {a}," for k, a in fields]
            lines += ["    },"] + ([] if total else ["    total=False,"]) + [")"]
        self.typeddicts.append(lines)
        return name


def _docstring(text: str, indent: str) -> list[str]:
    body = _clean(text)
    lines = _wrap(body, LINE_WIDTH - len(indent) - 6)
    if len(lines) == 1:
        closing = ' """' if lines[0].endswith('"') else '"""'
        return [f'{indent}"""{lines[0]}{closing}']
    out = [f'{indent}"""{lines[0]}']
    out += [f"{indent}{line}" if line else "" for line in lines[1:]]
    out.append(f'{indent}"""')
    return out


def _args_section(params: list[_Param]) -> str:
    """The docstring's Args: section, each entry wrapped under its name."""
    out = ["Args:"]
    for p in params:
        # The docstring's body is indented 4 and quoted (see _docstring); entries indent 8 more.
        entry = _wrap(f"{p.name}: {p.doc}".strip(), LINE_WIDTH - 4 - 6 - 8)
        out.append("    " + entry[0])
        out += ["        " + line for line in entry[1:]]
    return "\n".join(out)


def _plan_digest(plan: Plan) -> str:
    canonical = json.dumps(plan.document, sort_keys=True, ensure_ascii=False, separators=(",", ":"))
    return hashlib.sha256(canonical.encode("utf-8")).hexdigest()


def _constraints(schema: Mapping[str, Any]) -> str:
    """The plan's limits on a value, in a few words ("> 0, a multiple of 100")."""
    words = {
        "minimum": ">= {}",
        "exclusiveMinimum": "> {}",
        "maximum": "<= {}",
        "exclusiveMaximum": "< {}",
        "multipleOf": "a multiple of {}",
        "minLength": "at least {} characters",
        "maxLength": "at most {} characters",
        "pattern": "matching {}",
        "format": "a {}",
        "minItems": "at least {} items",
        "maxItems": "at most {} items",
    }
    shown = ", ".join(text.format(schema[key]) for key, text in words.items() if key in schema)
    return shown[:1].upper() + shown[1:] + "." if shown else ""


def _param_doc(schema: Mapping[str, Any], name: str, wire: str) -> str:
    notes = [_sentence(str(schema.get("description") or schema.get("title") or "")), _constraints(schema)]
    if name != wire:
        notes.append(f"Sent as {wire!r}.")
    tag = schema.get("x-pii") or (schema.get("items") or {}).get("x-pii")
    notes.append(_PII_NOTES.get(tag, "") if isinstance(tag, str) else "")
    return " ".join(n for n in notes if n) or "No description in the plan."


@dataclass
class _Function:
    name: str
    params: list[_Param]
    lines: list[str]


def _event_function(module: _Module, spec: EventSpec, py_name: str) -> _Function:
    plan = module.plan
    taken = {"time"}
    required = set(spec.required)
    params: list[_Param] = []
    for wire, raw in spec.properties.items():
        sub: Mapping[str, Any] = raw if isinstance(raw, Mapping) else {}
        name = _unique(_identifier(wire), taken)
        annotation = module.annotation(sub, (spec.name, wire))
        params.append(_Param(name, wire, annotation, wire in required, _param_doc(sub, name, wire)))
    params.sort(key=lambda p: not p.required)  # stable: plan order within each group

    line = plan.business_lines.get(spec.business_line)
    owner = spec.owner or (line.owner if line else "")
    facts = [f"Business line: {spec.business_line}.", f"Trigger: {spec.trigger}."]
    if owner:
        facts.append(f"Owner: {owner}.")
    if spec.status != "active":
        facts.append(f"Status: {spec.status}.")
    doc = [spec.description.strip() or f"Track {spec.name!r}."]
    if spec.fires_when.strip():
        doc.append(f"Fires when: {spec.fires_when.strip()}")
    doc.append(" ".join(facts))
    args = [*params, _Param("time", "", "", False, "When it happened, in epoch milliseconds (default: now).")]
    doc.append(_args_section(args))

    out = [f"def {py_name}(", "    _client: TrackingClient[_R],", "    /,", "    *,"]
    for p in params:
        if p.required:
            out.append(f"    {p.name}: {p.annotation},")
        else:
            # ruff wants None last in a union.
            head, none = (p.annotation[:-7], " | None") if p.annotation.endswith(" | None") else (p.annotation, "")
            optional = "Unset | None" if p.annotation == "None" else f"{head} | Unset{none}"
            out.append(f"    {p.name}: {optional} = UNSET,")
    out.append("    time: int | None = None,")
    body = _docstring("\n\n".join(doc), "    ")
    event = _literal(spec.name)
    if params:
        body.append("    _props: dict[str, object] = {")
        body += [f"        {_literal(p.wire)}: {p.name}," for p in params]
        body.append("    }")
        sent = "_present(_props)" if any(not p.required for p in params) else "_props"
    else:
        sent = "{}"
    body += ["    return _client.track(", f"        {event},", f"        {sent},", "        time=time,", "    )"]
    return _Function(py_name, params, [*out, ") -> _R:", *body])


_PRELUDE: Final = '''

class TrackingClient(Protocol[_R_co]):
    """What the functions need from a client: the thread and asyncio clients fit."""

    def track(
        self,
        event: str,
        properties: Mapping[str, object] | None = None,
        /,
        *,
        time: int | None = None,
    ) -> _R_co: ...


class Unset(enum.Enum):
    """The default of optional properties: unset ones are left out of the event."""

    UNSET = "UNSET"


UNSET: Final = Unset.UNSET


def _present(properties: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in properties.items() if v is not UNSET}
'''


def _module_doc(plan: Plan, functions: list[_Function]) -> str:
    doc = (
        f"Typed tracking calls for the plan {plan.name!r}, version {plan.version}.\n\n"
        "One function per planned event. Each takes the client first, then the event's properties as "
        "keyword arguments: required properties have no default, optional ones are left out of the "
        "event unless given. A function returns what the client's `track` returns, so with an asyncio "
        "client the call is awaited."
    )
    if functions:
        first = functions[0]
        call = ", ".join(["client", *(f"{p.name}=..." for p in first.params if p.required)])
        doc += f"\n\n    {first.name}({call})"
    return doc


def generate_module(plan: Plan, *, source: str = "") -> str:
    """The text of a Python module with one typed function per event of `plan`.

    `source` names the plan file in the header (give a relative path or a bare
    name, so the output does not depend on where it was generated).
    """
    module = _Module(plan)
    module.imports.add("Mapping")
    taken = set(_MODULE_NAMES) | {"_present", "_R", "_R_co"}
    functions = [
        _event_function(module, plan.events[name], _unique(_identifier(name), taken)) for name in sorted(plan.events)
    ]

    helpers: list[str] = []
    for title, schema, doc in (
        ("CommonProperties", plan.common_properties, "The common properties, for the client's super properties."),
        ("UserProperties", plan.user_properties, "The user-profile properties, for `profile_set` and friends."),
    ):
        props = {k: v for k, v in schema.get("properties", {}).items() if not k.startswith("$")}
        if props:
            module.typeddict_names.discard(title)
            module.typeddict(title, props, set(), (title,), total=False, doc=doc)
            helpers.append(title)

    public = ["PLAN_NAME", "PLAN_VERSION", "PLAN_DIGEST", "EVENT_NAMES", "TrackingClient", "Unset", "UNSET", *helpers]
    public += [f.name for f in functions]
    typing_names = sorted(module.imports - {"Mapping"}, key=str.lower)

    header = (
        f"Generated by `maidian plan codegen` from {source or 'a tracking plan'}.\n"
        f"Plan {plan.name!r}, version {plan.version}. Do not edit: change the plan and generate again."
    )
    out = [f"# {line}".rstrip() for line in _wrap(_clean(header), LINE_WIDTH - 2)]
    out += _docstring(_module_doc(plan, functions), "")
    out += [
        "",
        "from __future__ import annotations",
        "",
        "import enum",
        "from collections.abc import Mapping",
        f"from typing import {', '.join(typing_names)}",
        "",
        "__all__ = [",
        *[f"    {_literal(name)}," for name in sorted(public, key=_natural)],
        "]",
        "",
        f"PLAN_NAME: Final = {_literal(plan.name)}",
        f"PLAN_VERSION: Final = {_literal(plan.version)}",
        f"PLAN_DIGEST: Final = {_literal(_plan_digest(plan))}",
        *(
            [
                "EVENT_NAMES: Final = frozenset(",
                "    {",
                *[f"        {_literal(n)}," for n in sorted(plan.events)],
                "    }",
                ")",
            ]
            if plan.events
            else ["EVENT_NAMES: Final[frozenset[str]] = frozenset()"]
        ),
        "",
        '_R = TypeVar("_R")',
        '_R_co = TypeVar("_R_co", covariant=True)',
    ]
    out += _PRELUDE.rstrip("\n").split("\n")
    for lines in module.typeddicts:
        out += ["", "", *lines]
    for function in functions:
        out += ["", "", *function.lines]
    return "\n".join(out).rstrip("\n") + "\n"
