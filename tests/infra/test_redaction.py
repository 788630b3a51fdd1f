"""No OTP code, e-mail, mobile number, signature or key material in any log line, whatever the call site."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import random
import string
import time
from collections.abc import Callable, Iterator

import aiohttp
import pytest
import structlog
from hypothesis import given
from hypothesis import strategies as st

from gateway.send_cli import generate_keys, load_private_key, signed_headers
from infra.kinds import declare_kinds
from infra.log_fields import keep_named_fields
from infra.logs import configure_logging, render_json
from infra.redaction import REDACTED, bind_secrets, clear_secrets, mask, scrub
from schemas.events import EVENT_DECODER, Event
from schemas.samples import sample_body, sample_names
from tests.support.database import reset_database
from tests.support.network import free_port, wait_until_ready
from tests.support.processes import gateway_process, worker_process
from tests.support.waiting import eventually


def test_processor_drops_secret_keys_and_masks_secret_values():
    event = {
        "event": "oops: body was {'email': 'someone@example.com', 'mobile': '+8613800138000'}",
        "code": "888666",
        "signature": "c2lnbmF0dXJl",
        "nested": {"otp": "123456", "fine": "ok", "deeper": [{"email": "x@y.zz"}]},
        "key": "-----BEGIN PUBLIC KEY-----\nMIGf\n-----END PUBLIC KEY-----",
        "card_id": "6654358889900018888",
        "client_ip": "127.0.0.1",
        "status": 200,
    }
    out = keep_named_fields(None, "info", dict(event))
    assert out["code"] == out["signature"] == out["key"] == REDACTED
    assert out["nested"] == "<dict of 3 items>"  # a name no list knows: its type and size, none of its values
    assert "someone@example.com" not in out["event"] and "8613800138000" not in out["event"]
    assert out["card_id"] == event["card_id"] and out["status"] == 200 and out["client_ip"] == "127.0.0.1"


@pytest.mark.parametrize(
    "text", ["code:888666", "Your code is 888666.", "+86-18301523750", "+86 183 0152 3750", "(86) 18301523750"]
)
def test_free_text_forms_that_slipped_through_the_old_pattern_are_masked(text):
    assert scrub(text).count(REDACTED) == 1 and not any(ch.isdigit() for ch in scrub(text).replace("86", ""))


def test_an_event_passed_to_a_log_call_shows_its_kind_and_business_ids_only():
    otp = EVENT_DECODER.decode(sample_body("opt_code"))
    card = EVENT_DECODER.decode(sample_body("open_card"))
    line = render(keep_named_fields(None, "info", {"event": "got", "otp_event": otp, "events": [card]}))
    for secret in ("888666", "example@gmail.com", "18301523750"):
        assert secret not in line
    assert "1085185460000094505" in line  # the card id is no secret


otps = st.one_of(st.from_regex(r"[0-9]{4,8}", fullmatch=True), st.from_regex(r"[A-Za-z0-9]{6,8}", fullmatch=True))
emails = st.from_regex(r"[a-z][a-z0-9._]{0,15}@[a-z]{1,10}\.(com|cn|io)", fullmatch=True)
mobiles = st.from_regex(r"1[3-9][0-9]{9}", fullmatch=True)


@st.composite
def written_mobiles(draw) -> tuple[str, str]:
    """A mobile number and one way a person or a program writes it: with or without the country code, separators."""
    mobile = draw(mobiles)
    code = draw(st.sampled_from(["", "86", "852", "1"]))
    sep = draw(st.sampled_from(["", " ", "-"]))
    digits = sep.join([mobile[:3], mobile[3:7], mobile[7:]]) if sep else mobile
    if not code:
        return mobile, digits
    return mobile, draw(st.sampled_from([f"+{code}{sep}{digits}", f"({code}) {digits}", f"{code}{digits}"]))


@given(
    otp=otps,
    email=emails,
    mobile=written_mobiles(),
    template=st.sampled_from(
        [
            "notifier failed: could not send {otp} to {email} / {mobile}",
            "Your code is {otp}. Mobile {mobile}, mail {email}",
            "payload={{'code': '{otp}', 'email': '{email}', 'mobile': '{mobile}'}}",
            "code:{otp};mobile:{mobile};email:{email}",
        ]
    ),
)
def test_no_form_of_an_events_secrets_reaches_a_log_line_or_a_header(otp, email, mobile, template):
    number, written = mobile
    body = {"notify_type": "OPT_CODE", "card_id": "c-1", "code": otp, "create_time": 1710412477}
    event = EVENT_DECODER.decode(json.dumps(body))
    bind_secrets([event.code, email, number])  # what the worker binds for the event it handles
    try:
        text = template.format(otp=otp, email=email, mobile=written)
        error = RuntimeError(text)
        line = render(
            keep_named_fields(
                None,
                "warning",
                {"event": text, "error": str(error), "exc": error, "event_struct": event, "extra": {"nested": [text]}},
            )
        )
        header = scrub(text)  # what a retry or dead-letter header carries
    finally:
        clear_secrets()
    for output in (line, header):
        assert otp not in output and email not in output and number not in output
        assert "".join(ch for ch in written if ch.isdigit())[-6:] not in output


def render(event_dict) -> str:
    return render_json(None, "info", event_dict).decode()


@pytest.mark.broker
@pytest.mark.database
async def test_logs_of_all_nine_samples_through_gateway_and_workers_hold_no_secret(tmp_path, amqp):

    await reset_database()
    private, _ = generate_keys(tmp_path)
    key = load_private_key(private)
    port = free_port()
    gateway = gateway_process(tmp_path, port, {"HC_DRAIN_SECONDS": "0", "HC_LOG_LEVEL": "debug"})
    worker = worker_process(tmp_path, "--all", env={"HC_LOG_LEVEL": "debug"})
    signatures = []
    try:
        await asyncio.to_thread(wait_until_ready, port)
        async with aiohttp.ClientSession() as session:
            for name in sample_names():
                body = sample_body(name)
                headers = signed_headers(key, body, "merchant-1")
                signatures.append(headers["signature"])
                async with session.post(
                    f"http://127.0.0.1:{port}/hc_sync/common",
                    data=body,
                    headers={**headers, "Content-Type": "application/json"},
                ) as reply:
                    assert reply.status == 200
                # A forged one too: refusals are logged as well.
                async with session.post(
                    f"http://127.0.0.1:{port}/hc_sync/common",
                    data=body,
                    headers={**headers, "signature": "Zm9yZ2Vk", "Content-Type": "application/json"},
                ) as reply:
                    assert reply.status == 401

        async def all_handled() -> bool:
            return len(worker.events(event="message", outcome="handled")) >= 9

        await eventually(all_handled, timeout=20)
    finally:
        gateway.stop()
        worker.stop()

    logs = gateway.output + worker.output
    lines = logs.splitlines()
    assert len(lines) > 20 and all(json.loads(line) for line in lines)
    secrets = ["example@gmail.com", "18301523750", "888666", "Zm9yZ2Vk", "BEGIN", *signatures]
    secrets += [(tmp_path / "platform-public.pem").read_text().splitlines()[1]]
    for secret in secrets:
        assert secret not in logs, f"{secret!r} reached the logs"


@pytest.mark.broker
@pytest.mark.database
async def test_a_notifier_failure_quoting_the_code_leaks_it_nowhere(tmp_path, amqp, make_gateway, sign):
    """The notifier is called by the outbox relay after the commit, and again after each failure: its error, which
    quotes the code and the contacts, reaches no log line (only its type does)."""

    await reset_database()
    gateway = await make_gateway()
    received = tmp_path / "received.txt"
    code = "".join(random.choice(string.ascii_letters + string.digits) for _ in range(7))
    worker = worker_process(
        tmp_path, "OPT_CODE", "--handlers", "tests.support.failing_notifier",
        env={"HC_TEST_NOTIFIER_FILE": str(received), "HC_LOG_LEVEL": "debug"},
    )  # fmt: skip
    try:
        await eventually(lambda: _true(worker.events(event="consuming")), timeout=20)
        event = {"notify_type": "OPT_CODE", "card_id": "c-1", "code": code, "create_time": 1710412477}
        body = json.dumps(event).encode()
        assert (await gateway.post("/hc_sync/common", data=body, headers=sign(body))).status == 200
        await eventually(lambda: _true(len(worker.events(event="effect failed; it is tried again")) >= 2), timeout=15)
    finally:
        worker.stop()
    assert received.read_text().splitlines()[:2] == [code, code]  # the notifier got the code as it is, each attempt
    failures = worker.events(event="effect failed; it is tried again")
    assert {line["error_type"] for line in failures} == {"RuntimeError"}
    for secret in (code, "183-0152-3750", "a.b@example.com"):
        assert secret not in worker.output


async def _true(value: object) -> bool:
    return bool(value)


# The redaction table of issue 26, finding 3: what the regex over every value mangled, and what it let through.
class Refunded(Event, tag="REDACTION_TABLE_REFUND"):
    """A user's kind, declared the way a package declares one: its business id is a request id with digits in it."""

    business_ids = ("request_id",)

    request_id: str
    refund: str


