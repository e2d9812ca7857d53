"""Lint a tracking plan: naming and consistency rules the loader does not enforce.

The linter works on the raw document (`read_document`: parsed and checked
against the meta-schema), not on the loaded `Plan`, so it reports in one run
both what the loader would refuse (an event without a registered prefix, a
`$ref` to nothing, a pattern that does not compile) and what the loader accepts
but a reviewer should not (a `phone` property without a PII tag, `orderId`
beside `order_id`, an "order filled" event that a client may send).

Every finding is a `PlanProblem` whose `code` is a stable rule id from `RULES`,
with the JSON pointer of the offending place and, when the text is known, its
line and column. A rule can be switched off for a whole run (`ignore=`) or
under one object of the plan with an annotation naming the rule ids:

    "stock_video_completed": {"x-lint-ignore": ["success-trigger"], ...}

`$ref`s are resolved for the checks that need a property's effective schema
(its type, its PII tag, its properties), but findings always point at the place
in the document where the offending keyword is written, so a problem inside a
shared definition is reported once, at the definition.
"""

from __future__ import annotations

import os
import re
from collections.abc import Iterable, Mapping
from functools import cache
from pathlib import Path
from typing import Any, Final, NamedTuple

from ._jsonpos import join_pointer, split_pointer
from ._schemakit import enum_key, json_kind, types_of
from .envelope import DEFAULT_LIMITS, EVENT_NAME_RE, PRESET_SCHEMAS, PROPERTY_NAME_RE
from .errors import PlanProblem
from .funnels import annotated_funnels
from .loader import Document, Path_, _Problems, _read, _Schemas, check_identity, prefix_of, read_document
from .pii import PII_TAGS

__all__ = ["IGNORE_KEY", "PII_NAME_PHRASES", "RULES", "SUCCESS_WORDS", "lint_document", "lint_file"]

IGNORE_KEY: Final = "x-lint-ignore"

RULES: Final[dict[str, str]] = {
    "prefix-registered": "every event name starts with a registered business-line prefix (the longest one matches)",
    "business-line-mismatch": "an event's `business_line` names a registered line and equals its name's prefix",
    "snake-case": "event, property, business-line, identity and $defs names are snake_case ASCII",
    "name-length": f"names are at most {DEFAULT_LIMITS.max_name_length} characters (envelope.Limits.max_name_length)",
    "preset-reserved": "`$` names are only the SDK's known presets, declared only in common_properties",
    "case-clash": "no two names differ only by case or underscores (`orderId` and `order_id`)",
    "property-type-conflict": "a property has the same type wherever it appears: in events, common and user "
    "properties and the built-in presets (integer and number count as one, null is ignored)",
    "required-undefined": "every name in `required` is a property declared at that level",
    "empty-enum": "an `enum` has at least one value and no value twice",
    "enum-type": "every `enum` value has the property's declared type",
    "missing-description": "every event has a description",
    "missing-owner": "every event has an owner, its own or its business line's",
    "success-trigger": "events whose action is a completed movement of money or positions, or a final outcome "
    '(`_filled`, `_succeeded`, `_paid`, ...), are `"trigger": "server"`',
    "pii-tag": "`x-pii` is hash, mask or drop; hash and mask only on strings; drop never on a required property",
    "pii-untagged": "a property or identity whose name says it holds personal data (mobile, id card, bank card, "
    "real name, email, address, ...) carries an `x-pii` tag",
    "bad-ref": "every `$ref` names a definition in $defs and no definition refers to itself",
    "bad-regex": "every `pattern` compiles (ECMA-262 syntax)",
    "bad-ignore": f"`{IGNORE_KEY}` names known rule ids",
    "funnel": "a funnel's steps name planned events and its identity is `person` or a declared identity type",
    "funnel-annotation": "`x-funnel` step numbers of one funnel run 1, 2, 3, ... once each, and agree with the "
    "funnel's declared steps when the plan declares it",
}


def _words(text: str) -> frozenset[str]:
    return frozenset(text.split())


# The last word of an event's action that says money or a position has moved, or
# that a final decision was taken: only the backend knows, so the event must be
# sent by a signed server source. Deliberately past tenses and nouns of outcome;
# present tenses (`submit`, `pay`, `confirm`) are what a user does in the app.
SUCCESS_WORDS: Final = _words(
    "success successful succeed succeeded filled executed completed settled credited debited paid refunded "
    "repaid disbursed approved deposited withdrawn transferred redeemed matured allotted"
)
# Trailing words that only number or version an action (`fund_buy_success_2`, `..._v2`).
_VERSION_WORD: Final = re.compile(r"^v?[0-9]+$")

