"""docs/conformance.md says what the code accepts: its generated tables are regenerated in memory
from the running server's acceptor policy and compared, and the main tables are also read back
independently of the generator."""

from __future__ import annotations

import importlib.machinery
import importlib.util
import re
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from dicomd import IMPLEMENTATION_CLASS_UID, IMPLEMENTATION_VERSION_NAME
from dicomd.query.model import KEYS
from dicomd.services.retrieve import GET_SOP_CLASSES, MOVE_SOP_CLASSES
from dicomd.services.sop_classes import DEFAULT_STORAGE_TRANSFER_SYNTAXES, STORAGE_SOP_CLASSES

ROOT = Path(__file__).resolve().parents[2]
DOCUMENT = ROOT / "docs" / "conformance.md"
TOOL = ROOT / "scripts" / "gen-conformance"


def _load_tool() -> ModuleType:
    loader = importlib.machinery.SourceFileLoader("gen_conformance", str(TOOL))
    spec = importlib.util.spec_from_loader("gen_conformance", loader)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    # Registered before it runs: dataclasses look their module up by name.
    sys.modules["gen_conformance"] = module
    loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def gen() -> ModuleType:
    return _load_tool()


@pytest.fixture(scope="module")
def facts(gen: ModuleType) -> Any:
    return gen.collect()


@pytest.fixture(scope="module")
def text() -> str:
    return DOCUMENT.read_text(encoding="utf-8")


def section(text: str, name: str) -> str:
    begin = rf"<!-- BEGIN generated:{name} \(scripts/gen-conformance\) -->\n"
    m = re.search(begin + rf"(.*?)<!-- END generated:{name} -->", text, re.DOTALL)
    assert m is not None, f"section {name} not found"
    return m.group(1)


def uids_in(markdown: str) -> list[str]:
    return re.findall(r"`(1\.2\.840\.10008\.[0-9.]+)`", markdown)


def test_document_is_up_to_date(gen: ModuleType, facts: Any, text: str) -> None:
    stale = gen.stale_sections(text, facts)
    assert stale == [], (
        f"docs/conformance.md is out of date in {stale}: run scripts/gen-conformance"
    )
    assert gen.render(text, facts) == text


def test_storage_table_lists_exactly_the_accepted_storage_classes(facts: Any, text: str) -> None:
    listed = uids_in(section(text, "storage-sop-classes"))
    assert len(listed) == len(set(listed))
    accepted = {uid for uid in facts.abstract_syntaxes if uid in STORAGE_SOP_CLASSES}
    assert set(listed) == accepted == set(STORAGE_SOP_CLASSES)


def test_storage_transfer_syntaxes_in_the_order_the_server_prefers(facts: Any, text: str) -> None:
    listed = tuple(uids_in(section(text, "storage-transfer-syntaxes")))
    ct = "1.2.840.10008.5.1.4.1.1.2"
    assert listed == facts.abstract_syntaxes[ct] == DEFAULT_STORAGE_TRANSFER_SYNTAXES


def test_every_other_abstract_syntax_is_listed_with_its_transfer_syntaxes(
    facts: Any, text: str
) -> None:
    rows = [r for r in section(text, "other-transfer-syntaxes").splitlines() if r.startswith("| ")]
    non_storage = {uid for uid in facts.abstract_syntaxes if uid not in STORAGE_SOP_CLASSES}
    assert set(GET_SOP_CLASSES) | set(MOVE_SOP_CLASSES) <= non_storage
    services = uids_in(section(text, "network-services"))
    assert set(services) == non_storage
    assert len(rows) - 1 == len(non_storage)  # one row each, after the header
    for row in rows[1:]:
        syntaxes = tuple(uids_in(row))
        assert syntaxes in {facts.abstract_syntaxes[uid] for uid in non_storage}


def test_implementation_identification(text: str) -> None:
    body = section(text, "implementation")
    assert f"`{IMPLEMENTATION_CLASS_UID}`" in body
    assert f"`{IMPLEMENTATION_VERSION_NAME}`" in body


def test_every_find_key_is_documented(text: str) -> None:
    body = section(text, "find-keys")
    for key in KEYS.values():
        assert f"| {key.keyword}" in body, key.keyword


def test_max_pdu_length_in_the_prose_is_the_default(facts: Any, text: str) -> None:
    assert f"default {facts.max_pdu_length} bytes" in text


def test_a_doctored_table_is_caught(gen: ModuleType, facts: Any, text: str) -> None:
    # Drop one storage SOP class row: the document no longer says what the code accepts.
    row = next(r for r in section(text, "storage-sop-classes").splitlines() if "`1.2.840" in r)
    doctored = text.replace(row + "\n", "", 1)
    assert doctored != text
    assert gen.stale_sections(doctored, facts) == ["storage-sop-classes"]
    assert gen.render(doctored, facts) == text


def test_a_missing_or_repeated_marker_is_an_error(gen: ModuleType, facts: Any, text: str) -> None:
    without = re.sub(
        r"<!-- BEGIN generated:find-keys .*?<!-- END generated:find-keys -->", "", text, flags=re.S
    )
    with pytest.raises(ValueError, match="find-keys"):
        gen.render(without, facts)
    twice = text + "\n" + section_block(text, "implementation")
    with pytest.raises(ValueError, match="implementation"):
        gen.render(twice, facts)


def section_block(text: str, name: str) -> str:
    m = re.search(rf"<!-- BEGIN generated:{name} .*?<!-- END generated:{name} -->", text, re.DOTALL)
    assert m is not None
    return m.group(0)


def test_check_mode_exit_status(gen: ModuleType, tmp_path: Path, text: str) -> None:
    good = tmp_path / "good.md"
    good.write_text(text, encoding="utf-8")
    assert gen.main(["--check", str(good)]) == 0
    stale = tmp_path / "stale.md"
    stale.write_text(text.replace("`DICOMD_", "`OTHER_", 1), encoding="utf-8")
    assert gen.main(["--check", str(stale)]) == 1
    assert gen.main([str(stale)]) == 0  # rewrites it
    assert stale.read_text(encoding="utf-8") == text