@pytest.fixture
def log_line() -> Iterator[Callable[..., dict]]:
    """The JSON line production's logging (`infra.logs`) writes for one log call."""
    declare_kinds(Refunded)
    configure_logging(json=True)
    output = io.BytesIO()
    structlog.configure(logger_factory=structlog.BytesLoggerFactory(output))  # its processors, into `output`

    def logged(event: str, **fields: object) -> dict:
        output.seek(0)
        output.truncate()
        structlog.get_logger("test").info(event, **fields)
        (line,) = output.getvalue().splitlines()
        return json.loads(line)

    try:
        yield logged
    finally:
        structlog.reset_defaults()
        logging.getLogger().handlers.clear()


MANGLED = {
    # The worker's own retention line: a time.
    "handled_before": "2026-12-03T08:00:38.123456+00:00",
    # A user kind's business id, and an amount.
    "request_id": "9f1c-20261203-ab",
    "refund": "1234567.00",
}


@pytest.mark.parametrize("name", sorted(MANGLED))
def test_a_time_an_amount_or_an_id_is_never_mangled(log_line, name):
    value = MANGLED[name]
    line = log_line("message", notify_type="REDACTION_TABLE_REFUND", **{name: value})
    assert line[name] == value
    assert scrub(f"{name} {value!r}") == f"{name} {value!r}"  # in free text too
    assert log_line("refund", reason=f"refund {value!r}")["reason"] == f"refund {value!r}"


