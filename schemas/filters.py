"""``where`` filters of funnel stages and exclusions: the grammar, checked at start, and matching.

A filter maps fields to conditions; every field must match (AND)::

    where: {properties.page: /pricing, amount: {gt: 0}, currency: {in: [EUR, USD]}}

Fields: ``channel``, ``campaign``, ``product``, ``region``, ``manager``,
``currency``, ``funnel`` (text), ``amount`` (a number) and ``properties.<key>``
(whatever the event sent). A condition is a scalar (equal) or a mapping of
operators, all of which must hold: ``in`` / ``not_in`` (a list), ``gt``,
``gte``, ``lt``, ``lte`` (a number), ``exists`` (true or false), ``prefix``
(a string).

Absent values (a field the event does not carry, a property it did not send)
match only ``exists: false`` and ``not_in``. Comparisons are typed: a number
never equals a string (``"5"`` is not ``5``) and a boolean is not a number.

:func:`parse_where` validates a filter and returns its normal form (what the
models keep); :func:`compile_where` turns that into a predicate over a
normalized event, for the journey code.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from decimal import Decimal, InvalidOperation
from typing import Any

__all__ = ["FIELDS", "OPERATORS", "Condition", "compile_where", "parse_where"]

TEXT, NUMBER, ANY = "text", "number", "any"
#: Fields a filter may name, and what they hold.
FIELDS = {"channel": TEXT, "campaign": TEXT, "product": TEXT, "region": TEXT, "manager": TEXT,
          "currency": TEXT, "funnel": TEXT, "amount": NUMBER}
PROPERTY = "properties."
OPERATORS = ("in", "not_in", "gt", "gte", "lt", "lte", "exists", "prefix")
_ORDER = ("gt", "gte", "lt", "lte")

#: A field's normal form: operator -> operand ("eq" for a scalar).
Condition = dict[str, Any]
_MISSING = object()


def _is_number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def _scalar(field: str, kind: str, value: Any, what: str) -> Any:
    """One value a field is compared with, checked against the field's kind."""
    if isinstance(value, Mapping | list | tuple) or value is None:
        raise ValueError(f"{field}: {what} must be a single value, not {value!r}")
    if kind == TEXT:
        if not isinstance(value, str):
            raise ValueError(f"{field} is text: compare it with a string, not {value!r}")
        return value.upper() if field == "currency" else value
    if kind == NUMBER and not _is_number(value):
        raise ValueError(f"{field} is a number: compare it with a number, not {value!r}")
    return value


def _kind(field: str) -> str:
    if field.startswith(PROPERTY) and len(field) > len(PROPERTY):
        return ANY
    if field not in FIELDS:
        raise ValueError(f"unknown field {field!r} (fields: {', '.join(FIELDS)}, properties.<key>)")
    return FIELDS[field]


def parse_where(where: Any) -> dict[str, Condition]:
    """Check a ``where`` mapping; its normal form (field -> operator -> operand). Raises ValueError."""
    if where is None:
        return {}
    if not isinstance(where, Mapping):
        raise ValueError(f"where must be a mapping of fields to conditions, not {where!r}")
    out: dict[str, Condition] = {}
    for field, condition in where.items():
        if not isinstance(field, str):
            raise ValueError(f"field names are text, not {field!r}")
        kind = _kind(field)
        if not isinstance(condition, Mapping):
            out[field] = {"eq": _scalar(field, kind, condition, "an equality")}
            continue
        if not condition:
            raise ValueError(f"{field}: no operator (operators: {', '.join(OPERATORS)})")
        parsed: Condition = {}
        for op, operand in condition.items():
            if op not in OPERATORS:
                raise ValueError(f"{field}: unknown operator {op!r} (operators: {', '.join(OPERATORS)})")
            if op in ("in", "not_in"):
                if not isinstance(operand, list | tuple) or not operand:
                    raise ValueError(f"{field}: {op!r} needs a non-empty list, not {operand!r}")
                parsed[op] = tuple(_scalar(field, kind, v, f"each value of {op!r}") for v in operand)
            elif op in _ORDER:
                if kind == TEXT:
                    raise ValueError(f"{field}: {op!r} needs a number field; {field} is text")
                if not _is_number(operand):
                    raise ValueError(f"{field}: {op!r} needs a number, not {operand!r}")
                parsed[op] = operand
            elif op == "exists":
                if not isinstance(operand, bool):
                    raise ValueError(f"{field}: 'exists' needs true or false, not {operand!r}")
                parsed[op] = operand
            else:  # prefix
                if kind == NUMBER:
                    raise ValueError(f"{field}: 'prefix' needs a text field; {field} is a number")
                if not isinstance(operand, str):
                    raise ValueError(f"{field}: 'prefix' needs a string, not {operand!r}")
                parsed[op] = operand
        out[field] = parsed
    return out


def _getter(field: str) -> Callable[[Mapping[str, Any]], Any]:
    if field.startswith(PROPERTY):
        key = field[len(PROPERTY):]
        return lambda e: e["properties"].get(key, _MISSING)
    if field == "amount":
        def amount(e: Mapping[str, Any]) -> Any:
            value = e["amount"]
            if value is None:
                return _MISSING
            try:
                return Decimal(value)
            except InvalidOperation:  # pragma: no cover - the decoder gives decimals only
                return _MISSING
        return amount
    return lambda e: _MISSING if e[field] is None else e[field]


def _same(value: Any, operand: Any) -> bool:
    """Typed equality: booleans, numbers and strings only equal their own kind."""
    if isinstance(operand, bool) or isinstance(value, bool):
        return isinstance(operand, bool) and isinstance(value, bool) and value == operand
    if _is_number(operand) or isinstance(operand, Decimal):
        return (_is_number(value) or isinstance(value, Decimal)) and value == operand
    return isinstance(value, str) and value == operand


def _holds(op: str, operand: Any, value: Any) -> bool:
    if op == "exists":
        return (value is not _MISSING and value is not None) is operand
    if value is _MISSING or value is None:
        return op == "not_in"
    if op == "eq":
        return _same(value, operand)
    if op == "in":
        return any(_same(value, v) for v in operand)
    if op == "not_in":
        return not any(_same(value, v) for v in operand)
    if op == "prefix":
        return isinstance(value, str) and value.startswith(operand)
    if not (_is_number(value) or isinstance(value, Decimal)):
        return False
    if op == "gt":
        return bool(value > operand)
    if op == "gte":
        return bool(value >= operand)
    if op == "lt":
        return bool(value < operand)
    return bool(value <= operand)  # lte


def _operand(field: str, op: str, value: Any) -> Any:
    """``amount`` is compared as a decimal: its operands too (49.9 is not the float below it)."""
    if FIELDS.get(field) != NUMBER or op in ("exists", "prefix"):
        return value
    if isinstance(value, tuple):
        return tuple(Decimal(str(v)) for v in value)
    return Decimal(str(value))


def compile_where(where: Mapping[str, Condition]) -> Callable[[Mapping[str, Any]], bool]:
    """A predicate over a normalized event for a filter in normal form (:func:`parse_where`)."""
    checks = [(_getter(field), tuple((op, _operand(field, op, v)) for op, v in condition.items()))
              for field, condition in where.items()]

    def matches(event: Mapping[str, Any]) -> bool:
        for get, conditions in checks:
            value = get(event)
            for op, operand in conditions:
                if not _holds(op, operand, value):
                    return False
        return True

    return matches
