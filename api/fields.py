"""Field types and validators every schema uses: strict numbers, whole-match names, labels, losses."""

from __future__ import annotations

import numbers
import re
from typing import Any

import marshmallow as ma
from marshmallow import fields, validate

from dpflows.budget import PrivacyLoss
from dpflows.cells import NAME_PATTERN, label_problem

# Ids are SQL BIGINTs: a larger integer cannot name anything, and SQLite raises OverflowError on it.
ID_MAX = 2**63 - 1


class EpsilonField(fields.Field):
    """Dumps an exact ε or ρ (`PrivacyLoss`) as a JSON number (exact for every value a client can send)."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        if value is None:
            return None
        return value.to_json() if isinstance(value, PrivacyLoss) else value


class PassThroughList(fields.List):
    """Documented as a list of objects, dumped as is: the service already built plain dicts,
    and per-item field processing would cost milliseconds on answers with 10,000 keys."""

    def _serialize(self, value: Any, attr: str | None, obj: Any, **kwargs: Any) -> Any:
        return value


class Number(fields.Float):
    """A JSON number and nothing else: marshmallow's Float also takes the string "1" (and charged it
    as ε = 1), though the OpenAPI document says number. Refusing strings keeps one meaning per value."""

    default_error_messages = {  # noqa: RUF012 - marshmallow merges this class attribute up the MRO
        "not_a_number": "send a JSON number, not a string or another type (e.g. 0.5, not \"0.5\")"}

    def _validated(self, value: Any) -> float:
        if isinstance(value, bool) or not isinstance(value, numbers.Real):
            raise self.make_error("not_a_number")
        return super()._validated(value)


class WholeMatch(validate.Regexp):
    """A pattern the whole value must match: marshmallow's Regexp uses re.match, whose `$` also matches
    before a trailing newline ("demo\n"). OpenAPI shows the same pattern."""

    def __call__(self, value: str) -> str:
        if self.regex.fullmatch(value) is None:
            raise ma.ValidationError(self._format_error(value))
        return value


def _label(value: str) -> None:
    problem = label_problem(value)
    if problem is not None:
        raise ma.ValidationError(problem)


def name_field(*, required: bool = True, **metadata: Any) -> fields.String:
    """A dataset or zoning name: it becomes a file name (dpflows.cells.check_name)."""
    return fields.String(required=required, validate=WholeMatch(
        re.compile(NAME_PATTERN), error="use 1-64 letters, digits, '_', '-' or '.', starting with a letter or digit"),
        metadata=metadata)


def label_field(max_length: int, **kwargs: Any) -> fields.String:
    """A zone id or client name: printable, no control characters, no surrounding whitespace."""
    return fields.String(validate=[validate.Length(1, max_length), _label], **kwargs)


def _positive_number(description: str) -> Number:
    return Number(allow_nan=False, validate=validate.Range(min=0, min_inclusive=False),
                  metadata={"description": description})


class ApproxDpSchema(ma.Schema):
    epsilon = fields.Float(metadata={"description": "the ε of (ε, δ)-DP that the ρ implies (OpenDP's conversion)"})
    delta = fields.Float()
