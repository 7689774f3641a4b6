"""DICOM TLS: the listener (with and without client certificates) against DCMTK and pynetdicom, and
C-MOVE to a destination over TLS. Certificates are made by the test with openssl."""

from __future__ import annotations

import asyncio
import shutil
import ssl
import subprocess
import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from dicomd.config import RemoteAE, TLSConfig
from dicomd.dimse import status
from tests.conftest import IN_CI, free_port, make_config, require_tool, run_runtime
from tests.interop.test_echo_interop import background, run_tool

pytestmark = pytest.mark.interop


def _openssl(*args: str, cwd: Path) -> None:
    subprocess.run(["openssl", *args], cwd=cwd, check=True, capture_output=True, timeout=60)


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A CA, a server certificate for 127.0.0.1 and a client certificate, all signed by the CA."""
    if shutil.which("openssl") is None:
        message = "openssl is needed to make test certificates"
        pytest.fail(message) if IN_CI else pytest.skip(message)
    d = tmp_path_factory.mktemp("pki")
    _openssl("req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
             "-keyout", "ca.key", "-out", "ca.crt", "-days", "2", "-subj", "/CN=dicomd test CA",
             cwd=d)  # fmt: skip
    for name, san in (("server", "IP:127.0.0.1"), ("client", "DNS:client.test")):
        _openssl("req", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes",
                 "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", f"/CN={name}", cwd=d)  # fmt: skip
        (d / f"{name}.ext").write_text(f"subjectAltName={san}\n")
        _openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
                 "-CAcreateserial", "-out", f"{name}.crt", "-days", "2",
                 "-extfile", f"{name}.ext", cwd=d)  # fmt: skip
    return {p.stem + p.suffix.replace(".", "_"): p for p in d.iterdir()}


def _tls_config(pki: dict[str, Path], *, verify_clients: bool) -> Any:
    config = make_config()
    return replace(
        config,
        tls=TLSConfig(
            enabled=True,
            port=0,
            certificate=str(pki["server_crt"]),
            private_key=str(pki["server_key"]),
            ca_certificates=str(pki["ca_crt"]),
            verify_clients=verify_clients,
        ),
    )


async def _tls_server(config: Any) -> Any:
    from dicomd.app import open_runtime
    from dicomd.net.server import DicomServer
    from dicomd.tls import server_context

    runtime = await open_runtime(config)
    server = DicomServer(runtime.state, "127.0.0.1", 0, server_context(config.tls))
    await server.start()
    return runtime, server


def _pynetdicom_tls_echo(port: int, pki: dict[str, Path], *, client_cert: bool) -> int:
    from pynetdicom import AE
    from pynetdicom.sop_class import Verification  # type: ignore[attr-defined]  # made at import

    context = ssl.create_default_context(ssl.Purpose.SERVER_AUTH, cafile=str(pki["ca_crt"]))
    if client_cert:
        context.load_cert_chain(str(pki["client_crt"]), str(pki["client_key"]))
    ae = AE(ae_title="TLSSCU")
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = 10
    ae.add_requested_context(Verification)
    assoc = ae.associate("127.0.0.1", port, ae_title="DICOMD", tls_args=(context, "127.0.0.1"))
    if not assoc.is_established:
        return -1
    try:
        return int(assoc.send_c_echo().Status)
    finally:
        assoc.release()


@pytest.mark.parametrize("verify_clients", [False, True])
async def test_tls_listener_with_pynetdicom(pki: dict[str, Path], verify_clients: bool) -> None:
    runtime, server = await _tls_server(_tls_config(pki, verify_clients=verify_clients))
    try:
        with_cert = await asyncio.to_thread(
            _pynetdicom_tls_echo, server.port, pki, client_cert=True
        )
        assert with_cert == status.SUCCESS
        without = await asyncio.to_thread(_pynetdicom_tls_echo, server.port, pki, client_cert=False)
        assert without == (-1 if verify_clients else status.SUCCESS)
    finally:
        await server.shutdown(2)
        await runtime.close()


async def test_tls_listener_with_dcmtk_echoscu(pki: dict[str, Path]) -> None:
    echoscu = require_tool("echoscu")
    runtime, server = await _tls_server(_tls_config(pki, verify_clients=True))
    try:
        code, out = await run_tool(
            echoscu, "-v", "-aec", "DICOMD", "+tls", str(pki["client_key"]), str(pki["client_crt"]),
            "+cf", str(pki["ca_crt"]), "127.0.0.1", str(server.port),
        )  # fmt: skip
        assert code == 0, out
        assert "Received Echo Response (Success)" in out
        # Without TLS, a plain client gets nowhere on the TLS port.
        code, out = await run_tool(
            echoscu, "-to", "5", "-aec", "DICOMD", "127.0.0.1", str(server.port)
        )
        assert code != 0
    finally:
        await server.shutdown(2)
        await runtime.close()


async def test_move_to_a_tls_destination(pki: dict[str, Path], tmp_path: Path) -> None:
    from pydicom.uid import (
        CTImageStorage,
        ExplicitVRLittleEndian,
        ImplicitVRLittleEndian,
        MRImageStorage,
    )
    from pynetdicom import AE, evt

    from tests.interop.test_retrieve_interop import _identifier, _pynetdicom_move, make_study, uids
    from tests.interop.test_store_interop import _pynetdicom_store

    received: list[str] = []

    def on_store(event: Any) -> int:
        received.append(str(event.request.AffectedSOPInstanceUID))
        return 0

    server_side = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki["ca_crt"]))
    server_side.load_cert_chain(str(pki["server_crt"]), str(pki["server_key"]))
    server_side.verify_mode = ssl.CERT_REQUIRED  # the destination insists on our certificate
    dest_ae = AE(ae_title="TLSDEST")
    for sop in (CTImageStorage, MRImageStorage):
        dest_ae.add_supported_context(sop, [ExplicitVRLittleEndian, ImplicitVRLittleEndian])
    dest_port = free_port()
    dest = dest_ae.start_server(
        ("127.0.0.1", dest_port), block=False, ssl_context=server_side,
        evt_handlers=[(evt.EVT_C_STORE, on_store)],
    )  # fmt: skip
    assert dest is not None  # block=False: the server, running
    try:
        files = await asyncio.to_thread(make_study, tmp_path / "in", n_series=1, per_series=2)
        config = replace(
            make_config(),
            remote=(RemoteAE("TLSDEST", "127.0.0.1", dest_port, tls=True),),
            tls=TLSConfig(
                certificate=str(pki["client_crt"]),
                private_key=str(pki["client_key"]),
                ca_certificates=str(pki["ca_crt"]),
            ),
        )
        async with run_runtime(config) as (server, _runtime):
            await asyncio.to_thread(_pynetdicom_store, server.port, files)
            result = await asyncio.to_thread(
                _pynetdicom_move,
                server.port,
                "TLSDEST",
                _identifier("STUDY", StudyInstanceUID=str(uids(files[0]).StudyInstanceUID)),
            )
        assert result[-1][0] == status.SUCCESS
        assert sorted(received) == sorted(str(uids(f).SOPInstanceUID) for f in files)
    finally:
        await asyncio.to_thread(dest.shutdown)


async def test_dicomd_echo_over_tls_to_dcmtk_storescp(pki: dict[str, Path], tmp_path: Path) -> None:
    """`dicomd echo --tls` against DCMTK's TLS listener, which requires a client certificate."""
    storescp = require_tool("storescp")
    port = free_port()
    echo = [sys.executable, "-m", "dicomd.cli", "echo", "--aec", "TLSSCP", "--timeout", "5"]
    trusted = ["--tls", "--ca", str(pki["ca_crt"])]
    client = ["--cert", str(pki["client_crt"]), "--key", str(pki["client_key"])]
    async with background(
        storescp, "-aet", "TLSSCP", "+tls", str(pki["server_key"]), str(pki["server_crt"]),
        "+cf", str(pki["ca_crt"]), "-od", str(tmp_path), str(port), ready_port=port,
    ):  # fmt: skip
        code, out = await run_tool(*echo, *trusted, *client, "127.0.0.1", str(port))
        assert code == 0, out
        assert "Success" in out
        # storescp requires a client certificate.
        code, out = await run_tool(*echo, *trusted, "127.0.0.1", str(port))
        assert code == 1, out
        # Our test CA is not among the system's: the server is not trusted.
        code, out = await run_tool(*echo, "--tls", *client, "127.0.0.1", str(port))
        assert code == 1, out
        assert "CERTIFICATE_VERIFY_FAILED" in out
        # A plain association on the TLS port gets nowhere.
        code, out = await run_tool(*echo, "127.0.0.1", str(port))
        assert code == 1, out
        code, out = await run_tool(*echo, *trusted, *client, "127.0.0.1", str(port))
        assert code == 0, out  # and the listener still serves
    for argv, message in (
        (["--ca", str(pki["ca_crt"])], "go with --tls"),
        (["--tls", "--cert", str(pki["client_crt"])], "go together"),
    ):
        code, out = await run_tool(*echo, *argv, "127.0.0.1", str(port))
        assert (code, message in out) == (2, True), out
