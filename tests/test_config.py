from __future__ import annotations

import re
from dataclasses import fields
from pathlib import Path

import pytest

from dicomd import config
from dicomd.config import Config, ConfigError, from_mapping

EXAMPLE = Path(__file__).resolve().parents[1] / "config" / "dicomd.toml"


def test_embedded_defaults_are_the_documented_ones() -> None:
    cfg = config.load(None)
    assert (cfg.server.ae_title, cfg.server.port, cfg.server.host) == ("DICOMD", 11112, "0.0.0.0")
    assert config.load(EXAMPLE) == cfg


def test_example_documents_every_key() -> None:
    text = EXAMPLE.read_text()
    for section in fields(Config):
        assert re.search(rf"^#? ?\[\[?{section.name}\]?\]", text, re.M), section.name
        cls = {"remote": config.RemoteAE}.get(section.name) or type(getattr(Config(), section.name))
        for f in fields(cls):
            assert re.search(rf"^#? ?{f.name} = ", text, re.M), f"{section.name}.{f.name}"


def test_remote_table() -> None:
    cfg = from_mapping({"remote": [{"ae_title": "VIEWER", "host": "10.0.0.5", "port": 104}]})
    assert cfg.remote_ae("VIEWER") == config.RemoteAE("VIEWER", "10.0.0.5", 104)
    assert cfg.remote_ae("OTHER") is None


@pytest.mark.parametrize(
    ("data", "message"),
    [
        ({"bogus": {}}, "unknown key bogus"),
        ({"server": {"ae_titel": "X"}}, "unknown key server.ae_titel"),
        ({"server": {"port": "104"}}, "server.port: expected an integer"),
        ({"server": {"port": 70000}}, "server.port: 70000 is not a TCP port"),
        ({"server": {"uvloop": 1}}, "server.uvloop: expected true or false"),
        ({"server": {"ae_title": "A" * 17}}, "longer than 16"),
        ({"server": {"ae_title": " X"}}, "leading/trailing spaces"),
        ({"server": {"ae_title": "A\\B"}}, "not allowed"),
        ({"server": {"called_ae_check": "maybe"}}, "is not one of reject, accept"),
        ({"server": {"max_pdu_length": 100}}, "max_pdu_length"),
        ({"server": {"artim_timeout": 0}}, "must be positive"),
        ({"security": {"allowed_calling_aets": "X"}}, "expected an array of strings"),
        ({"remote": [{"ae_title": "V", "host": "h"}]}, "remote[0]"),
        (
            {"remote": [{"ae_title": "V", "host": "h", "port": 1, "x": 1}]},
            "unknown key remote[0].x",
        ),
        (
            {"remote": [{"ae_title": "V", "host": "h", "port": 1}] * 2},
            "listed twice",
        ),
        ({"log": {"level": "loud"}}, "log.level"),
    ],
)
def test_invalid_configs_name_the_key(data: dict[str, object], message: str) -> None:
    with pytest.raises(ConfigError) as info:
        from_mapping(data)
    assert message in str(info.value)


def test_unreadable_and_malformed_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        config.load(tmp_path / "missing.toml")
    bad = tmp_path / "bad.toml"
    bad.write_text("[server\n")
    with pytest.raises(ConfigError, match=r"bad\.toml"):
        config.load(bad)
