"""Response identifiers encoded straight from index rows: the per-query compiled fast path.

Owns: `ResponseEncoder`, which turns one matching row into the bytes of its C-FIND response
identifier. It is built once per query: the layout (every response element in ascending tag order,
PS3.5 7.1), the element headers, and the elements whose value is the same for every row (Query/
Retrieve Level, Retrieve AE Title, constants, keys answered empty) are encoded once; per row only
the row's values are encoded and joined.
Must not know: SQL, the network.

Rows come with their text as the UTF-8 bytes the index holds (`text_as_bytes`: the caller reads
them with sqlite3's text_factory bytes). A value that is ASCII is the same bytes in every supported
character set, and a UTF-8 response takes any value as it is: such rows are encoded without
decoding a str and encoding it again. Only a row with a non-ASCII value in another character set
is decoded (text_row) and encoded with that set's codec.

The bytes are exactly those of response.response_identifier (the general builder, which goes
through pydicom for what needs it); tests/query/test_row_encoder.py compares the two on generated
rows. A row takes the general builder when the fast path cannot promise that:
- some key is answered from the kept attributes (sequences, attributes without a column);
- a value is not ASCII and the response's character set would use ISO 2022 code extensions
  (a multi-valued Specific Character Set, PS3.5 6.1.2.5) or a charset whose encoder pydicom
  special-cases (ISO_IR 13); only charsets without code extensions, where encoding a value is
  str.encode of one Python codec, are handled here;
- a short-VR value is longer than 65535 bytes (the general builder reports that).

Character set (PS3.4 C.4.1.1.3.2 and PS3.5 6.1.2): the rules of response.choose_charsets. All
values ASCII: the query's Specific Character Set when it names known character sets, none
otherwise. Else the query's, when it is one character set that can represent every value; else
ISO_IR 192 (UTF-8), which represents them all.
"""

from __future__ import annotations

import functools
import struct
from collections.abc import Callable, Sequence
from itertools import repeat
from types import CodeType
from typing import Any, Final

from pydicom.charset import python_encoding

from dicomd.query.identifier import (
    QUERY_RETRIEVE_LEVEL,
    RETRIEVE_AE_TITLE,
    SPECIFIC_CHARACTER_SET,
    Query,
)
from dicomd.query.plan import Plan, Source
from dicomd.query.response import (
    _BINARY,
    _CHARSET_VRS,
    _DEFAULT_REPERTOIRE,
    _LONG_VRS,
    UTF8,
    _encode_simple,
    _Simple,
    response_identifier,
)
from dicomd.transfer_syntaxes import (
    DEFLATED_EXPLICIT_VR_LE,
    EXPLICIT_VR_BE,
    IMPLICIT_VR_LE,
    deflate,
)

__all__ = ["STATELESS_CHARSETS", "ResponseEncoder"]

# Specific Character Set values without code extensions whose pydicom encoder is plain
# str.encode with the Python codec of python_encoding (PS3.3 C.12.1.1.2, Table C.12-2 and the
# multi-byte ones without code extensions, Table C.12-5). ISO_IR 13 is left out: pydicom encodes
# JIS X 0201 with a custom encoder.
STATELESS_CHARSETS: Final = frozenset(
    {
        "ISO_IR 100",
        "ISO_IR 101",
        "ISO_IR 109",
        "ISO_IR 110",
        "ISO_IR 126",
        "ISO_IR 127",
        "ISO_IR 138",
        "ISO_IR 144",
        "ISO_IR 148",
        "ISO_IR 166",
        "ISO_IR 192",
        "GB18030",
        "GBK",
    }
)

# The codecs of those that represent every Unicode character (UTF-8, and GB 18030 by its
# four-byte sequences): no need to try each value (a lone surrogate still fails the encoding,
# and then the general builder answers the row).
_UTF8_CODEC: Final = python_encoding[UTF8]
_EVERY_CHARACTER: Final = frozenset({_UTF8_CODEC, python_encoding["GB18030"]})
# What raw_ascii returns for a row with a value that is not ASCII.
_NON_ASCII: Final = object()
# page(): a header table has this many lengths, doubled until the longest value fits, up to
# _TABLE_LIMIT; a longer value takes the row path. A page of fewer than _PAGE_MIN rows costs
# more column by column than row by row.
_TABLE_START: Final = 64
_TABLE_LIMIT: Final = 4096
_PAGE_MIN: Final = 8