# Names that say a property holds personal data, matched as the last words of the
# name (`contact_phone`, `bank_card_no`), optionally followed by no/num/number.
# Only whole words match, so `phone_model`, `email_verified` or `hotel` do not.
_PII_WORDING: Final = {
    "a phone number": "mobile phone telephone cellphone tel shouji",
    "an identity card number": "id_card idcard id_no id_number identity_card identity_no identity_number "
    "national_id sfz sfzh shenfenzheng",
    "a passport or tax number": "passport ssn tax_id",
    "a bank card or account number": "bank_card card_no card_number credit_card debit_card bank_account iban",
    "a card security code": "cvv cvc",
    "a person's name": "real_name full_name legal_name first_name last_name given_name surname customer_name "
    "holder_name cardholder_name payee_name payer_name beneficiary_name contact_name xingming",
    "an email address": "email email_address",
    "a postal address": "address",
    "a date of birth": "birthday birth_date date_of_birth dob",
    "a secret": "password passwd sms_code verification_code otp",
}
PII_NAME_PHRASES: Final[dict[tuple[str, ...], str]] = {
    tuple(phrase.split("_")): meaning for meaning, phrases in _PII_WORDING.items() for phrase in _words(phrases)
}
_PII_NUMBER_WORDS: Final = frozenset({"no", "num", "number"})
# Words anywhere in the name that say the value is already transformed.
_PII_SAFE_WORDS: Final = _words("hash hashed sha256 sha1 md5 masked mask encrypted cipher token tokenized")
# Addresses that are not where a person lives.
_ADDRESS_NOT_POSTAL: Final = _words("ip mac wallet contract web url server host node")
_LONGEST_PHRASE: Final = max(len(p) for p in PII_NAME_PHRASES)

Where = str | Path_  # a JSON pointer, or the keys and indexes that make one

_MAX_NAME: Final = DEFAULT_LIMITS.max_name_length
_SNAKE_HELP: Final = "lowercase ASCII letters and digits, words separated by single underscores"


@cache
def pii_meaning(name: str) -> str | None:
    """What personal data a name says it holds ("a mobile number"), or None."""
    words = name.lower().split("_")
    if any(w in _PII_SAFE_WORDS for w in words):
        return None
    candidates = [words]
    if len(words) > 1 and words[-1] in _PII_NUMBER_WORDS:
        candidates.insert(0, words[:-1])
    for ws in candidates:
        for size in range(min(_LONGEST_PHRASE, len(ws)), 0, -1):
            phrase = tuple(ws[-size:])
            meaning = PII_NAME_PHRASES.get(phrase)
            if meaning is None:
                continue
            if phrase == ("address",) and len(ws) > 1 and ws[-2] in _ADDRESS_NOT_POSTAL:
                return None
            return meaning
    return None


@cache
def _clash_key(name: str) -> str:
    return name.lower().replace("_", "")


@cache
def _comparable(types: frozenset[str]) -> frozenset[str] | None:
    """Types for property-type-conflict: integer counts as number, null is ignored; None when untyped."""
    out = frozenset("number" if t == "integer" else t for t in types) - {"null"}
    return out or None


@cache
def _is_snake(name: str, shape: re.Pattern[str]) -> bool:
    return shape.match(name) is not None


def _show_types(types: frozenset[str]) -> str:
    return " or ".join(sorted(types))


class _Place(NamedTuple):
    """Where a property is declared: its pointer, where its type is written, and what declares it."""

    path: Path_
    type_path: Path_
    area: str  # "event", "common", "user", "preset"


class _Scope(NamedTuple):
    """Where a schema node sits: its path in the document, its property path, its area, and
    whether a PII tag above it already covers it."""

    path: Path_
    logical: tuple[str, ...]  # property names from the area's root, "*" for array items
    area: str  # "event", "common", "user" or "def"
    tagged: bool = False

    def property(self, name: str) -> _Scope:
        return _Scope((*self.path, "properties", name), (*self.logical, name), self.area, self.tagged)

    def items(self) -> _Scope:
        return _Scope((*self.path, "items"), (*self.logical, "*"), self.area, self.tagged)

    def under_tag(self) -> _Scope:
        return self._replace(tagged=True)


