"""hypercard-send as a user runs it from a folder of their own: no repository around it, no development key."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from gateway.send_cli import generate_keys
from tests.support.network import free_port

BIN = Path(sys.executable).parent


def send(folder: Path, *args: str) -> subprocess.CompletedProcess:
    env = {name: value for name, value in os.environ.items() if name not in ("HC_SEND_KEY", "HC_SEND_URL")}
    return subprocess.run([str(BIN / "hypercard-send"), *args], cwd=folder, env=env, capture_output=True, text=True,
                          timeout=60)  # fmt: skip


def test_without_a_key_it_says_so_in_one_line_naming_the_option_and_the_variable(tmp_path):
    result = send(tmp_path, "open_card")
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert "--key" in line and "HC_SEND_KEY" in line and "platform-private.pem" in line


def test_help_shows_the_defaults_and_the_variables(tmp_path):
    result = send(tmp_path, "--help")
    assert result.returncode == 0
    text = " ".join(result.stdout.split())
    assert "http://127.0.0.1:8080/hc_sync/common" in text and ".dev/platform-private.pem" in text
    assert "HC_SEND_URL" in text and "HC_SEND_KEY" in text


@pytest.mark.parametrize("where", ["closed port", "unknown host", "not a URL"])
def test_no_gateway_at_the_url_is_one_line_naming_the_url_and_hc_send_url(tmp_path, where):
    key = str(generate_keys(tmp_path / "keys")[0])
    url = {
        "closed port": f"http://127.0.0.1:{free_port()}/hc_sync/common",
        "unknown host": "http://no-such-gateway.invalid/hc_sync/common",
        "not a URL": "127.0.0.1:8080/hc_sync/common",
    }[where]
    result = send(tmp_path, "open_card", "--key", key, "--url", url)
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr, result.stderr
    (line,) = result.stderr.strip().splitlines()
    assert url in line and "HC_SEND_URL" in line, line