# Slot kinds of the layout.
_FIXED: Final = 0  # bytes encoded once
_CHARSET: Final = 1  # the Specific Character Set element, chosen per row
_TEXT: Final = 2  # a text VR value from the row
_OTHER: Final = 3  # a binary VR value from the row: the general element encoder

# (kind, row index or fixed bytes, header prefix (or tag for _OTHER), VR, length packer, padding,
# largest length the header can carry)
_Slot = tuple[int, Any, Any, str, Any, bytes, int]
_NO_SLOT: Final = (None, b"", 0)


class ResponseEncoder:
    """row -> response identifier bytes, for one query in one transfer syntax."""

    def __init__(
        self,
        query: Query,
        plan: Plan,
        *,
        ae_title: str,
        pn_case_insensitive: bool,
        transfer_syntax: str,
    ) -> None:
        self._query, self._plan = query, plan
        self._ae_title = ae_title
        self._pn_case_insensitive = pn_case_insensitive
        self._transfer_syntax = transfer_syntax
        self._implicit = transfer_syntax == IMPLICIT_VR_LE
        self._little = transfer_syntax != EXPLICIT_VR_BE
        self._deflate = transfer_syntax == DEFLATED_EXPLICIT_VR_LE
        self._binary = (self._implicit, self._little, ["iso8859"])
        charsets = query.charsets
        known = all(cs in python_encoding for cs in charsets)
        # The response's Specific Character Set when every value is ASCII, and, for a query with
        # one character set without code extensions, its codec for the values that are not.
        self._ascii_charset = self._charset_element(charsets if known else ())
        self._utf8_charset = self._charset_element((UTF8,))
        self._query_codec: str | None = None
        if len(charsets) == 1 and (
            charsets[0] in STATELESS_CHARSETS or charsets[0] in _DEFAULT_REPERTOIRE
        ):
            self._query_codec = (
                "ascii" if charsets[0] in _DEFAULT_REPERTOIRE else python_encoding[charsets[0]]
            )
        self._query_charset = self._charset_element(charsets) if self._query_codec else b""
        self.fast = all(o.source is not Source.ATTRIBUTES for o in plan.outputs)
        self._slots: list[_Slot] = []
        self._texts: list[int] = []  # row indexes of the values the charset choice looks at
        self._raw_ascii: Callable[[tuple[Any, ...]], object]
        self._raw_utf8: Callable[[tuple[Any, ...]], bytes | None]
        self._in_charset: Callable[[tuple[Any, ...], str, bytes], bytes | None]
        if self.fast:
            self._compile()
            self._generate()

    @property
    def text_as_bytes(self) -> bool:
        """Whether the rows must be read with their text as UTF-8 bytes (sqlite3's text_factory
        bytes): what the index holds, so an ASCII value or a value of a UTF-8 response is taken
        as read, neither decoded into a str nor encoded again (a fifth of a row's work). Every
        row of the fast path is; the general builder takes rows of str."""
        return self.fast

    # -- compiling -------------------------------------------------------------------------------

    def _compile(self) -> None:
        elements: list[tuple[int, _Slot]] = []
        constants: list[str] = []
        for output in self._plan.outputs:
            key = output.key
            if output.source is Source.ROW:
                self._texts.append(output.index)
                if key.vr in _BINARY:
                    slot: _Slot = (_OTHER, output.index, key.tag, key.vr, *_NO_SLOT)
                else:
                    prefix, pack, limit = self._header_parts(key.tag, key.vr)
                    pad = b"\x00" if key.vr == "UI" else b" "  # PS3.5 6.2: even length
                    slot = (_TEXT, output.index, prefix, key.vr, pack, pad, limit)
                elements.append((key.tag, slot))
                continue
            value = output.constant if output.source is Source.CONSTANT else None
            if value:
                constants.append(value)
            elements.append((key.tag, self._fixed(key.tag, key.vr, value)))
        elements.append(
            (QUERY_RETRIEVE_LEVEL, self._fixed(QUERY_RETRIEVE_LEVEL, "CS", self._query.level.name))
        )
        elements.append((RETRIEVE_AE_TITLE, self._fixed(RETRIEVE_AE_TITLE, "AE", self._ae_title)))
        constants += [self._query.level.name, self._ae_title]
        elements.append((SPECIFIC_CHARACTER_SET, (_CHARSET, None, None, "CS", *_NO_SLOT)))
        elements.sort(key=lambda e: e[0])
        self._slots = [slot for _tag, slot in elements]
        # A non-ASCII constant (an AE title) would make the charset choice depend on it: leave
        # such configurations to the general builder.
        self.fast = all(c.isascii() for c in constants)

    def _fixed(self, tag: int, vr: str, value: str | None) -> _Slot:
        data = _encode_simple(_Simple(tag, vr, value), self._implicit, self._little, ["iso8859"])
        return (_FIXED, data, None, vr, *_NO_SLOT)

    def _charset_element(self, charsets: tuple[str, ...]) -> bytes:
        if not charsets:
            return b""
        return _encode_simple(
            _Simple(SPECIFIC_CHARACTER_SET, "CS", "\\".join(charsets)),
            self._implicit,
            self._little,
            ["iso8859"],
        )

    def _header_parts(self, tag: int, vr: str) -> tuple[bytes, Callable[[int], bytes], int]:
        """The header's bytes before the value length, the length's packer, its largest value
        (PS3.5 7.1.1-7.1.3: explicit VRs with a 2-byte length, or reserved bytes and 4)."""
        order = "<" if self._little else ">"
        tag_bytes = struct.pack(f"{order}HH", tag >> 16, tag & 0xFFFF)
        long = struct.Struct(f"{order}I").pack
        if self._implicit:
            return tag_bytes, long, 0xFFFFFFFF
        if vr in _LONG_VRS:
            return tag_bytes + vr.encode() + b"\x00\x00", long, 0xFFFFFFFF
        return tag_bytes + vr.encode(), struct.Struct(f"{order}H").pack, 0xFFFF

    # -- encoding --------------------------------------------------------------------------------

    def page(self, rows: Sequence[tuple[Any, ...]]) -> list[bytes]:
        """[self(row) for row in rows], the same bytes, column by column where it can be.

        Per row, the generated code runs a dozen lines of bytecode per element; a page of rows is
        encoded with a pass over each column instead (is every value bytes, is every value ASCII,
        their lengths, their headers from a table) and one join per row, each pass a builtin
        that loops in C: about a third less per row. A page it cannot take whole (an element
        this does not handle, a non-ASCII value outside a UTF-8 response, a long value) is
        encoded row by row."""
        if self.fast and len(rows) >= _PAGE_MIN:
            try:
                encoded = self._columns(rows)
            except UnicodeError:  # a value no codec takes: row by row, as __call__ decides
                encoded = None
            if encoded is not None:
                if self._deflate:
                    return [self._finish(data) for data in encoded]  # type: ignore[misc]
                return encoded
        return [self(row) for row in rows]

    def _columns(self, rows: Sequence[tuple[Any, ...]]) -> list[bytes] | None:
        utf8 = self._query_codec == _UTF8_CODEC
        count = len(rows)
        columns = list(zip(*rows, strict=True))
        parts: list[Any] = []
        for n, (kind, ref, _prefix, vr, _pack, _pad, _limit) in enumerate(self._slots):
            if kind == _FIXED:
                parts.append(repeat(ref, count))
                continue
            if kind == _CHARSET:
                parts.append(repeat(self._query_charset if utf8 else self._ascii_charset, count))
                continue
            if kind != _TEXT:
                return None
            column: Sequence[Any] = columns[ref]
            try:
                joined = b"".join(column)
            except TypeError:
                # None (answered empty) or a number (formatted as str() does), as _raw_block.
                column = [
                    b"" if v is None else v if v.__class__ is bytes else str(v).encode()
                    for v in column
                ]
                joined = b"".join(column)
            if not joined.isascii():
                if not utf8:
                    return None  # a character set to choose per row
                if vr == "PN":
                    names = _pn_column_utf8(column, joined)
                    if names is None:
                        return None
                    column = names
                elif vr not in _CHARSET_VRS:
                    column = [
                        v if v.isascii() else v.decode().encode("ascii", errors="replace")
                        for v in column
                    ]
            lengths = list(map(len, column))
            table = self._headers(n, max(lengths))
            if table is None:
                return None
            headers, pads = table
            parts += (map(headers.__getitem__, lengths), column, map(pads.__getitem__, lengths))
        return list(map(b"".join, zip(*parts, strict=True)))

    def _headers(self, n: int, longest: int) -> tuple[list[bytes], list[bytes]] | None:
        """Slot n's element header for a value of each length up to `longest` (its padded
        length packed after the tag and VR), and the padding each length takes (PS3.5 6.2:
        even length); None past _TABLE_LIMIT or the header's limit, for the row path."""
        _kind, _ref, prefix, _vr, pack, pad, limit = self._slots[n]
        if longest >= _TABLE_LIMIT or longest + (longest & 1) > limit:
            return None
        size = _TABLE_START
        while size <= longest:
            size *= 2
        return _shared_headers(prefix, pack.__self__.format, pad, size)

    def __call__(self, row: tuple[Any, ...]) -> bytes:
        if self.fast:
            try:
                data = self._encode(row)
            except UnicodeError:  # a value no codec takes (a lone surrogate): pydicom decides
                data = None
            if data is not None:
                return data
            row = text_row(row)
        return response_identifier(
            self._query,
            self._plan,
            row,
            ae_title=self._ae_title,
            pn_case_insensitive=self._pn_case_insensitive,
            transfer_syntax=self._transfer_syntax,
        )

    def _encode(self, row: tuple[Any, ...]) -> bytes | None:
        if self._query_codec == _UTF8_CODEC:
            # The stored UTF-8 is the response's encoding: every row is answered as read.
            return self._finish(self._raw_utf8(row))
        data = self._raw_ascii(row)
        if data is not _NON_ASCII:  # every value ASCII: the bytes as read, no charset decision
            return self._finish(data)  # type: ignore[arg-type]  # bytes or None
        row = text_row(row)
        if self._query_codec in _EVERY_CHARACTER:
            # The query's character set (GB18030) represents every value: no need to try each.
            return self._finish(self._in_charset(row, self._query_codec, self._query_charset))
        chosen = self._choose(row)
        if chosen is None:
            return None
        return self._finish(self._in_charset(row, *chosen))

    def _finish(self, result: bytes | None) -> bytes | None:
        if result is not None and self._deflate:
            return deflate(result)
        return result

    def _generate(self) -> None:
        """Compile the layout into straight-line functions of a row, one block per element: a
        loop over the slots cost about 1 us per element per row (tuple unpacking, branching on
        the kind), most of a response's encoding; the generated code does only the element's work.
        raw_ascii and raw_utf8 take the row as read (text_as_bytes): raw_ascii answers a row whose
        values are all ASCII and gives up (_NON_ASCII) at the first that is not; raw_utf8 answers
        any row of a query in UTF-8. in_charset takes a row of str (text_row) and a chosen codec.
        What each block does is what response.response_identifier does for that VR (the tests
        compare the bytes). The code depends on the layout alone (_layout_code): what differs
        between two queries of one layout, the bytes of headers and fixed elements, are names."""
        names: dict[str, Any] = {
            "_encode_simple": _encode_simple,
            "_Simple": _Simple,
            "_pn_bytes": _pn_bytes,
            "_pn_utf8": _pn_utf8,
            "_NON_ASCII": _NON_ASCII,
            "binary": self._binary,
            "ascii_charset": self._ascii_charset,
            "query_charset": self._query_charset,
        }
        layout: list[tuple[int, int, str, int]] = []
        for n, (kind, ref, prefix, vr, pack, pad, limit) in enumerate(self._slots):
            if kind == _FIXED:
                names[f"fixed{n}"] = ref
                ref = -1
            elif kind == _TEXT:
                names[f"prefix{n}"], names[f"pack{n}"], names[f"pad{n}"] = prefix, pack, pad
            elif kind == _OTHER:  # prefix holds the tag
                names[f"tag{n}"], names[f"vr{n}"] = prefix, vr
            layout.append((kind, ref, vr, limit))
        exec(_layout_code(tuple(layout)), names)  # our own source, made by _layout_code
        self._raw_ascii = names["raw_ascii"]
        self._raw_utf8 = names["raw_utf8"]
        self._in_charset = names["in_charset"]

    def _choose(self, row: tuple[Any, ...]) -> tuple[str, bytes] | None:
        """(codec, Specific Character Set element) for a row with a non-ASCII value; None when
        the general builder must answer it (a query in UTF-8 or GB18030 never gets here: _encode
        answers every row in it)."""
        if self._query_codec is not None:
            values = [row[i] for i in self._texts if isinstance(row[i], str)]
            try:
                for value in values:
                    value.encode(self._query_codec)
            except UnicodeError:
                pass
            else:
                return self._query_codec, self._query_charset
        elif self._query.charsets and all(cs in python_encoding for cs in self._query.charsets):
            return None  # code extensions may represent it: the general builder decides
        return "utf-8", self._utf8_charset