class _Findings(_Problems):
    """The loader's problem list, minus the rules switched off for this run.

    The loader checks patterns and tags on schemas with their `$ref`s resolved,
    so a bad pattern in a definition would come back once per use; only the
    place where it is written is kept.
    """

    def __init__(self, doc: Document, text: str, source: str, ignore: frozenset[str]) -> None:
        super().__init__(text, source)
        self.doc = doc
        self.ignore = ignore

    def add(self, message: str, pointer: str, code: str) -> None:
        if code in self.ignore:
            return
        if pointer.endswith(("/pattern", "/x-pii")) and not _written(self.doc, pointer):
            return
        super().add(message, pointer, code)


def _written(doc: Any, pointer: str) -> bool:
    node = doc
    for part in split_pointer(pointer):
        if isinstance(node, dict) and part in node:
            node = node[part]
        elif isinstance(node, list) and part.isdigit() and int(part) < len(node):
            node = node[int(part)]
        else:
            return False
    return True


class _Linter:
    def __init__(self, doc: Document, findings: _Findings) -> None:
        self.doc = doc
        self.findings = findings
        self.schemas = _Schemas(doc.get("$defs", {}), findings)
        self.suppressed: dict[str, frozenset[str]] = {}
        self.property_places: dict[str, list[Path_]] = {}  # spelling -> where it is declared
        self.typed_places: dict[tuple[str, ...], list[tuple[frozenset[str], _Place]]] = {}
        self.common_names: frozenset[str] = frozenset()

    # -- the walk ----------------------------------------------------------------

    def run(self) -> None:
        doc = self.doc
        self._note_ignores(doc, "")
        lines = doc["business_lines"]
        for prefix, spec in lines.items():
            self._note_ignores(spec, join_pointer(["business_lines", prefix]))
            self._name(prefix, join_pointer(["business_lines", prefix]), "business-line key", PROPERTY_NAME_RE)
        self._clashes({name: [("business_lines", name)] for name in lines}, "business line")

        identities = doc.get("identities", {})
        for name, spec in identities.items():
            where = join_pointer(["identities", name])
            self._note_ignores(spec, where)
            self._name(name, where, "identity type name", PROPERTY_NAME_RE)
            check_identity(name, spec, self.findings)
            meaning = pii_meaning(name)
            if meaning is not None and "x-pii" not in spec:
                self.add(
                    f'identity type {name!r} looks like {meaning}; tag it "x-pii": "hash" (or "mask")',
                    where,
                    "pii-untagged",
                )
        self._clashes({name: [("identities", name)] for name in identities}, "identity type")

        for name in sorted(PRESET_SCHEMAS):
            types = _comparable(types_of(PRESET_SCHEMAS[name]))
            if types is not None:
                self.typed_places.setdefault((name,), []).append((types, _Place((), (), "preset")))

        for name, raw in doc.get("$defs", {}).items():
            path = ("$defs", name)
            self._name(name, join_pointer(path), "$defs name", PROPERTY_NAME_RE)
            self._schema(raw, _Scope(path, (), "def"))

        common = doc.get("common_properties")
        if common is not None:
            self.common_names = frozenset(common.get("properties", {}))
            self._root(common, ("common_properties",), "common")
        users = doc.get("user_properties")
        if users is not None:
            self._root(users, ("user_properties",), "user")
        self._events(doc["events"], lines)

        self._clashes(self.property_places, "property")
        self._type_conflicts()
        self._funnels()

    def _funnels(self) -> None:
        events = self.doc["events"]
        identities = set(self.doc.get("identities", {})) | {"anonymous_id", "login_id", "person"}
        declared = self.doc.get("funnels", {})
        for name, spec in declared.items():
            where = ("funnels", name)
            self._note_ignores(spec, join_pointer(where))
            for i, step in enumerate(spec.get("steps", ())):
                if step.get("event") not in events:
                    self.add(
                        f"funnel {name!r} step {i + 1}: event {step.get('event')!r} is not in the plan",
                        (*where, "steps", i, "event"),
                        "funnel",
                    )
            identity = spec.get("identity", "person")
            if identity not in identities:
                self.add(
                    f"funnel {name!r}: identity {identity!r} is neither 'person' nor a declared identity type",
                    (*where, "identity"),
                    "funnel",
                )
        for name, annotated in annotated_funnels(self.doc).items():
            numbers = [step for step, _event in annotated]
            first_event = annotated[0][1]
            if numbers != list(range(1, len(numbers) + 1)):
                self.add(
                    f"x-funnel {name!r}: steps {numbers} should run 1 to {len(numbers)}, once each",
                    ("events", first_event, "x-funnel"),
                    "funnel-annotation",
                )
            steps = declared.get(name, {}).get("steps")
            if steps is None:
                continue
            for step, event in annotated:
                declared_event = steps[step - 1].get("event") if 0 < step <= len(steps) else None
                if declared_event != event:
                    self.add(
                        f"x-funnel {name!r} step {step} is {event}, but funnels.{name} has"
                        f" {declared_event or 'no such step'} there",
                        ("events", event, "x-funnel"),
                        "funnel-annotation",
                    )

    def _root(self, raw: Mapping[str, Any], path: tuple[str, ...], area: str) -> None:
        self._schema(raw, _Scope(path, (), area))

    def _resolve(self, node: Any, path: Path_) -> Any:
        """A schema node as it means: its `$ref`'s definition (resolved) under its own keywords."""
        if isinstance(node, dict) and "$ref" in node:
            return self.schemas._ref(node, path, ())
        return node

    def _note_ignores(self, node: Mapping[str, Any], where: Where) -> None:
        rules = node.get(IGNORE_KEY)
        if rules is None:
            return
        pointer = where if isinstance(where, str) else join_pointer(where)
        names = [rules] if isinstance(rules, str) else rules if isinstance(rules, list) else []
        unknown = [r for r in names if r not in RULES]
        if unknown or not isinstance(rules, (str, list)):
            self.add(
                f"{IGNORE_KEY} names no known rule ({', '.join(map(str, unknown)) or type(rules).__name__}); "
                f"rules: {', '.join(sorted(RULES))}",
                pointer + "/" + IGNORE_KEY,
                "bad-ignore",
            )
        self.suppressed[pointer] = frozenset(r for r in names if isinstance(r, str))

    def add(self, message: str, where: Where, code: str) -> None:
        self.findings.add(message, where if isinstance(where, str) else join_pointer(where), code)

    def _name(self, name: str, pointer: Where, what: str, shape: re.Pattern[str]) -> None:
        if len(name) > _MAX_NAME:
            self.add(f"{what} is {len(name)} characters long; the limit is {_MAX_NAME}", pointer, "name-length")
        if not _is_snake(name, shape):
            self.add(f"{what} {name!r} is not snake_case ({_SNAKE_HELP})", pointer, "snake-case")

    # -- events ------------------------------------------------------------------

    def _events(self, events: Mapping[str, Any], lines: Mapping[str, Any]) -> None:
        prefixes = sorted(lines, key=len, reverse=True)
        for name, spec in events.items():
            path = ("events", name)
            where = join_pointer(path)
            self._note_ignores(spec, where)
            self._name(
                name,
                where,
                "event name",
                EVENT_NAME_RE,
            )
            prefix = prefix_of(name, prefixes)
            if prefix is None:
                self.add(
                    f"event {name!r} does not start with a registered business-line prefix "
                    f"({', '.join(sorted(lines))})",
                    where,
                    "prefix-registered",
                )
            declared = spec.get("business_line")
            if declared is not None and declared != prefix:
                problem = (
                    f"is not a registered business line ({', '.join(sorted(lines))})"
                    if declared not in lines
                    else f"does not match the name's prefix {prefix!r}"
                    if prefix
                    else "cannot match a name with no registered prefix"
                )
                self.add(f"business_line {declared!r} {problem}", where + "/business_line", "business-line-mismatch")
            if not str(spec.get("description", "")).strip():
                self.add(f"event {name!r} has no description", where, "missing-description")
            line_owner = lines.get(prefix or declared or "", {}).get("owner", "")
            if not str(spec.get("owner", "")).strip() and not str(line_owner).strip():
                self.add(
                    f"event {name!r} has no owner, and neither has its business line {prefix or declared!r}",
                    where,
                    "missing-owner",
                )
            self._success_trigger(name, prefix, spec, where)
            raw = spec.get("properties")
            if raw is not None:
                self._root(raw, (*path, "properties"), "event")
        self._clashes({name: [("events", name)] for name in events}, "event")

    def _success_trigger(self, name: str, prefix: str | None, spec: Mapping[str, Any], where: str) -> None:
        words = name[len(prefix) + 1 :].split("_") if prefix else name.split("_")
        while len(words) > 1 and _VERSION_WORD.match(words[-1]):
            words.pop()
        if words[-1].lower() in SUCCESS_WORDS and spec.get("trigger", "client") != "server":
            at = where + "/trigger" if "trigger" in spec else where
            self.add(
                f"event {name!r} reports an outcome ('{words[-1]}') that only the backend knows; "
                'set "trigger": "server" so the collector accepts it only from signed server sources',
                at,
                "success-trigger",
            )

    # -- property schemas ----------------------------------------------------------

    def _schema(self, raw: Any, at: _Scope, eff: Any = None) -> None:
        """Check one schema node as written (`raw`) and as it means (`eff`, its `$ref` resolved)."""
        if not isinstance(raw, dict):
            return
        where = at.path
        if eff is None:
            eff = self._resolve(raw, where)
        self.schemas._check(raw, where)  # the loader's checks (pattern, tag), where they are written
        self._note_ignores(raw, where)
        types = types_of(eff)
        if "enum" in raw:
            self._enum(raw["enum"], types, (*where, "enum"))
        tag = eff.get("x-pii")
        if tag in ("hash", "mask") and types and "string" not in types and ("x-pii" in raw or "type" in raw):
            self.add(
                f"PII tag {tag!r} turns the value into a string, but the property is {_show_types(types)}; "
                "declare it a string or tag it 'drop'",
                (*where, "x-pii" if "x-pii" in raw else "type"),
                "pii-tag",
            )
        if tag in PII_TAGS:
            at = at.under_tag()
        props = eff.get("properties")
        props = props if isinstance(props, dict) else {}
        if isinstance(raw.get("required"), list):
            self._required(raw["required"], props, at)
        raw_props = raw.get("properties")
        if isinstance(raw_props, dict):
            for name, child in raw_props.items():
                self._property(name, child, at.property(name))
        items = raw.get("items")
        if isinstance(items, dict):
            self._schema(items, at.items())

    def _property(self, name: str, raw: Any, at: _Scope) -> None:
        where = at.path
        eff = self._resolve(raw, where)
        if name.startswith("$"):
            if name not in PRESET_SCHEMAS:
                self.add(
                    f"{name!r} is not a known preset; names starting with $ are reserved for the SDK's presets",
                    where,
                    "preset-reserved",
                )
            elif at.area != "common" or len(at.logical) > 1:
                self.add(
                    f"preset {name!r} may only be redeclared at the top of common_properties", where, "preset-reserved"
                )
        else:
            self._name(name, where, "property name", PROPERTY_NAME_RE)
            self.property_places.setdefault(name, []).append(where)
        if isinstance(eff, dict):
            types = types_of(eff)
            if (
                (meaning := pii_meaning(name)) is not None
                and not at.tagged
                and not (eff.get("x-pii") or (eff.get("items") or {}).get("x-pii"))
                and "enum" not in eff
                and "const" not in eff
                and (not types or types & {"string", "integer", "number"})
            ):
                self.add(
                    f'property {name!r} looks like {meaning} but has no PII tag; add "x-pii": "hash", "mask" or "drop"',
                    where,
                    "pii-untagged",
                )
            comparable = _comparable(types)
            if comparable is not None and at.area != "def":
                type_at = (*where, "type") if isinstance(raw, dict) and "type" in raw else where
                self.typed_places.setdefault(at.logical, []).append((comparable, _Place(where, type_at, at.area)))
        self._schema(raw, at, eff)

    def _enum(self, values: Any, types: frozenset[str], where: Path_) -> None:
        if not isinstance(values, list):
            return
        if not values:
            self.add("enum has no values, so no value can ever be valid", where, "empty-enum")
            return
        if all(type(v) is str for v in values) and len(set(values)) == len(values) and (not types or "string" in types):
            return  # the usual case, at a glance
        seen: dict[object, int] = {}
        for i, value in enumerate(values):
            key = enum_key(value)
            if key in seen:
                self.add(f"enum value at index {i} repeats the one at index {seen[key]}", (*where, i), "empty-enum")
            else:
                seen[key] = i
            kind = json_kind(value)
            if types and kind not in types and not (kind == "integer" and "number" in types):
                self.add(
                    f"enum value at index {i} is {kind} but the property is {_show_types(types)}: never valid",
                    (*where, i),
                    "enum-type",
                )

    def _required(self, required: list[Any], props: Mapping[str, Any], at: _Scope) -> None:
        implied: Iterable[str] = ()
        if at.area == "event" and not at.logical:
            implied = (*self.common_names, *PRESET_SCHEMAS)
        elif at.area == "common" and not at.logical:
            implied = PRESET_SCHEMAS
        defined = set(props) | set(implied)
        for i, name in enumerate(required):
            where = (*at.path, "required", i)
            if name not in defined:
                self.add(f"required property {name!r} is not declared in properties", where, "required-undefined")
                continue
            sub = self._resolve(props.get(name), (*at.path, "properties", name))
            if isinstance(sub, dict) and sub.get("x-pii") == "drop":
                self.add(
                    f"required property {name!r} is tagged 'drop', so it can never be sent; make it optional",
                    where,
                    "pii-tag",
                )

    # -- plan-wide rules -------------------------------------------------------------

    def _clashes(self, places: Mapping[str, list[Path_]], what: str) -> None:
        """Report every place of a spelling that differs from another only by case or underscores."""
        groups: dict[str, list[str]] = {}
        for name in places:
            groups.setdefault(_clash_key(name), []).append(name)
        for spellings in groups.values():
            if len(spellings) < 2:
                continue
            # The spelling to keep: snake_case first, then the most used, then the first seen.
            keep, *others = sorted(spellings, key=lambda n: (not _is_snake(n, PROPERTY_NAME_RE), -len(places[n])))
            for name in others:
                for pointer in places[name]:
                    self.add(
                        f"{what} {name!r} differs from {keep!r} (at {join_pointer(places[keep][0])}) "
                        "only by case or underscores",
                        pointer,
                        "case-clash",
                    )

    def _type_conflicts(self) -> None:
        for logical, places in self.typed_places.items():
            kinds = {types for types, _ in places}
            if len(kinds) < 2:
                continue
            name = "/".join(logical)
            # The built-in preset, then common_properties, are the plan-wide definitions; otherwise the majority.
            preset = next((t for t, p in places if p.area == "preset"), None)
            common = next(((t, p) for t, p in places if p.area == "common"), None)
            if preset is not None:
                expected, elsewhere = preset, "in the built-in preset"
            elif common is not None:
                expected, elsewhere = common[0], f"in common_properties ({join_pointer(common[1].path)})"
            else:
                counts: dict[frozenset[str], list[_Place]] = {}
                for types, place in places:
                    counts.setdefault(types, []).append(place)
                expected = max(counts, key=lambda t: len(counts[t]))
                others = counts[expected]
                more = f" and {len(others) - 1} more" if len(others) > 1 else ""
                elsewhere = f"elsewhere ({join_pointer(others[0].path)}{more})"
            for types, place in places:
                if types != expected and place.area != "preset":
                    self.add(
                        f"property {name!r} is {_show_types(types)} here but {_show_types(expected)} {elsewhere}",
                        place.type_path,
                        "property-type-conflict",
                    )


