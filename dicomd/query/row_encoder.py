"""Response identifiers encoded straight from index rows: the per-query compiled fast path.

Owns: `ResponseEncoder`, which turns one matching row into the bytes of its C-FIND response
identifier. It is built once per query: the layout (every response element in ascending tag order,
PS3.5 7.1), the element headers, and the elements whose value is the same for every row (Query/
Retrieve Level, Retrieve AE Title, constants, keys answered empty) are encoded once; per row only
the row's values are encoded, with str.encode, and joined.
Must not know: SQL, the network.

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
import zlib
from collections.abc import Callable
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
from dicomd.storage.scan import DEFLATED, EXPLICIT_VR_BE, IMPLICIT_VR_LE

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
_EVERY_CHARACTER: Final = frozenset({python_encoding["ISO_IR 192"], python_encoding["GB18030"]})

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
        self._deflate = transfer_syntax == DEFLATED
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
        self._in_ascii: Callable[[tuple[Any, ...]], bytes | None]
        self._in_charset: Callable[[tuple[Any, ...], str, bytes], bytes | None]
        if self.fast:
            self._compile()
            self._generate()

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

    def __call__(self, row: tuple[Any, ...]) -> bytes:
        if self.fast:
            try:
                data = self._encode(row)
            except UnicodeError:  # a value no codec takes (a lone surrogate): pydicom decides
                data = None
            if data is not None:
                return data
        return response_identifier(
            self._query,
            self._plan,
            row,
            ae_title=self._ae_title,
            pn_case_insensitive=self._pn_case_insensitive,
            transfer_syntax=self._transfer_syntax,
        )

    def _encode(self, row: tuple[Any, ...]) -> bytes | None:
        if self._query_codec in _EVERY_CHARACTER:
            # The query's character set answers every row, and its element is the same whether
            # or not the row's values are all ASCII: no need to look at them first.
            return self._finish(self._in_charset(row, self._query_codec, self._query_charset))
        for i in self._texts:
            value = row[i]
            if value.__class__ is str and not value.isascii():
                chosen = self._choose(row)
                if chosen is None:
                    return None
                return self._finish(self._in_charset(row, *chosen))
        # Every value ASCII: str.encode() of each, no charset decision to make.
        return self._finish(self._in_ascii(row))

    def _finish(self, result: bytes | None) -> bytes | None:
        if result is not None and self._deflate:
            compressor = zlib.compressobj(6, zlib.DEFLATED, -zlib.MAX_WBITS)
            result = compressor.compress(result) + compressor.flush()
        return result

    def _generate(self) -> None:
        """Compile the layout into two functions of a row: one for rows whose values are all
        ASCII, one for rows in a chosen codec. Straight-line code, one block per element: a loop
        over the slots cost about 1 us per element per row (tuple unpacking, branching on the
        kind), most of a response's encoding; the generated code does only the element's work.
        What each block does is what response.response_identifier does for that VR (the tests
        compare the bytes)."""
        names: dict[str, Any] = {
            "_encode_simple": _encode_simple,
            "_Simple": _Simple,
            "_pn_bytes": _pn_bytes,
            "binary": self._binary,
            "ascii_charset": self._ascii_charset,
        }
        ascii_body: list[str] = []
        coded_body: list[str] = []
        ascii_parts: list[str] = []
        coded_parts: list[str] = []
        for n, (kind, ref, prefix, vr, pack, pad, limit) in enumerate(self._slots):
            if kind == _FIXED:
                names[f"fixed{n}"] = ref
                ascii_parts.append(f"fixed{n}")
                coded_parts.append(f"fixed{n}")
            elif kind == _CHARSET:
                ascii_parts.append("ascii_charset")
                coded_parts.append("charset")
            elif kind == _TEXT:
                names[f"prefix{n}"], names[f"pack{n}"], names[f"pad{n}"] = prefix, pack, pad
                ascii_body += _text_block(n, ref, limit, ".encode()")
                if vr not in _CHARSET_VRS:
                    coded = '.encode("ascii", errors="replace")'
                elif vr == "PN":
                    coded = None
                else:
                    coded = ".encode(codec)"
                coded_body += _text_block(n, ref, limit, coded)
                parts = [f"prefix{n}", f"pack{n}(k{n})", f"d{n}"]
                ascii_parts += parts
                coded_parts += parts
            else:  # _OTHER: prefix holds the tag
                part = f"_encode_simple(_Simple({prefix}, {vr!r}, row[{ref}]), *binary)"
                ascii_parts.append(part)
                coded_parts.append(part)
        source = "\n".join(
            [
                "def in_ascii(row):",
                *ascii_body,
                f"    return b''.join(({', '.join(ascii_parts)},))",
                "def in_charset(row, codec, charset):",
                *coded_body,
                f"    return b''.join(({', '.join(coded_parts)},))",
            ]
        )
        exec(_compiled(source), names)  # our own source, made above
        self._in_ascii = names["in_ascii"]
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
def _compiled(source: str) -> CodeType:
    """Compiling costs milliseconds; a server sees the same few query layouts over and over."""
    return compile(source, "<row_encoder>", "exec")


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
    elif encode == ".encode()":
        convert = [f"        d{n} = text.encode()"]
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
        f"        k{n} = len(d{n})",
        f"        if k{n} & 1:",
        f"            d{n} += pad{n}",
        f"            k{n} += 1",
        f"        if k{n} > {limit}:",
        "            return None",
    ]


def _pn_bytes(text: str, codec: str) -> bytes | None:
    """A PN value in `codec`, as PersonName.encode writes it: empty trailing component groups
    dropped (PS3.5 6.2.1.1); None when a value has more than three component groups."""
    names = text.split("\\")
    if any(name.count("=") > 2 for name in names):
        return None
    return "\\".join(name.rstrip("=") for name in names).encode(codec)
