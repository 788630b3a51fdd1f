"""Pre-signed requests, as the platform would send them, written into wrk Lua scripts."""

from __future__ import annotations

import json
from pathlib import Path

from cryptography.hazmat.primitives.asymmetric import rsa

from gateway.send_cli import signed_headers
from schemas.samples import distinct_bodies, sample_body, sample_names

Request = tuple[bytes, dict[str, str]]


def sample_requests(key: rsa.RSAPrivateKey) -> list[Request]:
    """The nine samples, each signed once."""
    return [_signed(key, sample_body(name)) for name in sample_names()]


def unique_requests(key: rsa.RSAPrivateKey, count: int, tag: str) -> list[Request]:
    """`count` distinct signed events cycling through the nine kinds; `tag` keeps runs apart."""
    return [_signed(key, body) for _, body in distinct_bodies(count, tag)]


def _signed(key: rsa.RSAPrivateKey, body: bytes) -> Request:
    return body, {**signed_headers(key, body, "bench-merchant"), "Content-Type": "application/json"}


def write_wrk_script(path: Path, requests: list[Request], mean_gap_ms: float | None = None) -> Path:
    """A wrk script cycling through `requests`, read from a data file beside it: one request a line, the headers
    and the body tab-separated, the body's newlines written as \\x01 (a Lua table literal of tens of thousands of
    requests would exceed Lua's limits).

    With `mean_gap_ms`, each connection waits a random gap (uniform, that mean) before each request, so C
    connections offer about C / gap requests per second, spread out rather than in bursts. It prints latency
    percentiles at the end."""
    data = path.with_suffix(".requests")
    with data.open("w") as out:
        for body, headers in requests:
            text = body.decode()
            assert "\t" not in text and "\x01" not in text, "tabs separate the fields, \\x01 stands for newlines"
            fields = [f"{name}:{value}" for name, value in headers.items()]
            out.write("\t".join([*fields, text.replace("\n", "\x01")]) + "\n")
    pacing = f"delay = function()\n  return math.random(0, {round(2 * mean_gap_ms)})\nend\n" if mean_gap_ms else ""
    path.write_text(
        f"""local requests = {{}}
for line in io.lines({json.dumps(str(data))}) do
  local parts = {{}}
  for part in string.gmatch(line, "[^\\t]+") do parts[#parts + 1] = part end
  local headers = {{Host = "bench"}}  -- formatted before wrk knows the host: name one
  for n = 1, #parts - 1 do
    local name, value = string.match(parts[n], "^([^:]+):(.*)$")
    headers[name] = value
  end
  local body = string.gsub(parts[#parts], "\\1", "\\n")
  requests[#requests + 1] = wrk.format("POST", "/hc_sync/common", headers, body)
end
local i = 0
request = function()
  i = i % #requests + 1
  return requests[i]
end
{pacing}done = function(summary, latency, requests)
  io.write(string.format("latency-ms p50 %.2f p99 %.2f p99.9 %.2f\\n",
    latency:percentile(50) / 1000, latency:percentile(99) / 1000, latency:percentile(99.9) / 1000))
end
"""
    )
    return path
