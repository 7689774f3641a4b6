"""Attribute matching (PS3.4 C.2.2.2): one key's value -> an SQL condition with its parameters.

Owns: the translation of every matching type into SQL over the index columns, and the Python
matchers behind the two SQL functions the conditions may call (`dicomd_match`, `dicomd_items`),
which also serve sequence matching of response items. Pure: no I/O, no pydicom.
Must not know: which key maps to which column (model.py), how a statement is assembled (plan.py).

Safety: a value from the peer only ever reaches SQLite as a bound parameter, never as SQL text; the
SQL text is built from our column names and fixed fragments. LIKE patterns escape `%`, `_` and `\\`
with ESCAPE '\\'; GLOB patterns escape `[`. Wildcard matching in Python is the linear-time two-pointer
algorithm, not a regular expression, so no pattern can make it backtrack exponentially (SQLite's own
LIKE/GLOB are bounded the same way since 3.20).

Matching types, and the SQL chosen so that the indexes serve them (EXPLAIN QUERY PLAN in the tests):
- universal (empty value, or only "*"): no condition.
- single value: `col = ?`; PN: see below.
- wildcard `*` / `?`: `col GLOB ?` (case-sensitive, and its prefix uses a BINARY index).
- list of UIDs (backslash): `col IN (SELECT value FROM json_each(?))`: one parameter for any length.
  A backslash in another VR's value is taken as a list too, matched if any value matches.
- range (DA, TM): `col BETWEEN ? AND ?`, `col >= ?`, `col > '' AND col <= ?` (an empty value is no
  date). A TM upper bound is padded to the end of its precision ("1100" covers 11:00:59.999999), a
  lower bound loses its trailing zero pairs ("100000" also finds a stored "10").
- combined date-time (negotiated, C.2.2.2.5.1): a date range and a time range of the same form are
  one date-time range: boundary days compare the time too, days inside the range match whole.
- multi-valued columns (Other Patient IDs, Image Type, the physicians' names, ...): dicomd_match
  compares each stored value; sequence matching of the Request Attributes Sequence: dicomd_items.

PN (PS3.4 C.2.2.2.1 lets an SCP match names case-insensitively; `[query] pn_case_insensitive`):
trailing empty components ("Doe^Jane^^") are not significant. A query with "=" matches component
group by component group, an empty group being universal. A query without "=" matches the alphabetic
group when it is ASCII (the common case, answered from the patient_name index: `LIKE 'Doe%'`), and
any group when it is not (a Chinese or Japanese name without "=" is looked for where it is written).
SQLite's LIKE folds ASCII case only, so it serves as an index-backed prefilter, with dicomd_match
deciding exactly (casefold(), so "MÜLLER" finds "Müller") whenever the pattern is more than a prefix.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import Any, Final

__all__ = [
    "ANY_GROUP",
    "FOLD",
    "MULTI",
    "PN",
    "SQL_FUNCTIONS",
    "Condition",
    "MatchError",
    "all_of",
    "any_of",
    "combined_condition",
    "date_condition",
    "decimal_condition",
    "integer_condition",
    "is_universal",
    "items_condition",
    "match_pn",
    "match_value",
    "pn_condition",
    "python_match",
    "sql_items",
    "sql_match",
    "text_condition",
    "time_condition",
    "uid_condition",
    "wildcard_match",
]

# dicomd_match flags
MULTI: Final = 1  # the stored text holds several values joined by "\\"
PN: Final = 2  # person name rules (component groups, trailing "^")
FOLD: Final = 4  # case-insensitive (str.casefold)
ANY_GROUP: Final = 8  # PN without "=": any component group may match

_DATE = re.compile(r"[0-9]{8}")
_TIME = re.compile(r"[0-9]{2}(?:[0-9]{2}(?:[0-9]{2}(?:\.[0-9]{1,6})?)?)?")
_INTEGER = re.compile(r"[+-]?[0-9]{1,18}")
_DECIMAL = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?")


class MatchError(ValueError):
    """A value that no matching type allows for its VR (the request is answered with A900)."""


@dataclass(frozen=True, slots=True)
class Condition:
    sql: str
    params: tuple[Any, ...] = ()


def all_of(conditions: Iterable[Condition | None]) -> Condition | None:
    parts = [c for c in conditions if c is not None]
    if not parts:
        return None
    if len(parts) == 1:
        return parts[0]
    return Condition(
        " AND ".join(f"({c.sql})" for c in parts), tuple(p for c in parts for p in c.params)
    )


def any_of(conditions: Sequence[Condition]) -> Condition:
    if len(conditions) == 1:
        return conditions[0]
    return Condition(
        " OR ".join(f"({c.sql})" for c in conditions),
        tuple(p for c in conditions for p in c.params),
    )


# --- values ----------------------------------------------------------------------------------------


def is_universal(value: str) -> bool:
    """Universal matching (C.2.2.2.3): a zero-length value, or a value of "*" only."""
    stripped = value.strip(" ")
    return not stripped or not stripped.strip("*")


def _values(value: str) -> list[str] | None:
    """The values of a key, or None when it matches universally (one universal value suffices)."""
    values = [v.strip(" ") for v in value.split("\\")]
    values = [v for v in values if v]
    if not values or any(is_universal(v) for v in values):
        return None
    return values


def _has_wildcards(value: str) -> bool:
    return "*" in value or "?" in value


def _like_escape(text: str) -> str:
    return text.replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")


def _glob(pattern: str) -> str:
    # GLOB's own wildcards are DICOM's (*, ?); only a character class must not be opened.
    return pattern.replace("[", "[[]")


def _literal_prefix(pattern: str) -> str:
    for i, ch in enumerate(pattern):
        if ch in "*?":
            return pattern[:i]
    return pattern


def _function(column: str, value: str, flags: int) -> Condition:
    return Condition(f"dicomd_match({column}, ?, {flags})", (value,))


# --- text and names --------------------------------------------------------------------------------


def text_condition(column: str, value: str, *, multi: bool = False) -> Condition | None:
    """Single value and wildcard matching, case-sensitive (C.2.2.2.1, C.2.2.2.4)."""
    values = _values(value)
    if values is None:
        return None
    conditions = []
    for v in values:
        if multi:
            conditions.append(_function(column, v, MULTI))
        elif _has_wildcards(v):
            conditions.append(Condition(f"{column} GLOB ?", (_glob(v),)))
        else:
            conditions.append(Condition(f"{column} = ?", (v,)))
    return any_of(conditions)


def _normalize_pn(name: str) -> str:
    """Trailing empty components and groups are not significant (PS3.5 6.2.1.1)."""
    groups = [g.strip(" ").rstrip("^").strip(" ") for g in name.split("=")]
    while len(groups) > 1 and not groups[-1]:
        groups.pop()
    return "=".join(groups)


def pn_condition(
    column: str, value: str, *, multi: bool = False, case_insensitive: bool = True
) -> Condition | None:
    values = _values(value)
    if values is None:
        return None
    base = PN | (FOLD if case_insensitive else 0) | (MULTI if multi else 0)
    conditions = []
    for raw in values:
        v = _normalize_pn(raw)
        if "=" in v or not v.isascii():
            flags = base if "=" in v else base | ANY_GROUP
            prefix = _literal_prefix(v.split("=")[0]) if "=" in v else ""
            conditions.append(_with_prefix(column, prefix, _function(column, v, flags), multi))
            continue
        prefix = _literal_prefix(v)
        if (
            case_insensitive
            and not multi
            and prefix
            and v[len(prefix) :].strip("*") == ""
            and v != prefix
        ):
            # A prefix ("Doe*", "DOE^J*"): LIKE is exact here, and it runs on the index.
            conditions.append(
                Condition(f"{column} LIKE ? ESCAPE '\\'", (_like_escape(prefix) + "%",))
            )
            continue
        conditions.append(_with_prefix(column, prefix, _function(column, v, base), multi))
    return any_of(conditions)


def _with_prefix(column: str, prefix: str, exact: Condition, multi: bool) -> Condition:
    """`exact`, behind an index-friendly LIKE on the literal prefix when there is one."""
    if not prefix or multi:
        return exact
    like = Condition(f"{column} LIKE ? ESCAPE '\\'", (_like_escape(prefix) + "%",))
    result = all_of((like, exact))
    assert result is not None
    return result


# --- UIDs, numbers -----------------------------------------------------------------------------------


def uid_condition(column: str, value: str) -> Condition | None:
    """Single value and list of UID matching (C.2.2.2.2); "*" alone is taken as universal."""
    uids = [u.strip(" \x00") for u in value.split("\\")]
    uids = [u for u in uids if u]
    if not uids or uids == ["*"]:
        return None
    if any(_has_wildcards(u) for u in uids):
        raise MatchError("wild card matching is not allowed for a UID")
    if len(uids) == 1:
        return Condition(f"{column} = ?", (uids[0],))
    return Condition(f"{column} IN (SELECT value FROM json_each(?))", (json.dumps(uids),))


def integer_condition(column: str, value: str) -> Condition | None:
    values = _values(value)
    if values is None:
        return None
    if not all(_INTEGER.fullmatch(v) for v in values):
        raise MatchError(f"{value!r} is not an integer (or a list of integers)")
    numbers = sorted({int(v) for v in values})
    if len(numbers) == 1:
        return Condition(f"{column} = ?", (numbers[0],))
    return Condition(f"{column} IN (SELECT value FROM json_each(?))", (json.dumps(numbers),))


def decimal_condition(column: str, value: str) -> Condition | None:
    values = _values(value)
    if values is None:
        return None
    if not all(_DECIMAL.fullmatch(v) for v in values):
        raise MatchError(f"{value!r} is not a decimal number")
    return any_of(
        [Condition(f"{column} <> '' AND CAST({column} AS REAL) = ?", (float(v),)) for v in values]
    )


# --- dates and times ---------------------------------------------------------------------------------


def _date(text: str) -> str:
    if len(text) == 10 and text[4] == "." and text[7] == ".":  # ACR-NEMA "YYYY.MM.DD"
        text = text.replace(".", "")
    if not _DATE.fullmatch(text):
        raise MatchError(f"{text!r} is not a date (YYYYMMDD)")
    return text


def _time(text: str) -> str:
    if ":" in text:  # ACR-NEMA "HH:MM:SS"
        text = text.replace(":", "")
    if not _TIME.fullmatch(text):
        raise MatchError(f"{text!r} is not a time (HH[MM[SS[.FFFFFF]]])")
    return text


def _time_low(text: str) -> str:
    # "100000" and "10" are the same moment; the shorter string sorts first, so keep it.
    text = text.rstrip("0").rstrip(".") if "." in text else text
    while len(text) > 2 and text.endswith("00"):
        text = text[:-2]
    return text


def _time_high(text: str) -> str:
    if len(text) == 2:
        return text + "5959.999999"
    if len(text) == 4:
        return text + "59.999999"
    if len(text) == 6:
        return text + ".999999"
    whole, fraction = text.split(".")
    return f"{whole}.{fraction.ljust(6, '9')}"


_Range = tuple[str | None, str | None]


def _parse(value: str, parse: Callable[[str], str]) -> list[str | _Range] | None:
    """Each value of a DA/TM key: a single value, or a (low, high) range with None for open."""
    values = _values(value)
    if values is None:
        return None
    out: list[str | _Range] = []
    for v in values:
        if "-" not in v:
            out.append(parse(v))
            continue
        low, _, high = (part.strip(" ") for part in v.partition("-"))
        if not low and not high:
            return None  # "-": every date (PS3.4 defines no such form; read as universal)
        out.append((parse(low) if low else None, parse(high) if high else None))
    return out


def date_condition(column: str, value: str) -> Condition | None:
    parsed = _parse(value, _date)
    if parsed is None:
        return None
    return any_of([_range_sql(column, v, lambda x: x, lambda x: x) for v in parsed])


def time_condition(column: str, value: str) -> Condition | None:
    parsed = _parse(value, _time)
    if parsed is None:
        return None
    return any_of([_range_sql(column, v, _time_low, _time_high) for v in parsed])


def _range_sql(
    column: str, v: str | _Range, low_of: Callable[[str], str], high_of: Callable[[str], str]
) -> Condition:
    if isinstance(v, str):
        return Condition(f"{column} = ?", (v,))
    low, high = v
    if low is not None and high is not None:
        return Condition(f"{column} BETWEEN ? AND ?", (low_of(low), high_of(high)))
    if low is not None:
        return Condition(f"{column} >= ?", (low_of(low),))
    assert high is not None
    return Condition(f"{column} > '' AND {column} <= ?", (high_of(high),))


def combined_condition(
    date_column: str, time_column: str, date_value: str, time_value: str
) -> Condition | None:
    """Date and time ranges of the same form as one date-time range (C.2.2.2.5.1); None when the
    pair does not qualify (then each key is matched on its own)."""
    dates, times = _parse(date_value, _date), _parse(time_value, _time)
    if dates is None or times is None or len(dates) != 1 or len(times) != 1:
        return None
    d, t = dates[0], times[0]
    if isinstance(d, str) or isinstance(t, str):
        return None
    if (d[0] is None) != (t[0] is None) or (d[1] is None) != (t[1] is None):
        return None
    parts: list[Condition] = []
    if d[0] is not None and t[0] is not None:
        # On the first day the time must be at or after the start; later days match whole.
        parts.append(Condition(f"{date_column} >= ?", (d[0],)))
        parts.append(Condition(f"{date_column} > ? OR {time_column} >= ?", (d[0], _time_low(t[0]))))
    else:
        parts.append(Condition(f"{date_column} > ''"))
    if d[1] is not None and t[1] is not None:
        parts.append(Condition(f"{date_column} <= ?", (d[1],)))
        parts.append(
            Condition(
                f"{date_column} < ? OR ({time_column} <> '' AND {time_column} <= ?)",
                (d[1], _time_high(t[1])),
            )
        )
    return all_of(parts)


# --- sequences -----------------------------------------------------------------------------------------


def items_condition(column: str, item_values: Sequence[str]) -> Condition | None:
    """Sequence matching on a column of items joined by "\\", components by "^" (record.py)."""
    if all(is_universal(v) for v in item_values):
        return None
    patterns = ["" if is_universal(v) else v.strip(" ") for v in item_values]
    placeholders = ", ".join("?" * len(patterns))
    return Condition(f"dicomd_items({column}, {placeholders})", tuple(patterns))


# --- the Python side -----------------------------------------------------------------------------------


def wildcard_match(value: str, pattern: str) -> bool:
    """`*` matches any run of characters, `?` one character; O(len(value) * len(pattern))."""
    v = p = 0
    star = -1
    mark = 0
    while v < len(value):
        if p < len(pattern) and pattern[p] == "*":
            star, mark = p, v
            p += 1
        elif p < len(pattern) and (pattern[p] == "?" or pattern[p] == value[v]):
            v += 1
            p += 1
        elif star >= 0:
            p = star + 1
            mark += 1
            v = mark
        else:
            return False
    while p < len(pattern) and pattern[p] == "*":
        p += 1
    return p == len(pattern)


def match_value(stored: str, pattern: str, *, fold: bool = False) -> bool:
    if fold:
        return wildcard_match(stored.casefold(), pattern.casefold())
    return wildcard_match(stored, pattern)


def match_pn(stored: str, query: str, *, fold: bool, any_group: bool = False) -> bool:
    stored_groups = _normalize_pn(stored).split("=")
    query_groups = _normalize_pn(query).split("=")
    if len(query_groups) == 1 and any_group:
        return any(match_value(g, query_groups[0], fold=fold) for g in stored_groups if g)
    for i, q in enumerate(query_groups[:3]):
        if is_universal(q):
            continue
        group = stored_groups[i] if i < len(stored_groups) else ""
        if not match_value(group, q, fold=fold):
            return False
    return True


def sql_match(stored: object, pattern: object, flags: object) -> int:
    """dicomd_match(stored, pattern, flags): 1 if a (any) stored value matches the pattern."""
    if not isinstance(stored, str) or not isinstance(pattern, str) or not isinstance(flags, int):
        return 0
    values = stored.split("\\") if flags & MULTI else [stored]
    fold = bool(flags & FOLD)
    for v in values:
        if flags & PN:
            if match_pn(v, pattern, fold=fold, any_group=bool(flags & ANY_GROUP)):
                return 1
        elif match_value(v.strip(" "), pattern, fold=fold):
            return 1
    return 0


def sql_items(stored: object, *patterns: object) -> int:
    """dicomd_items(stored, p1, p2, ...): 1 if an item (components joined by "^") has every
    non-empty pattern matching its component."""
    if not isinstance(stored, str) or not all(isinstance(p, str) for p in patterns):
        return 0
    for item in stored.split("\\"):
        components = item.split("^")
        if all(
            not p or (i < len(components) and wildcard_match(components[i], str(p)))
            for i, p in enumerate(patterns)
        ):
            return 1
    return 0


SQL_FUNCTIONS: Final[dict[str, tuple[int, Callable[..., int]]]] = {
    "dicomd_match": (3, sql_match),
    "dicomd_items": (3, sql_items),
}


def python_match(stored: str, query: str, vr: str, *, pn_case_insensitive: bool) -> bool:
    """The matching of `query` against a stored value of VR `vr`, for sequence item keys (where
    there is no SQL to run): the same rules as the conditions above. A malformed query value
    matches nothing."""
    stored_values = [s.strip(" ") for s in stored.split("\\")] if stored else []
    try:
        if vr == "UI":
            uids = {u.strip(" \x00") for u in query.split("\\")} - {""}
            return not uids or uids == {"*"} or any(s in uids for s in stored_values)
        values = _values(query)
        if values is None:
            return True
        if vr in ("DA", "TM"):
            parsed = _parse(query, _date if vr == "DA" else _time)
            if parsed is None:
                return True
            return any(_in_range(s, v, vr) for s in stored_values if s for v in parsed)
        for s in stored_values:
            for v in values:
                if vr == "PN":
                    if match_pn(
                        s, v, fold=pn_case_insensitive, any_group="=" not in v and not v.isascii()
                    ):
                        return True
                elif wildcard_match(s, v):
                    return True
    except MatchError:
        return False
    return False


def _in_range(stored: str, v: str | _Range, vr: str) -> bool:
    if isinstance(v, str):
        return stored == v
    low, high = v
    if vr == "TM":
        low = _time_low(low) if low is not None else None
        high = _time_high(high) if high is not None else None
    return (low is None or stored >= low) and (high is None or stored <= high)
