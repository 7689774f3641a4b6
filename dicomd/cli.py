"""Command line: `dicomd serve|echo|check-config|reindex|verify|stats`."""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
from collections.abc import Awaitable, Callable
from dataclasses import asdict
from functools import partial
from pathlib import Path
from typing import Any

from dicomd import __version__, config, log


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="dicomd", description="DICOM storage and Q/R server")
    parser.add_argument("--version", action="version", version=f"dicomd {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)

    p_serve = sub.add_parser("serve", help="run the server")
    p_serve.add_argument("--config", type=Path, help="TOML file (default: embedded defaults)")

    p_echo = sub.add_parser("echo", help="C-ECHO a DICOM peer; exit 0 only on Success")
    p_echo.add_argument("--aet", default="DICOMD_ECHO", help="our (calling) AE title")
    p_echo.add_argument("--aec", default="DICOMD", help="the peer's (called) AE title")
    p_echo.add_argument("--timeout", type=float, default=10.0, help="seconds for each step")
    p_echo.add_argument(
        "--tls", action="store_true", help="connect over TLS (the peer's certificate is verified)"
    )
    p_echo.add_argument(
        "--ca", metavar="PEM", default="", help="CA certificates to verify the peer with (--tls)"
    )
    p_echo.add_argument("--cert", metavar="PEM", default="", help="our certificate (--tls)")
    p_echo.add_argument("--key", metavar="PEM", default="", help="its private key (--tls)")
    p_echo.add_argument("host")
    p_echo.add_argument("port", type=int)

    p_check = sub.add_parser(
        "check-config", help="validate a config file, print the effective config"
    )
    p_check.add_argument("file", type=Path)

    p_reindex = sub.add_parser(
        "reindex", help="repair the index from the stored files (adopt orphans, drop dangling rows)"
    )
    p_reindex.add_argument("--config", type=Path, help="TOML file (default: embedded defaults)")
    p_reindex.add_argument(
        "--rebuild",
        action="store_true",
        help="re-read every stored file, not only the suspect ones",
    )
    p_reindex.add_argument(
        "--force",
        action="store_true",
        help="drop index rows even when every indexed file is missing (not an unmounted volume)",
    )

    p_verify = sub.add_parser(
        "verify", help="check every stored file against the hash in the index; exit 1 on problems"
    )
    p_verify.add_argument("--config", type=Path, help="TOML file (default: embedded defaults)")
    p_stats = sub.add_parser("stats", help="counts and sizes of what is stored")
    p_stats.add_argument("--config", type=Path, help="TOML file (default: embedded defaults)")

    args = parser.parse_args(argv)
    if args.command == "serve":
        return _serve(args.config)
    if args.command == "echo":
        return _echo(args)
    if args.command == "reindex":
        return _reindex(args.config, rebuild=args.rebuild, force=args.force)
    if args.command == "verify":
        return _verify(args.config)
    if args.command == "stats":
        return _stats(args.config)
    return _check_config(args.file)


def _serve(path: Path | None) -> int:
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        print(f"dicomd: {e}", file=sys.stderr)
        return 2
    log.configure(cfg.log.level, cfg.log.format)
    from dicomd.app import run

    return run(cfg, reload=partial(config.load, path))


def _echo(args: argparse.Namespace) -> int:
    from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
    from dicomd.net.requestor import AssociationError, echo

    log.configure("warning", "console")
    if not args.tls and (args.ca or args.cert or args.key):
        print("dicomd echo: --ca, --cert and --key go with --tls", file=sys.stderr)
        return 2
    if bool(args.cert) != bool(args.key):
        print("dicomd echo: --cert and --key go together", file=sys.stderr)
        return 2
    try:
        ssl_context = None
        if args.tls:
            from dicomd.config import TLSConfig
            from dicomd.tls import client_context

            ssl_context = client_context(
                TLSConfig(certificate=args.cert, private_key=args.key, ca_certificates=args.ca)
            )
        status = asyncio.run(
            echo(
                args.host,
                args.port,
                calling_ae_title=args.aet,
                called_ae_title=args.aec,
                implementation_class_uid=IMPLEMENTATION_CLASS_UID,
                implementation_version_name=IMPLEMENTATION_VERSION_NAME,
                timeout=args.timeout,
                ssl_context=ssl_context,
            )
        )
    except (AssociationError, OSError, TimeoutError) as e:
        print(f"dicomd echo: {e or type(e).__name__}", file=sys.stderr)
        return 1
    if status != 0:
        print(f"dicomd echo: C-ECHO status 0x{status:04X}", file=sys.stderr)
        return 1
    print(f"C-ECHO {args.host}:{args.port} {args.aec}: Success")
    return 0


def _on_store(path: Path | None, job: Callable[[Any, Any], Awaitable[tuple[int, Any]]]) -> int:
    """Run an admin job on the configured file store and index; print its JSON result."""
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        print(f"dicomd: {e}", file=sys.stderr)
        return 2
    log.configure(cfg.log.level, "console" if cfg.log.format == "auto" else cfg.log.format)

    async def run() -> tuple[int, Any]:
        from dicomd.storage.files import FileStore
        from dicomd.storage.index import Index

        files = FileStore(cfg.storage.root, fsync=cfg.storage.durability == "full")
        cfg.index.path.parent.mkdir(parents=True, exist_ok=True)
        index = await Index.open(cfg.index.path, busy_timeout=cfg.index.busy_timeout)
        try:
            return await job(files, index)
        finally:
            await index.close()

    code, result = asyncio.run(run())
    print(json.dumps(result, indent=2, default=_jsonable))
    return code


def _reindex(path: Path | None, *, rebuild: bool, force: bool) -> int:
    from dicomd.storage.reconcile import StoreLooksMissing, reconcile

    async def job(files: Any, index: Any) -> tuple[int, Any]:
        try:
            report = await reconcile(files, index, rebuild=rebuild, drop_missing=True, force=force)
        except StoreLooksMissing as e:
            return 1, {"error": str(e)}
        counts = await index.counts()
        return 0, {**asdict(report), **{f"index_{k}": v for k, v in counts.items()}}

    return _on_store(path, job)


def _verify(path: Path | None) -> int:
    from dicomd.storage.verify import verify

    async def job(files: Any, index: Any) -> tuple[int, Any]:
        report = await verify(files, index)
        return (0 if report.ok else 1), {**asdict(report), "ok": report.ok}

    return _on_store(path, job)


def _stats(path: Path | None) -> int:
    from dicomd.storage.verify import stats

    async def job(files: Any, index: Any) -> tuple[int, Any]:
        return 0, await stats(files, index)

    return _on_store(path, job)


def _check_config(path: Path) -> int:
    try:
        cfg = config.load(path)
    except config.ConfigError as e:
        print(f"dicomd: {e}", file=sys.stderr)
        return 2
    print(json.dumps(asdict(cfg), indent=2, default=_jsonable))
    return 0


def _jsonable(value: Any) -> Any:
    return str(value)


if __name__ == "__main__":
    sys.exit(main())
