"""Request bodies: parsing, and the rules of every writable field. Each rule both checks a value
and describes itself as JSON Schema, so that /openapi.json states exactly what is enforced."""

import json
import re

from bottle import request

from responses import ApiError

MAX_BODY = 1 << 20  # 1 MiB


class Text:
    """A string of min_length to max_length characters matching pattern (None too, if nullable);
    what: the rule in words, for the 400."""

    def __init__(self, what, max_length, min_length=0, pattern=None, nullable=False):
        self.what, self.max_length, self.min_length = what, max_length, min_length
        self.pattern, self.nullable = pattern and re.compile(pattern), nullable

    def accepts(self, value):
        if value is None:
            return self.nullable
        return (
            isinstance(value, str)
            and self.min_length <= len(value) <= self.max_length
            and (not self.pattern or self.pattern.fullmatch(value) is not None)
            and not LONE_SURROGATE.search(value)
        )

    def check(self, name, value):
        if not self.accepts(value):
            raise ApiError(400, f"'{name}' must be {self.what}.")
        return value

    def schema(self):
        schema = {"type": ["string", "null"] if self.nullable else "string"}
        schema["maxLength"] = self.max_length
        if self.min_length:
            schema["minLength"] = self.min_length
        if self.pattern:
            schema["pattern"] = f"^{self.pattern.pattern}$"
        return schema


class Count:
    """A non-negative integer that fits a signed 64-bit column."""

    maximum = 2**63 - 1

    def check(self, name, value):
        if type(value) is not int or not 0 <= value <= self.maximum:
            raise ApiError(400, f"'{name}' must be an integer from 0 to 2**63-1.")
        return value

    def schema(self):
        # JSON Schema compares numbers by value (2.0 is the integer 2 to it); the
        # server goes by the spelling, so the description states what the schema cannot.
        schema = {"type": "integer", "minimum": 0, "maximum": self.maximum}
        schema["description"] = (
            "Written as a JSON integer: a fraction or an exponent (1.0, 1e2, -0.0) makes it a "
            "float, which is 400."
        )
        return schema


# JSON's "\udc00" escapes reach Python as lone surrogates, which no UTF-8 text can hold.
LONE_SURROGATE = re.compile(r"[\ud800-\udfff]")
# No control characters in stored text: PostgreSQL refuses NUL, and none belongs there.
PRINTABLE = r"[^\x00-\x1f\x7f]"
EMAIL = r"[^@ \x00-\x1f\x7f]+@[^@ \x00-\x1f\x7f]+\.[^@ \x00-\x1f\x7f]+"
# Spelled out rather than \s or (?i): JSON Schema's regex dialect differs on those.
URL = r"[Hh][Tt][Tt][Pp][Ss]?://[^ /?#\x00-\x1f\x7f]+[^ \x00-\x1f\x7f]*"
USER_FIELDS = {
    "username": Text("1 to 32 letters, digits, '_', '-' or '.'", 32, 1, r"[A-Za-z0-9_.-]+"),
    "password": Text("a string of 1 to 256 characters", 256, 1),
    "email": Text("null or an email address of at most 254 characters", 254, 3, EMAIL, True),
    "gender": Text("null or at most 32 printable characters", 32, 0, PRINTABLE + "*", True),
    "profile_pic": Text("null or an http(s) URL of at most 2048 characters", 2048, 0, URL, True),
}
USER_CHANGE_FIELDS = USER_FIELDS | {"current_password": USER_FIELDS["password"]}
STATS_FIELDS = {
    name: Count() for name in ("loss_count", "session_count", "total_time", "victory_count")
}

# Fields of the user representation that a client may send back unchanged.
READ_ONLY_USER_FIELDS = frozenset({"id", "self", "stats", "pdf"})


def json_object(optional=False):
    """The request body as a dict; 400 for anything else (conventions.py refuses large ones).
    optional: no body at all reads as {}."""
    raw = request.body.read()
    if optional and not raw.strip():
        return {}
    try:
        body = json.loads(raw.decode("utf-8"), parse_constant=_reject_constant)
    except (UnicodeDecodeError, ValueError, RecursionError):
        raise ApiError(400, "The request body must be valid JSON (UTF-8).") from None
    if not isinstance(body, dict):
        raise ApiError(400, "The request body must be a JSON object.")
    return body


def _reject_constant(name):
    raise ValueError(f"{name} is not JSON")


def checked_fields(body, rules, ignored=frozenset(), required=()):
    """The body's fields checked against rules; 400 naming any bad, unknown or missing field."""
    reject_unknown_fields(body, rules, ignored)
    if missing := [name for name in required if name not in body]:
        raise ApiError(400, f"'{missing[0]}' is required.")
    return {name: rules[name].check(name, value) for name, value in body.items() if name in rules}


def reject_unknown_fields(body, allowed, ignored=frozenset()):
    if unknown := sorted(set(body) - set(allowed) - ignored):
        names = ", ".join(f"'{name[:64]}'" for name in unknown[:10])
        raise ApiError(400, f"Unknown field(s) {names}; allowed: {', '.join(allowed)}.")


def object_schema(rules, required=(), extra=None):
    properties = {name: rule.schema() for name, rule in rules.items()} | (extra or {})
    schema = {"type": "object", "properties": properties, "additionalProperties": False}
    return schema | ({"required": list(required)} if required else {})