def _is_suppressed(problem: PlanProblem, suppressed: Mapping[str, frozenset[str]]) -> bool:
    if not suppressed:
        return False
    parts: list[str | int] = list(split_pointer(problem.pointer))
    for depth in range(len(parts) + 1):
        rules = suppressed.get(join_pointer(parts[:depth]))
        if rules and problem.code in rules:
            return True
    return False


def lint_document(
    doc: Document, *, text: str = "", source: str = "<plan>", ignore: Iterable[str] = ()
) -> list[PlanProblem]:
    """Every finding for a meta-valid plan document, in document order.

    `text` (the document's JSON text) gives findings their line and column;
    `ignore` switches rules off by id.
    """
    findings = _Findings(doc, text, source, frozenset(ignore))
    linter = _Linter(doc, findings)
    linter.run()
    kept = [p for p in findings.items if not _is_suppressed(p, linter.suppressed)]
    kept.sort(key=lambda p: (p.line or 0, p.column or 0, p.pointer, p.code))
    return kept


def lint_file(path: str | os.PathLike[str], *, ignore: Iterable[str] = ()) -> list[PlanProblem]:
    """Lint a plan file; raise `PlanLoadError` when it cannot be read, parsed or meta-validated."""
    text, source = _read(Path(path))
    doc = read_document(text=text, source=source)
    return lint_document(doc, text=text, source=source, ignore=ignore)