@functools.lru_cache(maxsize=256)
def _layout_code(layout: tuple[tuple[int, int, str, int], ...]) -> CodeType:
    """The code of raw_ascii, raw_utf8 and in_charset for a layout of (kind, row index, VR, length
    limit) slots. Writing and compiling it costs milliseconds; a server sees the same few layouts
    (the keys a viewer asks for) over and over."""
    ascii_body: list[str] = []
    utf8_body: list[str] = []
    coded_body: list[str] = []
    ascii_parts: list[str] = []
    utf8_parts: list[str] = []
    coded_parts: list[str] = []
    for n, (kind, ref, vr, limit) in enumerate(layout):
        if kind == _FIXED:
            parts = [f"fixed{n}"]
            ascii_parts += parts
            utf8_parts += parts
            coded_parts += parts
        elif kind == _CHARSET:
            ascii_parts.append("ascii_charset")
            utf8_parts.append("query_charset")
            coded_parts.append("charset")
        elif kind == _TEXT:
            ascii_body += _raw_block(n, ref, limit, "return _NON_ASCII")
            if vr not in _CHARSET_VRS:
                coded: str | None = '.encode("ascii", errors="replace")'
                utf8 = f'd{n} = value.decode().encode("ascii", errors="replace")'
            elif vr == "PN":
                coded = None
                utf8 = f"d{n} = _pn_utf8(value)"
            else:
                coded = ".encode(codec)"
                utf8 = f"d{n} = value"
            utf8_body += _raw_block(n, ref, limit, utf8)
            coded_body += _text_block(n, ref, limit, coded)
            parts = [f"prefix{n}", f"pack{n}(k{n})", f"d{n}"]
            ascii_parts += parts
            utf8_parts += parts
            coded_parts += parts
        else:  # _OTHER: a number, but a column may hold text
            ascii_body += _raw_other(n, ref, "return _NON_ASCII")
            utf8_body += _raw_other(n, ref, "pass")
            ascii_parts.append(f"o{n}")
            utf8_parts.append(f"o{n}")
            coded_parts.append(f"_encode_simple(_Simple(tag{n}, vr{n}, row[{ref}]), *binary)")
    source = "\n".join(
        [
            "def raw_ascii(row):",
            *ascii_body,
            f"    return b''.join(({', '.join(ascii_parts)},))",
            "def raw_utf8(row):",
            *utf8_body,
            f"    return b''.join(({', '.join(utf8_parts)},))",
            "def in_charset(row, codec, charset):",
            *coded_body,
            f"    return b''.join(({', '.join(coded_parts)},))",
        ]
    )
    return compile(source, "<row_encoder>", "exec")


