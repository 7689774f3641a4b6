"""Query/Retrieve - FIND as SCP (PS3.4 C.4.1): match the index, stream pending responses, end.

Owns: the C-FIND operation: the identifier checked (query/identifier.py), one statement planned
(query/plan.py) and run on a read connection of its own (storage/reads.py), one pending response
per matching row as the cursor advances, and the final status, in one place:

    0000 Success           every match sent
    FF00 / FF01 Pending    one per match; FF01 when a key's value was not used for matching (an
                           attribute the index has no column for, a key below the query level, a
                           count): PS3.4 C.4.1.1.4 "optional keys not supported for matching"
    FE00 Cancel            a C-CANCEL-RQ arrived: checked before every page of responses, and
                           while a page of rows is being fetched (the statement is interrupted)
    A700 Out of resources  more than [query] max_matches matches: the first max_matches were sent,
                           then the operation stops; "Refused: out of resources" is the one C-FIND
                           status that says the SCP would not produce the rest, so an SCU cannot take
                           the list for complete. Also: the index is unavailable.
    A900 Identifier does not match SOP Class
                           no/unknown Query/Retrieve Level, a hierarchical query without the unique
                           keys above its level, a value no matching type allows (Error Comment and
                           Offending Element say which)
    C001 Unable to process the identifier cannot be decoded; the statement fails

Rows are fetched a page at a time (a small first page, so that the first response leaves quickly),
never the whole result; the next page is read on the connection's thread while one is being sent.
A page becomes its identifiers through a ResponseEncoder compiled once per query (row_encoder.py),
column by column, each framed in its P-DATA-TF PDU, and the page is queued, its pending command
encoded once, as one piece (Channel.send_framed); a C-CANCEL is looked for between pages.
Why the page is encoded on the event loop: the GIL lets one thread run Python at a time, so a
thread would not encode it alongside the loop, only instead of it. A thread that encodes a whole
page holds the GIL until the loop asks for it and the switch interval (5 ms) passes; a page on the
loop is a bounded slice (about 1 ms for 256 rows of a dozen keys) between two awaits, and it is
cheaper: about a third less CPU than encoding row by row in the reading thread's row factory,
which handed the GIL back and forth at every row. (Runs of 32 responses per piece, rather than a
page, cost 1-2 ms more per 800 matches in loop turns and writes, for a C-CANCEL answered no
sooner: the page is fetched as one anyway.)
The counts (Number of ... Related ...) and Modalities in Study are columns the index keeps up to
date with triggers (storage/schema.py, version 2): counting per matched study at query time cost
more than the rest of a name query's work together.
"""

from __future__ import annotations

import asyncio
import sqlite3
import time
from typing import Final

import structlog

from dicomd.dimse import status
from dicomd.dimse.messages import CFindRQ, CFindRSP
from dicomd.query.identifier import Query, QueryError, parse_identifier, read_identifier
from dicomd.query.matching import SQL_FUNCTIONS
from dicomd.query.model import MODELS
from dicomd.query.plan import build_plan
from dicomd.query.row_encoder import ResponseEncoder
from dicomd.services.base import Request, Responder
from dicomd.storage.index import Index
from dicomd.storage.reads import QueryStopped

log = structlog.get_logger("dicomd.find")

FIRST_PAGE: Final = 16
PAGE: Final = 256  # rows fetched, responses queued together, between two looks for a C-CANCEL

# PS3.4 C.5.1.1.2, the A-ASSOCIATE-AC's SOP class extended negotiation info for Q/R FIND:
# byte 0 relational queries, 1 combined date-time matching, 2 fuzzy semantic matching of person
# names, 3 timezone query adjustment. Later bytes are not defined for FIND.
RELATIONAL: Final = 0
COMBINED_DATETIME: Final = 1
_SUPPORTED: Final = frozenset({RELATIONAL, COMBINED_DATETIME})


def extended_negotiation(info: bytes) -> bytes | None:
    """Our answer to a requestor's Q/R FIND extended negotiation: 1 kept for what we support."""
    if not info:
        return None
    return bytes(1 if i in _SUPPORTED and b == 1 else 0 for i, b in enumerate(info[:4]))


