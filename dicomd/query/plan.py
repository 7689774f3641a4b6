"""A checked Query -> one SELECT over the index, and where each response key's value comes from.

Owns: the statement's shape: FROM the query level's table, joined up to the parents the keys need
(by pk: rowid lookups), WHERE every supported key's condition (matching.py), SELECT the columns,
computed values and, when some key has no column, the kept attributes of the entity's newest
instance. No ORDER BY: rows stream in the order of the index the planner chose, never sorted whole.
Must not know: how the rows are fetched, datasets, the network.
"""

from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Any, Final

from pydicom.dataset import Dataset

from dicomd.dimse import status
from dicomd.query import matching
from dicomd.query.identifier import Placement, Query, QueryError, RequestedKey, element_text, tags
from dicomd.query.matching import Condition, MatchError
from dicomd.query.model import (
    ALIASES,
    DATE_TIME_PAIRS,
    REPRESENTATIVE,
    REQUEST_ITEM_KEYS,
    TABLES,
    KeyDef,
    Level,
    Match,
)

__all__ = ["INSTANCE_AVAILABILITY", "Output", "Plan", "Source", "build_plan"]

INSTANCE_AVAILABILITY: Final = 0x00080056

# How a level's row reaches its parent's.
_PARENT_JOIN: Final = {
    Level.IMAGE: "JOIN series se ON se.pk = i.series_pk",
    Level.SERIES: "JOIN study st ON st.pk = se.study_pk",
    Level.STUDY: "JOIN patient p ON p.pk = st.patient_pk",
}


class Source(Enum):
    ROW = "row"  # row[index]: a column or a computed value
    ATTRIBUTES = "attributes"  # the kept attributes of the entity's newest instance
    CONSTANT = "constant"  # `constant`
    EMPTY = "empty"  # zero length (a key below the query level)


@dataclass(frozen=True, slots=True)
class Output:
    key: RequestedKey
    source: Source
    index: int = -1
    constant: str = ""


@dataclass(frozen=True, slots=True)
class Plan:
    sql: str
    params: tuple[Any, ...]
    outputs: tuple[Output, ...]
    # Row indexes of the kept attributes and their transfer syntax, when some output needs them.
    attributes_index: int | None
    # A key had a value we did not match on: pending responses say FF01 (PS3.4 C.4.1.1.4).
    unsupported: bool


def _column(definition: KeyDef) -> str:
    return f"{ALIASES[definition.level]}.{definition.column}"


def build_plan(query: Query, *, pn_case_insensitive: bool) -> Plan:
    select: list[str] = [f"{ALIASES[query.level]}.pk"]
    conditions: list[Condition] = []
    outputs: list[Output] = []
    used: set[Level] = {query.level}
    unsupported = False
    needs_attributes = False

    combined: set[int] = set()
    if query.combined_datetime:
        for date_tag, time_tag in DATE_TIME_PAIRS.items():
            cond = _combined(query, date_tag, time_tag)
            if cond is not None:
                conditions.append(cond)
                combined.update((date_tag, time_tag))

    for key in query.keys:
        d = key.definition
        if key.placement is Placement.BELOW:
            outputs.append(Output(key, Source.EMPTY))
            unsupported = unsupported or _has_value(key)
            continue
        if key.tag == INSTANCE_AVAILABILITY:
            # Everything we index is on our disk: ONLINE, and a query for anything else finds none.
            outputs.append(Output(key, Source.CONSTANT, constant="ONLINE"))
            values = {v.strip(" ") for v in key.value.split("\\")} - {""}
            if values and "ONLINE" not in values and "*" not in values:
                conditions.append(Condition("0"))
            continue
        if d is None or d.match is Match.ITEMS:
            outputs.append(Output(key, Source.ATTRIBUTES))
            needs_attributes = True
            if d is None:
                unsupported = unsupported or _has_value(key)
            else:
                cond, partial = _items(query, key, d)
                used.add(d.level)
                unsupported = unsupported or partial
                if cond is not None:
                    conditions.append(cond)
            continue
        used.add(d.level)
        expression = d.sql if d.sql is not None else _column(d)
        outputs.append(Output(key, Source.ROW, len(select)))
        select.append(expression)
        if key.tag in combined:
            continue
        if d.match is Match.NONE:
            unsupported = unsupported or _has_value(key)
            continue
        try:
            cond = _condition(d, key.value, pn_case_insensitive=pn_case_insensitive)
        except MatchError as e:
            raise QueryError(
                status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, f"{d.keyword}: {e}", (key.tag,)
            ) from e
        if cond is not None:
            conditions.append(cond)

    attributes_index: int | None = None
    table, alias = TABLES[query.level]
    from_sql = f"{table} {alias}"
    for level in range(query.level, min(used) if used else query.level, -1):
        from_sql += " " + _PARENT_JOIN[Level(level)]
    if needs_attributes:
        attributes_index = len(select)
        if query.level is Level.IMAGE:
            select += ["i.attributes", "i.attributes_transfer_syntax"]
        else:
            select += ["rep.attributes", "rep.attributes_transfer_syntax"]
            from_sql += f" LEFT JOIN instance rep ON rep.pk = {REPRESENTATIVE[query.level]}"
    sql = f"SELECT {', '.join(select)} FROM {from_sql}"
    where = matching.all_of(conditions)
    params: tuple[Any, ...] = ()
    if where is not None:
        sql += f" WHERE {where.sql}"
        params = where.params
    return Plan(sql, params, tuple(outputs), attributes_index, unsupported)