@functools.lru_cache(maxsize=512)
def _shared_headers(
    prefix: bytes, length_format: str, pad: bytes, size: int
) -> tuple[list[bytes], list[bytes]]:
    """For each value length below `size`: the element header (prefix, then the padded length
    packed with `length_format`) and the padding. Shared by every query with that element."""
    pack = struct.Struct(length_format).pack
    return (
        [prefix + pack(k + (k & 1)) for k in range(size)],
        [pad if k & 1 else b"" for k in range(size)],
    )


def _text_block(n: int, ref: int, limit: int, encode: str | None) -> list[str]:
    """Generated lines that leave element n's value bytes in d<n> (empty for None or ""), padded
    to even length (PS3.5 6.2), and their length in k<n>, or return None when it is too long for
    the header. `encode` is the method call for a str; None for a PN in a codec (_pn_bytes). A
    str that is ASCII is encoded as ASCII in any codec, which every supported charset agrees
    with."""
    if encode is None:
        convert = [
            f"        d{n} = text.encode() if text.isascii() else _pn_bytes(text, codec)",
            f"        if d{n} is None:",
            "            return None",
        ]
    else:
        convert = [f"        d{n} = text.encode() if text.isascii() else text{encode}"]
    return [
        f"    value = row[{ref}]",
        '    if value is None or value == "":',
        f'        d{n} = b""',
        f"        k{n} = 0",
        "    else:",
        "        text = value if value.__class__ is str else str(value)",
        *convert,
        *_length_lines(n, limit),
    ]