LEAKED = {
    "card_with_dots": ("card 4111.1111.1111.1111 declined", "4111.1111.1111.1111"),
    "card_with_underscores": ("card 4111_1111_1111_1111 declined", "1111_1111"),
    "card_glued_to_a_word": ("pan4111111111111111 declined", "4111111111111111"),
    "e_mail_with_an_accent": ("no mailbox josé@example.com", "josé@example.com"),
    "integer_phone": ("call 8613800138000", "8613800138000"),
    "cvv": ('card rejected: cvv="123"', "123"),
    "pin": ("card rejected: pin='4321'", "4321"),
}


@pytest.mark.parametrize("name", sorted(LEAKED))
def test_a_card_number_an_e_mail_a_phone_a_cvv_or_a_pin_in_free_text_is_masked(log_line, name):
    text, secret = LEAKED[name]
    assert secret not in scrub(text) and REDACTED in scrub(text)
    line = log_line("handler failed", error=text, note=text)
    assert secret not in line["error"] and secret not in line["note"]


def test_an_integer_phone_under_a_name_no_list_knows_never_reaches_a_line(log_line):
    line = log_line("noted", callback=8613800138000, rows=8613800138000)
    assert "8613800138000" not in json.dumps(line["callback"])
    assert line["rows"] == 8613800138000  # a count the code named is shown as it is


@pytest.mark.parametrize("shape", ["a", "a.", "1", "amqp://", "1 ", "a@", "-----BEGIN A-----"])
def test_scrubbing_a_long_value_costs_what_a_short_one_does(shape):
    text = shape * (20000 // len(shape))
    started = time.process_time()
    scrub(text)
    assert time.process_time() - started < 0.005, f"{len(text)} characters of {shape!r} scrubbed in over 5 ms"


def test_control_characters_in_free_text_are_escaped(log_line):
    line = log_line("handler failed", error="\x1b]0;owned\x07\x1b[2J done\r\nforged line")
    assert not any(ord(ch) < 0x20 for ch in line["error"]) and "\\x1b" in line["error"]


@pytest.mark.parametrize(
    "shape", ["a", "a.", "1", "1 ", "a@", "a@a.", "amqp://", "-----BEGIN A-----", "pin", "+1 ", "(("]
)
def test_the_patterns_run_in_time_linear_in_the_texts_length(shape):
    """Uncut: ten times the text costs about ten times as much, never a hundred (the cut alone is not the bound)."""

    def cost(text: str) -> float:
        runs = []
        for _ in range(3):
            started = time.process_time()
            mask(text)
            runs.append(time.process_time() - started)
        return min(runs)

    short, long = shape * (10000 // len(shape)), shape * (100000 // len(shape))
    assert cost(long) < 30 * max(cost(short), 0.0005)