def _has_value(key: RequestedKey) -> bool:
    if key.item is not None:
        return any(_item_value(key.item, tag) for tag in tags(key.item))
    return not matching.is_universal(key.value)


def _item_value(item: Dataset, tag: Any) -> str:
    try:
        element = item[tag]
        if element.VR == "SQ":
            return ""
        return "" if matching.is_universal(text := element_text(element)) else text
    except Exception:
        return ""


def _combined(query: Query, date_tag: int, time_tag: int) -> Condition | None:
    date, time = query.key(date_tag), query.key(time_tag)
    if date is None or time is None:
        return None
    if Placement.BELOW in (date.placement, time.placement):
        return None
    assert date.definition is not None and time.definition is not None
    try:
        return matching.combined_condition(
            _column(date.definition), _column(time.definition), date.value, time.value
        )
    except MatchError as e:
        raise QueryError(
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"{date.definition.keyword}/{time.definition.keyword}: {e}",
            (date_tag, time_tag),
        ) from e


def _items(query: Query, key: RequestedKey, d: KeyDef) -> tuple[Condition | None, bool]:
    """Sequence matching on the indexed item keys; True when other item keys had values."""
    if key.item is None:
        return None, False
    values = [_item_value(key.item, tag) for tag in REQUEST_ITEM_KEYS]
    others = any(
        _item_value(key.item, tag) for tag in tags(key.item) if tag not in REQUEST_ITEM_KEYS
    )
    return matching.items_condition(_column(d), values), others


def _condition(d: KeyDef, value: str, *, pn_case_insensitive: bool) -> Condition | None:
    column = _column(d)
    match d.match:
        case Match.TEXT:
            return matching.text_condition(column, value, multi=d.multi)
        case Match.PN:
            return matching.pn_condition(
                column, value, multi=d.multi, case_insensitive=pn_case_insensitive
            )
        case Match.UID:
            return matching.uid_condition(column, value)
        case Match.DATE:
            return matching.date_condition(column, value)
        case Match.TIME:
            return matching.time_condition(column, value)
        case Match.INTEGER:
            return matching.integer_condition(column, value)
        case Match.DECIMAL:
            return matching.decimal_condition(column, value)
        case Match.MODALITIES:
            inner = matching.text_condition("r2.modality", value)
            if inner is None:
                return None
            return Condition(
                f"st.pk IN (SELECT r2.study_pk FROM series r2 WHERE {inner.sql})", inner.params
            )
        case Match.SOP_CLASSES:
            inner = matching.uid_condition("i2.sop_class_uid", value)
            if inner is None:
                return None
            return Condition(
                "EXISTS (SELECT 1 FROM series r2 JOIN instance i2 ON i2.series_pk = r2.pk"
                f" WHERE r2.study_pk = st.pk AND {inner.sql})",
                inner.params,
            )
    return None