def _raw_block(n: int, ref: int, limit: int, non_ascii: str) -> list[str]:
    """As _text_block, for a value as read with text_as_bytes: its UTF-8 bytes (a number is
    formatted as str() does). An ASCII value is its own encoding in every supported charset;
    `non_ascii` is the statement for one that is not (it leaves d<n>, None for a value the
    general builder must answer, or returns)."""
    return [
        f"    value = row[{ref}]",
        '    if value is None or value == b"":',
        f'        d{n} = b""',
        f"        k{n} = 0",
        "    else:",
        "        if value.__class__ is not bytes:",
        "            value = str(value).encode()",
        "        if value.isascii():",
        f"            d{n} = value",
        "        else:",
        f"            {non_ascii}",
        *(
            []
            if non_ascii.startswith("return")
            else [f"            if d{n} is None:", "                return None"]
        ),
        *_length_lines(n, limit),
    ]


def _raw_other(n: int, ref: int, non_ascii: str) -> list[str]:
    """Generated lines that leave a binary VR element, encoded in full, in o<n>; text read as
    bytes is decoded first (`non_ascii` runs first for text that is not ASCII)."""
    return [
        f"    value = row[{ref}]",
        "    if value.__class__ is bytes:",
        "        if not value.isascii():",
        f"            {non_ascii}",
        "        value = value.decode()",
        f"    o{n} = _encode_simple(_Simple(tag{n}, vr{n}, value), *binary)",
    ]