class FindService:
    def __init__(
        self, index: Index, *, ae_title: str, pn_case_insensitive: bool, max_matches: int
    ) -> None:
        self._index = index
        self._ae_title = ae_title
        self._pn_case_insensitive = pn_case_insensitive
        self._max_matches = max_matches
        for name, (nargs, fn) in SQL_FUNCTIONS.items():
            index.add_sql_function(name, nargs, fn)

    @property
    def sop_classes(self) -> tuple[str, ...]:
        return tuple(MODELS)

    async def handle(self, request: Request, responder: Responder) -> None:
        command = request.command
        assert isinstance(command, CFindRQ)
        started = time.perf_counter()
        sent = 0

        async def final(
            code: int, comment: str | None = None, offending: tuple[int, ...] = ()
        ) -> None:
            await responder.respond(
                CFindRSP(
                    command.message_id,
                    command.affected_sop_class_uid,
                    code,
                    has_dataset=False,
                    error_comment=comment[:64] if comment else None,
                    offending_element=offending or None,
                )
            )
            log.info(
                "c_find_done",
                sop_class=command.affected_sop_class_uid,
                status=f"{code:04X}",
                matches=sent,
                comment=comment,
                ms=round((time.perf_counter() - started) * 1000, 2),
            )

        try:
            query = self._query(request, command)
            plan = build_plan(query, pn_case_insensitive=self._pn_case_insensitive)
        except QueryError as e:
            await final(e.code, e.comment, e.offending)
            return
        log.debug("c_find_plan", level=query.level.name, sql=plan.sql, params=plan.params)
        # Every pending response has the same command: one (frozen) message for all of them.
        pending_rsp = CFindRSP(
            command.message_id,
            command.affected_sop_class_uid,
            status.PENDING_WARNING if plan.unsupported else status.PENDING,
            has_dataset=True,
        )
        encode = ResponseEncoder(
            query,
            plan,
            ae_title=self._ae_title,
            pn_case_insensitive=self._pn_case_insensitive,
            transfer_syntax=request.context.transfer_syntax,
        )
        frame = responder.framer()

        try:
            async with self._index.query(
                plan.sql,
                plan.params,
                should_stop=lambda: responder.cancel_requested,
                text_as_bytes=encode.text_as_bytes,
            ) as rows:
                page = FIRST_PAGE
                while True:
                    # The next page is read on the connection's thread while this one is sent.
                    found = await rows.fetch(page, then=PAGE)
                    page = PAGE
                    batch = list(map(frame, encode.page(found)))
                    if responder.cancel_requested:
                        await final(status.CANCEL)
                        return
                    limited = bool(self._max_matches) and sent + len(batch) > self._max_matches
                    if limited:
                        batch = batch[: max(self._max_matches - sent, 0)]
                    # A page of responses is queued at once and leaves in one write.
                    await responder.respond_each(pending_rsp, batch)
                    sent += len(batch)
                    if limited:
                        await final(
                            status.OUT_OF_RESOURCES,
                            f"more than {self._max_matches} matches; refine the query",
                        )
                        return
                    # respond_each() does not yield while the socket takes the bytes: yield after
                    # each page, so that the runner reads a C-CANCEL (and other associations run).
                    await asyncio.sleep(0)
                    if not batch:
                        break
        except QueryStopped:
            await final(status.CANCEL)
            return
        except sqlite3.Error as e:
            log.warning("c_find_failed", error=str(e), sql=plan.sql)
            if isinstance(e, sqlite3.OperationalError) and _unavailable(e):
                await final(status.OUT_OF_RESOURCES, f"index unavailable: {e}")
            else:
                await final(status.UNABLE_TO_PROCESS, f"query failed: {e}")
            return
        if responder.cancel_requested:
            await final(status.CANCEL)
            return
        await final(status.SUCCESS)

    def _query(self, request: Request, command: CFindRQ) -> Query:
        model = MODELS.get(request.context.abstract_syntax)
        if model is None or command.affected_sop_class_uid != request.context.abstract_syntax:
            raise QueryError(
                status.SOP_CLASS_NOT_SUPPORTED,
                "Affected SOP Class UID differs from the presentation context",
            )
        if request.dataset is None:
            raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "no identifier")
        extended = request.context.extended_negotiation
        ds = read_identifier(request.dataset, request.context.transfer_syntax)
        return parse_identifier(
            ds,
            model,
            relational=len(extended) > RELATIONAL and extended[RELATIONAL] == 1,
            combined_datetime=len(extended) > COMBINED_DATETIME
            and extended[COMBINED_DATETIME] == 1,
        )


def _unavailable(error: sqlite3.OperationalError) -> bool:
    """Locked past the busy timeout, I/O, out of memory: the index, not the query, is the problem."""
    text = str(error).lower()
    return any(word in text for word in ("locked", "busy", "i/o", "disk", "memory"))
