"""C-GET and C-MOVE SCP (PS3.4 C.4.2, C.4.3): the requests, their responses and their counts.

Owns: resolving a retrieve identifier to stored instances (unique keys only, PS3.4 C.4.2.2.1),
Pending responses, cancel and the final status (PS3.4 C.4.2.1.5, C.4.3.1.4). The sub-operations
themselves are suboperations.py's: C-GET runs them on this association, C-MOVE hands them as a job
to the Mover the runner gives (on this event loop, or in mover processes).
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import Mapping
from typing import Protocol

import pydicom
import structlog
from pydicom.dataset import Dataset

from dicomd.config import RemoteAE
from dicomd.dimse import status
from dicomd.dimse.messages import CGetRQ, CGetRSP, CMoveRQ, CMoveRSP, Message
from dicomd.query.identifier import QueryError, read_identifier
from dicomd.services.base import DatasetSource, Request, Responder, ResponseTimeout
from dicomd.services.suboperations import (
    Counts,
    MoveJob,
    Mover,
    MoverLost,
    Report,
    SubOperations,
    Target,
    encode,
)
from dicomd.storage.files import FileStore
from dicomd.storage.index import Index
from dicomd.ul.negotiation import AcceptedContext

log = structlog.get_logger("dicomd.retrieve")

PATIENT_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.1.2"
PATIENT_ROOT_GET = "1.2.840.10008.5.1.4.1.2.1.3"
STUDY_ROOT_MOVE = "1.2.840.10008.5.1.4.1.2.2.2"
STUDY_ROOT_GET = "1.2.840.10008.5.1.4.1.2.2.3"
PATIENT_STUDY_ONLY_MOVE = "1.2.840.10008.5.1.4.1.2.3.2"  # retired, still used
PATIENT_STUDY_ONLY_GET = "1.2.840.10008.5.1.4.1.2.3.3"
GET_SOP_CLASSES = (PATIENT_ROOT_GET, STUDY_ROOT_GET, PATIENT_STUDY_ONLY_GET)
MOVE_SOP_CLASSES = (PATIENT_ROOT_MOVE, STUDY_ROOT_MOVE, PATIENT_STUDY_ONLY_MOVE)

# Levels each model has (PS3.4 C.6.1, C.6.2, C.6.3).
_LEVELS = {
    "patient": ("PATIENT", "STUDY", "SERIES", "IMAGE"),
    "study": ("STUDY", "SERIES", "IMAGE"),
    "patient-study": ("PATIENT", "STUDY"),
}
_MODEL = {
    PATIENT_ROOT_GET: "patient",
    PATIENT_ROOT_MOVE: "patient",
    STUDY_ROOT_GET: "study",
    STUDY_ROOT_MOVE: "study",
    PATIENT_STUDY_ONLY_GET: "patient-study",
    PATIENT_STUDY_ONLY_MOVE: "patient-study",
}
# Unique key of each level, its index column, and the keyword for error comments.
_UNIQUE = {
    "PATIENT": (0x00100020, "p.patient_id", "PatientID"),
    "STUDY": (0x0020000D, "st.study_instance_uid", "StudyInstanceUID"),
    "SERIES": (0x0020000E, "se.series_instance_uid", "SeriesInstanceUID"),
    "IMAGE": (0x00080018, "i.sop_instance_uid", "SOPInstanceUID"),
}
FAILED_SOP_INSTANCE_UID_LIST = 0x00080058
MAX_INSTANCES = 1_000_000  # one retrieve; beyond this the request is refused (A701/A702)


class RetrieveService:
    def __init__(
        self,
        files: FileStore,
        index: Index,
        *,
        ae_title: str,
        remote_ae: Mapping[str, RemoteAE] | None,
        mover: Mover | None,
        pending_interval: float,
    ) -> None:
        self._sub_operations = SubOperations(files.path)
        self._pending_interval = pending_interval
        self._index = index
        self._ae_title = ae_title
        self._remote_ae = dict(remote_ae or {})
        self._mover = mover

    def set_remotes(self, remote_ae: Mapping[str, RemoteAE]) -> None:
        """Replace the C-MOVE destination table (configuration reload)."""
        self._remote_ae = dict(remote_ae)

    def set_pending_interval(self, seconds: float) -> None:
        """Replace the interval between Pending responses (configuration reload); retrieves
        already running keep theirs."""
        self._pending_interval = seconds

    # -- C-GET -----------------------------------------------------------------------------------

    async def handle_get(self, request: Request, responder: Responder) -> None:
        command = request.command
        assert isinstance(command, CGetRQ)
        started = time.perf_counter()
        try:
            targets = await self._resolve(request)
        except QueryError as e:
            await responder.respond(_get_rsp(command, e.code, comment=e.comment))
            return
        counts = Counts(remaining=len(targets))
        await self._sub_operations.run(
            targets,
            counts,
            _GetSender(responder),
            originator=None,
            interval=self._pending_interval,
            cancel=responder,
            report=_pending_reporter(command, responder, _get_rsp),
        )
        await self._finish(
            command, counts, responder, _get_rsp, started, "c_get_done", request.context
        )

    # -- C-MOVE ----------------------------------------------------------------------------------

    async def handle_move(self, request: Request, responder: Responder) -> None:
        command = request.command
        assert isinstance(command, CMoveRQ)
        started = time.perf_counter()
        destination = self._remote_ae.get(command.move_destination)
        if destination is None or self._mover is None:
            log.warning("c_move_unknown_destination", destination=command.move_destination)
            await responder.respond(
                _move_rsp(
                    command,
                    status.MOVE_DESTINATION_UNKNOWN,
                    comment=f"unknown move destination {command.move_destination!r}",
                )
            )
            return
        try:
            targets = await self._resolve(request)
        except QueryError as e:
            await responder.respond(_move_rsp(command, e.code, comment=e.comment))
            return
        counts = Counts(remaining=len(targets))
        job = MoveJob(
            destination,
            targets,
            (request.calling_ae_title, command.message_id),
            self._pending_interval,  # a reload does not change a retrieve under way
        )
        try:
            comment = (
                await self._mover.move(
                    job, counts, _pending_reporter(command, responder, _move_rsp), responder
                )
                if targets
                else None  # nothing to send: no association to the destination
            )
        except MoverLost as e:
            failed = counts.fail_unfinished(targets)
            log.error("c_move_mover_lost", error=str(e), failed=failed)
            comment = "sub-operations stopped: mover process lost"
        await self._finish(
            command,
            counts,
            responder,
            _move_rsp,
            started,
            "c_move_done",
            request.context,
            comment=comment,
        )

    async def _resolve(self, request: Request) -> list[Target]:
        command = request.command
        assert isinstance(command, CGetRQ | CMoveRQ)
        model = _MODEL[request.context.abstract_syntax]
        if request.dataset is None:
            raise QueryError(status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS, "no identifier")
        ds = await asyncio.to_thread(
            read_identifier, request.dataset, request.context.transfer_syntax
        )
        sql, params = _retrieve_sql(ds, model)
        targets: list[Target] = []
        async with self._index.query(sql, params) as rows:
            while batch := await rows.fetch(1000):
                targets.extend(Target(*row) for row in batch)
                if len(targets) > MAX_INSTANCES:
                    raise QueryError(status.OUT_OF_RESOURCES_SUBOPS, "too many instances")
        return targets

    async def _finish(
        self,
        command: CGetRQ | CMoveRQ,
        counts: Counts,
        responder: Responder,
        factory: _RspFactory,
        started: float,
        event: str,
        context: AcceptedContext,
        comment: str | None = None,
    ) -> None:
        cancelled = responder.cancel_requested and counts.remaining > 0
        if cancelled:
            code = status.CANCEL
        elif counts.failed == 0 and counts.warning == 0:
            code = status.SUCCESS
        elif counts.completed == 0 and counts.warning == 0:
            code = status.OUT_OF_RESOURCES_SUBOPS  # every sub-operation failed (A702)
        else:
            code = status.SUBOPS_WARNING  # B000: some failed or warned
        identifier = None
        if counts.failed_uids:
            ds = Dataset()
            ds.FailedSOPInstanceUIDList = counts.failed_uids
            identifier = encode(ds, context.transfer_syntax)
        await responder.respond(
            factory(
                command,
                code,
                # PS3.4 C.4.2.1.5: the final response has no remaining count, except after a cancel.
                remaining=counts.remaining if cancelled else None,
                completed=counts.completed,
                failed=counts.failed,
                warning=counts.warning,
                comment=comment,
                has_dataset=identifier is not None,
            ),
            identifier,
        )
        log.info(
            event,
            status=f"{code:04X}",
            completed=counts.completed,
            failed=counts.failed,
            warning=counts.warning,
            remaining=counts.remaining,
            ms=round((time.perf_counter() - started) * 1000, 2),
        )


class _RspFactory(Protocol):
    def __call__(
        self,
        command: CGetRQ | CMoveRQ,
        code: int,
        *,
        remaining: int | None = None,
        completed: int | None = None,
        failed: int | None = None,
        warning: int | None = None,
        comment: str | None = None,
        has_dataset: bool = False,
    ) -> Message: ...


def _response(
    cls: type[CGetRSP] | type[CMoveRSP],
) -> _RspFactory:
    """A builder of `cls` responses (C-GET-RSP and C-MOVE-RSP have the same fields)."""

    def build(
        command: CGetRQ | CMoveRQ,
        code: int,
        *,
        remaining: int | None = None,
        completed: int | None = None,
        failed: int | None = None,
        warning: int | None = None,
        comment: str | None = None,
        has_dataset: bool = False,
    ) -> Message:
        return cls(
            command.message_id,
            command.affected_sop_class_uid,
            code,
            has_dataset,
            remaining,
            completed,
            failed,
            warning,
            comment[:64] if comment else None,
        )

    return build


_get_rsp = _response(CGetRSP)
_move_rsp = _response(CMoveRSP)


def _pending_reporter(
    command: CGetRQ | CMoveRQ, responder: Responder, factory: _RspFactory
) -> Report:
    """Reports counts as a Pending response: counts only, never an identifier (PS3.4 C.4.2.3.1)."""

    async def report(counts: Counts) -> None:
        await responder.respond(
            factory(
                command,
                status.PENDING,
                remaining=counts.remaining,
                completed=counts.completed,
                failed=counts.failed,
                warning=counts.warning,
            )
        )

    return report


class _GetSender:
    """C-GET's sub-operations go back over the request's own association, on contexts where the
    SCU took the SCP role (PS3.4 C.4.3.3, role selection PS3.7 D.3.3.4)."""

    def __init__(self, responder: Responder) -> None:
        self._responder = responder
        self._contexts: Mapping[int, AcceptedContext] | None = None
        self._unanswered = False

    @property
    def contexts(self) -> Mapping[int, AcceptedContext]:
        # Negotiated once for the association: worked out at the first sub-operation, not each.
        if self._contexts is None:
            self._contexts = {
                k: c for k, c in self._responder.contexts.items() if c.requestor_is_scp
            }
        return self._contexts

    def next_message_id(self) -> int:
        return self._responder.next_message_id()

    @property
    def closed(self) -> bool:
        """True once a sub-operation went unanswered for the DIMSE timeout: the SCU is not
        taking C-STOREs, so none is sent after it, and the C-GET ends with its final response
        (the association stays up: that response is still owed). When the association itself
        ends, the runner stops this retrieve with it."""
        return self._unanswered

    async def request(self, context_id: int, message: Message, dataset: DatasetSource) -> Message:
        try:
            return await self._responder.request(context_id, message, dataset)
        except ResponseTimeout:
            self._unanswered = True
            raise


def _retrieve_sql(ds: Dataset, model: str) -> tuple[str, list[object]]:
    """The instances a retrieve identifier names (unique keys only, PS3.4 C.4.2.2.1)."""
    level_element = ds.get(0x00080052)  # Query/Retrieve Level
    level = str(level_element.value).strip().upper() if level_element is not None else ""
    levels = _LEVELS[model]
    if level not in levels:
        raise QueryError(
            status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
            f"Query/Retrieve Level {level!r} is not one of {', '.join(levels)}",
            (0x00080052,),
        )
    conditions: list[str] = []
    params: list[object] = []
    for name in levels[: levels.index(level) + 1]:
        tag, column, keyword = _UNIQUE[name]
        element = ds.get(tag)
        values = _values(element.value) if element is not None else []
        if name == level:
            if not values:
                raise QueryError(
                    status.IDENTIFIER_DOES_NOT_MATCH_SOP_CLASS,
                    f"{keyword} is required at the {level} level",
                    (tag,),
                )
            # A list of UIDs is allowed at the retrieve level (PS3.4 C.4.2.2.1).
            conditions.append(f"{column} IN (SELECT value FROM json_each(?))")
            params.append(json.dumps(values))
        elif values:
            # Keys above the level narrow the request when given (hierarchical, single value).
            conditions.append(f"{column} = ?")
            params.append(values[0])
    sql = (
        "SELECT i.sop_instance_uid, i.sop_class_uid, i.transfer_syntax_uid, i.relpath, i.size"
        " FROM instance AS i JOIN series AS se ON se.pk = i.series_pk"
        " JOIN study AS st ON st.pk = se.study_pk JOIN patient AS p ON p.pk = st.patient_pk"
        f" WHERE {' AND '.join(conditions)}"
        " ORDER BY st.pk, se.series_number, se.pk, i.instance_number, i.pk"
    )
    return sql, params


def _values(value: object) -> list[str]:
    items = value if isinstance(value, list | tuple | pydicom.multival.MultiValue) else [value]
    return [str(v).strip() for v in items if v is not None and str(v).strip()]