def _length_lines(n: int, limit: int) -> list[str]:
    return [
        f"        k{n} = len(d{n})",
        f"        if k{n} & 1:",
        f"            d{n} += pad{n}",
        f"            k{n} += 1",
        f"        if k{n} > {limit}:",
        "            return None",
    ]


def text_row(row: tuple[Any, ...]) -> tuple[Any, ...]:
    """A row read with text_as_bytes, its text as str (a row of str is returned as it is). The
    index holds what Python wrote, valid UTF-8; should another writer have left something else,
    the replacement character stands in rather than the query failing."""
    if not any(v.__class__ is bytes for v in row):
        return row
    return tuple(v.decode(errors="replace") if v.__class__ is bytes else v for v in row)


def _pn_bytes(text: str, codec: str) -> bytes | None:
    """A PN value in `codec`, as PersonName.encode writes it: empty trailing component groups
    dropped (PS3.5 6.2.1.1); None when a value has more than three component groups."""
    names = text.split("\\")
    if any(name.count("=") > 2 for name in names):
        return None
    return "\\".join(name.rstrip("=") for name in names).encode(codec)


def _pn_column_utf8(column: Sequence[bytes], joined: bytes) -> Sequence[bytes] | None:
    """[v if v.isascii() else _pn_utf8(v) for v in column], `joined` being their concatenation:
    in the common case, where _pn_utf8 leaves every name as it is (single values, at most three
    component groups, none ending in "="), the column itself, found by passes that loop in C."""
    if (
        b"\\" not in joined
        and max(map(bytes.count, column, repeat(b"="))) <= 2
        and not any(map(bytes.endswith, column, repeat(b"=")))
    ):
        return column
    rewritten = [v if v.isascii() else _pn_utf8(v) for v in column]
    return None if None in rewritten else rewritten  # type: ignore[return-value]


def _pn_utf8(raw: bytes) -> bytes | None:
    """_pn_bytes(raw.decode(), "utf-8") without decoding: the backslash and "=" are single bytes
    in UTF-8, never part of another character, so the same splitting applies to the bytes."""
    if b"\\" not in raw and raw.count(b"=") <= 2:  # one value: the common case
        return raw.rstrip(b"=")
    values = raw.split(b"\\")
    if any(v.count(b"=") > 2 for v in values):
        return None
    return b"\\".join(v.rstrip(b"=") for v in values)
