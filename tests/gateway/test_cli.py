"""The console scripts as a user runs them: hypercard-gateway in its own process, hypercard-send against it."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import urllib.error
import urllib.request
from pathlib import Path

import pytest

from tests.support.broker import AMQP_URL
from tests.support.identifiers import TEST_ID_SECRET
from tests.support.keys import new_key, write_public_keys
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import log_events

BIN = Path(sys.executable).parent


def run(*args: str, env: dict[str, str] | None = None, timeout: float = 30) -> subprocess.CompletedProcess:
    return subprocess.run(args, capture_output=True, text=True, timeout=timeout, env={**os.environ, **(env or {})})


@pytest.mark.parametrize(
    ("env", "variable"),
    [({"HC_PORT": "eighty"}, "HC_PORT"), ({"HC_PLATFORM_PUBLIC_KEY": "/nonexistent.pem"}, "HC_PLATFORM_PUBLIC_KEY")],
)
def test_a_bad_setting_stops_start_up_naming_the_variable(env, variable):
    result = run(sys.executable, "-m", "gateway", env=env)
    assert result.returncode == 2 and variable in result.stderr and "Traceback" not in result.stderr


@pytest.mark.parametrize("mode", ["enforce", "monitor", "off"])
@pytest.mark.parametrize("processes", ["1", "2"])
@pytest.mark.parametrize(("secret", "says"), [("", "required"), ("0123456789abcdef", "at least 32 characters")])
def test_the_gateway_does_not_start_without_a_strong_id_secret(tmp_path, mode, processes, secret, says):
    key_file = write_public_keys(tmp_path / "platform-public.pem", new_key())
    environ = {name: value for name, value in os.environ.items() if not name.startswith("HC_ID_SECRET")}
    env = {"HC_SIGNATURE_MODE": mode, "HC_PLATFORM_PUBLIC_KEY": str(key_file), "HC_PROCESSES": processes}
    result = subprocess.run(
        [sys.executable, "-m", "gateway"], capture_output=True, text=True, timeout=30,
        env={**environ, **env, "HC_ID_SECRET": secret, "HC_PORT": str(free_port()), "HC_GATEWAY_METRICS_PORT": "0"},
    )  # fmt: skip
    assert result.returncode == 2 and "Traceback" not in result.stderr
    assert result.stderr.startswith("hypercard-gateway: HC_ID_SECRET: ") and says in result.stderr
    assert "openssl rand -hex 32" in result.stderr and (not secret or secret not in result.stderr)




@pytest.mark.broker
@pytest.mark.parametrize("processes", [1, 2])
def test_gateway_process_accepts_signed_samples_and_stops_cleanly_on_sigterm(tmp_path, amqp, processes):
    assert run(str(BIN / "hypercard-send"), "--generate-keys", str(tmp_path)).returncode == 0
    port, metrics_port = free_port(), free_port()
    env = {
        **os.environ,
        "HC_PORT": str(port),
        "HC_GATEWAY_METRICS_PORT": str(metrics_port),
        "HC_AMQP_URL": AMQP_URL,
        "HC_PLATFORM_PUBLIC_KEY": str(tmp_path / "platform-public.pem"),
        "HC_API_KEY": "dev-merchant",
        "HC_DRAIN_SECONDS": "0.2",
        "HC_PROCESSES": str(processes),
        "HC_ID_SECRET": TEST_ID_SECRET,
    }
    gateway = subprocess.Popen(
        [str(BIN / "hypercard-gateway")], env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
    )
    try:
        wait_until_ready(port)
        sent = run(
            str(BIN / "hypercard-send"),
            "all",
            "--url",
            f"http://127.0.0.1:{port}/hc_sync/common",
            "--key",
            str(tmp_path / "platform-private.pem"),
        )
        assert sent.returncode == 0, sent.stdout
        assert sent.stdout.count('HTTP 200 {"code":1,"msg":"ok","data":{}}') == 9
        # The metrics port reports the requests of all processes; the push port serves no metrics.
        with urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5) as reply:
            exposition = reply.read().decode()
        with pytest.raises(urllib.error.HTTPError) as not_there:
            urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5)
        not_there.value.close()
        assert not_there.value.code == 404
        accepted = re.findall(r'^hypercard_gateway_requests_total\{.*status="200"\} ([0-9.]+)$', exposition, re.M)
        assert sum(float(n) for n in accepted) == 9
        check = subprocess.run(["promtool", "check", "metrics"], input=exposition, capture_output=True, text=True)
        assert check.returncode == 0, check.stdout + check.stderr
    finally:
        gateway.send_signal(signal.SIGTERM)
        output, _ = gateway.communicate(timeout=20)
    assert gateway.returncode == 0
    lines = output.decode()
    assert len(log_events(lines, event="request", status=200)) == 9
    # The logs carry no e-mail, mobile number, one-time code or signature from the samples.
    for secret in ("example@gmail.com", "18301523750", "888666"):
        assert secret not in lines
