"""The node configuration file: what it means, the mistakes it names by
line and key, and `pacsstore serve --config` running on it."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from pacsstore.cli import main as cli
from pacsstore.cli import serve
from pacsstore.net.access import ALL_SERVICES, Service
from pacsstore.net.config import (NodeConfig, NodeConfigError, key_lines,
                                  load_config, parse_config)
from pacsstore.net.dcmtk import dcmtk_tool
from qr_support import DCMTK_ENV, free_port

EXAMPLE = """\
ae_title = "ARCHIVE"
host = "127.0.0.1"
port = 4242
refuse_unknown_peers = true

[peers.VIEWER]              # a workstation
host = "10.0.0.7"
port = 11112
query = true
retrieve = true

[peers."CT 1"]
store = true
"""


def test_net_config_example_reads_as_documented():
    config = parse_config(EXAMPLE)
    assert (config.ae_title, config.host, config.port) == (
        "ARCHIVE", "127.0.0.1", 4242)
    peers = config.peers
    assert peers.refuse_unknown
    assert peers.permissions("VIEWER") == {Service.QUERY, Service.RETRIEVE}
    assert peers.destination("VIEWER") == ("10.0.0.7", 11112)
    assert peers.permissions("CT 1") == {Service.STORE}
    assert peers.destination("CT 1") is None
    assert not peers.admits("OTHER")


@pytest.mark.parametrize("text, note", [
    ("", ""),
    ('refuse_unknown_peers = true\n[peers.CT1]\n', ", 1 peer (others refused)"),
    (EXAMPLE, ", 2 peers (others refused)"),
    ('[peers.CT1]\n', ", 1 peer (others admitted)"),
])
def test_net_config_serve_counts_the_peers_it_read(text, note):
    assert serve._peers_note(parse_config(text)) == note


def test_net_config_empty_file_is_the_default_node():
    config = parse_config("")
    assert config == NodeConfig(peers=config.peers)
    assert not config.peers.refuse_unknown
    assert config.peers.permissions("ANY") == ALL_SERVICES


def test_net_config_unknown_peers_table_limits_unlisted_aes():
    config = parse_config("[unknown_peers]\nquery = false\n"
                          "retrieve = false\n")
    assert config.peers.permissions("ANY") == {Service.STORE}


@pytest.mark.parametrize(("text", "line", "words"), [
    ("ae_title = \"A\"\nprot = 104\n", 2,
     ["prot is not a known key", "expected one of"]),
    ("port = \"104\"\n", 1, ["port must be an integer", "string '104'"]),
    ("port = true\n", 1, ["port must be an integer", "boolean True"]),
    ("port = 70000\n", 1, ["port must be an integer from 0 to 65535"]),
    ("ae_title = \"A\\\\B\"\n", 1, ["ae_title is not a valid AE title"]),
    ("refuse_unknown_peers = \"yes\"\n", 1,
     ["refuse_unknown_peers must be true or false"]),
    ("refuse_unknown_peers = true\n", 1, ["would admit no one"]),
    ("[peers.VIEWER]\nquery = true\nretreive = true\n", 3,
     ["peers.VIEWER.retreive is not a known key"]),
    ("[peers.VIEWER]\nhost = \"h\"\n", 1,
     ["peers.VIEWER needs both host and port", "port is missing"]),
    ("[peers.VIEWER]\nport = 0\nhost = \"h\"\n", 2,
     ["peers.VIEWER.port must be an integer from 1 to 65535"]),
    ("[peers.VIEWER]\nstore = 1\n", 2,
     ["peers.VIEWER.store must be true or false", "integer 1"]),
    ("[peers.SEVENTEEN_CHARS_X]\n", 1, ["not a valid AE title"]),
    ("[peers.A]\nstore = true\n[peers.\"A \"]\nstore = true\n", 3,
     ["is the AE title 'A' again"]),
    ("peers = 3\n", 1, ["peers must be a table"]),
    ("peers.A = 3\n", 1, ["peers.A must be a table"]),
    ("peers = { A = { port = \"x\", host = \"h\" } }\n", 1,
     ["peers.A.port must be an integer"]),
    ("refuse_unknown_peers = true\n[peers.A]\n[unknown_peers]\n", 3,
     ["unknown_peers has no effect"]),
    ("[unknown_peers]\nstorage = true\n", 2,
     ["unknown_peers.storage is not a known key"]),
], ids=["unknown-key", "port-string", "port-bool", "port-range",
        "ae-backslash", "refuse-not-bool", "refuse-nobody",
        "misspelt-permission", "host-without-port", "peer-port-zero",
        "permission-not-bool", "peer-title-too-long", "duplicate-title",
        "peers-not-table", "peer-not-table", "inline-table",
        "unknown-peers-with-refuse", "unknown-peers-key"])
def test_net_config_mistake_names_line_and_key(text, line, words):
    with pytest.raises(NodeConfigError) as caught:
        parse_config(text, source="node.toml")
    message = str(caught.value)
    assert message.startswith(f"node.toml, line {line}: "), message
    for word in words:
        assert word in message


def test_net_config_toml_syntax_error_names_the_place():
    with pytest.raises(NodeConfigError, match=r"node.toml: not valid TOML"
                                              r".*line 2"):
        parse_config("port = 1\nhost = \n", source="node.toml")


def test_net_config_missing_file_is_a_config_error(tmp_path):
    with pytest.raises(NodeConfigError, match="cannot read it"):
        load_config(tmp_path / "absent.toml")


def test_net_config_error_is_a_value_error():
    assert issubclass(NodeConfigError, ValueError)


def test_net_config_key_lines_follow_tables_and_quotes():
    lines = key_lines(EXAMPLE)
    assert lines[("peers", "VIEWER")] == 6
    assert lines[("peers", "VIEWER", "retrieve")] == 10
    assert lines[("peers", "CT 1", "store")] == 13
    assert lines[("port",)] == 3


# pacsstore serve --config ------------------------------------------------

def serve_command(store: Path, *args: str) -> list[str]:
    return [sys.executable, "-m", "pacsstore.cli", "--store", str(store),
            "serve", *args]


def test_net_config_serve_reports_a_bad_file_in_one_line(tmp_path):
    config = tmp_path / "node.toml"
    config.write_text("[peers.VIEWER]\nretreive = true\n")
    result = CliRunner().invoke(cli, ["--store", str(tmp_path / "store"),
                                      "serve", "--config", str(config)])
    assert result.exit_code == 1
    assert "Traceback" not in result.output
    assert f"{config}, line 2: peers.VIEWER.retreive" in result.output
    assert not (tmp_path / "store").exists()


@pytest.mark.skipif(dcmtk_tool("echoscu") is None, reason="no DCMTK")
def test_net_config_serve_runs_on_the_file(tmp_path):
    """The file's AE title and peers hold; --port on the command line
    overrides the file's port."""
    config = tmp_path / "node.toml"
    config.write_text('ae_title = "FROMFILE"\nport = 1\n'
                      'refuse_unknown_peers = true\n'
                      '[peers.ECHOSCU]\n')
    port = free_port()
    env = dict(os.environ, PYTHONPATH=os.pathsep.join(
        [str(Path(__file__).resolve().parents[1] / "src"),
         os.environ.get("PYTHONPATH", "")]))
    process = subprocess.Popen(
        serve_command(tmp_path / "store", "--config", str(config),
                      "--port", str(port)),
        stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    try:
        line = process.stdout.readline()
        assert f"listening on 127.0.0.1:{port} as FROMFILE" in line, \
            process.stderr.read()
        assert "1 peer (others refused)" in line
        known = echo(port, "ECHOSCU")
        stranger = echo(port, "STRANGER")
    finally:
        process.send_signal(signal.SIGINT)
        process.communicate(timeout=30)
    assert known.returncode == 0, known.stderr
    assert stranger.returncode != 0
    assert "Calling AE Title Not Recognized" in stranger.stderr


def echo(port: int, title: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [dcmtk_tool("echoscu"), "-aet", title, "-aec", "FROMFILE",
         "127.0.0.1", str(port)],
        env=DCMTK_ENV, capture_output=True, text=True, timeout=30)
