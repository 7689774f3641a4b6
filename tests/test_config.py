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
            documented = rf"^#? ?({f.name} = |\[{section.name}\.{f.name}\])"
            assert re.search(documented, text, re.M), f"{section.name}.{f.name}"


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
        ({"tls": {"enabled": True}}, "certificate and private_key are required"),
        (
            {
                "tls": {
                    "enabled": True,
                    "certificate": "c",
                    "private_key": "k",
                    "verify_clients": True,
                }
            },
            "needs tls.ca_certificates",
        ),
        ({"tls": {"plain_listener": False}}, "needs tls.enabled"),
        (
            {"remote": [{"ae_title": "V", "host": "h", "port": 1, "tls": True}]},
            "certificate and private_key are required",
        ),
        ({"security": {"operations": {"CT": ["delete"]}}}, "security.operations.CT"),
        ({"storage": {"min_free_mb": -1}}, "storage.min_free_mb: must not be negative"),
        ({"storage": {"min_free_mb": 0.5}}, "storage.min_free_mb: expected an integer"),
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


def test_environment_overrides(tmp_path: Path) -> None:
    path = tmp_path / "dicomd.toml"
    path.write_text('[server]\nae_title = "FILE"\nport = 104\n')
    env = {
        "DICOMD_SERVER__AE_TITLE": "FROM_ENV",
        "DICOMD_SERVER__MAX_ASSOCIATIONS": "8",
        "DICOMD_SECURITY__ALLOWED_CALLING_AETS": '["CT1", "MR1"]',
        "DICOMD_STORAGE__ROOT": "/var/lib/dicomd/store",
        "PATH": "/usr/bin",  # not ours
    }
    cfg = config.load(path, env=env)
    assert cfg.server.ae_title == "FROM_ENV"
    assert cfg.server.port == 104  # from the file
    assert cfg.server.max_associations == 8
    assert cfg.security.allowed_calling_aets == ("CT1", "MR1")
    assert str(cfg.storage.root) == "/var/lib/dicomd/store"
    assert config.load(None, env={"DICOMD_SERVER__PORT": "4242"}).server.port == 4242
    with pytest.raises(ConfigError, match=r"unknown key server\.ae_titel"):
        config.load(None, env={"DICOMD_SERVER__AE_TITEL": "X"})
    with pytest.raises(ConfigError, match="expected an integer"):
        config.load(None, env={"DICOMD_SERVER__PORT": "eleven"})


def test_remote_list_from_the_environment(tmp_path: Path) -> None:
    path = tmp_path / "dicomd.toml"
    path.write_text('[[remote]]\nae_title = "FILE"\nhost = "10.0.0.1"\nport = 104\n')
    assert [r.ae_title for r in config.load(path, env={}).remote] == ["FILE"]
    env = {
        "DICOMD_REMOTE": '[{ae_title = "VIEWER", host = "10.0.0.5", port = 104},'
        ' {ae_title = "WS2", host = "ws2.example", port = 11112, tls = true}]',
        "DICOMD_TLS__ENABLED": "true",
        "DICOMD_TLS__CERTIFICATE": str(tmp_path / "c.pem"),
        "DICOMD_TLS__PRIVATE_KEY": str(tmp_path / "k.pem"),
    }
    remotes = config.load(path, env=env).remote  # replaces the file's list
    assert [(r.ae_title, r.host, r.port, r.tls) for r in remotes] == [
        ("VIEWER", "10.0.0.5", 104, False),
        ("WS2", "ws2.example", 11112, True),
    ]
    assert config.load(path, env={"DICOMD_REMOTE": "[]"}).remote == ()
    for raw, message in (
        ("VIEWER@10.0.0.5:104", "not a TOML array"),
        ('{ae_title = "V", host = "h", port = 1}', "expected an array of inline tables"),
        ('["VIEWER"]', "expected an array of inline tables"),
        ('[{ae_title = "V", host = "h"}]', r"remote\[0\]"),  # the port is required
        ('[{ae_title = "V", host = "h", port = 1, colour = "red"}]', "colour"),
    ):
        with pytest.raises(ConfigError, match=message):
            config.load(None, env={"DICOMD_REMOTE": raw})
    with pytest.raises(ConfigError, match="DICOMD_REMOTE"):
        config.load(None, env={"DICOMD_REMOTE__HOST": "h"})


def test_query_section() -> None:
    cfg = from_mapping({"query": {"pn_case_insensitive": False, "max_matches": 0}})
    assert (cfg.query.pn_case_insensitive, cfg.query.max_matches) == (False, 0)
    defaults = Config().query
    assert (defaults.pn_case_insensitive, defaults.max_matches) == (True, 10000)
    for data, message in (
        ({"query": {"max_matches": -1}}, "query.max_matches"),
        ({"query": {"max_matches": "10"}}, "query.max_matches: expected an integer"),
        (
            {"query": {"pn_case_insensitive": "yes"}},
            "query.pn_case_insensitive: expected true or false",
        ),
        ({"query": {"case": True}}, "unknown key query.case"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            from_mapping(data)


def test_retrieve_section() -> None:
    assert Config().retrieve.pending_interval == 0.25
    assert from_mapping({"retrieve": {"pending_interval": 0}}).retrieve.pending_interval == 0.0
    env = {"DICOMD_RETRIEVE__PENDING_INTERVAL": "1.5"}
    assert config.load(None, env=env).retrieve.pending_interval == 1.5
    assert Config().retrieve.move_processes == 2
    assert from_mapping({"retrieve": {"move_processes": 0}}).retrieve.move_processes == 0
    env = {"DICOMD_RETRIEVE__MOVE_PROCESSES": "4"}
    assert config.load(None, env=env).retrieve.move_processes == 4
    for data, message in (
        ({"retrieve": {"pending_interval": -0.1}}, "retrieve.pending_interval: must not be"),
        ({"retrieve": {"move_processes": -1}}, "retrieve.move_processes: must be 0 to 64"),
        ({"retrieve": {"move_processes": 65}}, "retrieve.move_processes: must be 0 to 64"),
        ({"retrieve": {"move_processes": 1.5}}, "retrieve.move_processes: expected"),
        ({"retrieve": {"pending_interval": "1"}}, "retrieve.pending_interval: expected a number"),
        ({"retrieve": {"interval": 1}}, "unknown key retrieve.interval"),
    ):
        with pytest.raises(ConfigError, match=re.escape(message)):
            from_mapping(data)
