"""The retry schedule alone, no broker: which delay follows which failed attempt, a handler's own `Retry(delay=x)`
rounded to a step, the dead letter past the schedule's end, and the `retry_due_at` header `hypercard-find` reads."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from workers.retries import due_at, next_retry_delay, retry_due_at, schedule_step

SCHEDULE = (5.0, 30.0, 300.0)


@pytest.mark.parametrize(("attempt", "delay"), [(1, 5.0), (2, 30.0), (3, 300.0)])
def test_each_failed_attempt_waits_its_step(attempt, delay):
    assert next_retry_delay(attempt, SCHEDULE) == delay


@pytest.mark.parametrize("attempt", [4, 5, 1000])
def test_past_the_schedules_end_is_a_dead_letter(attempt):
    assert next_retry_delay(attempt, SCHEDULE) is None
    assert next_retry_delay(attempt, SCHEDULE, requested=1.0) is None  # a handler's Retry does not extend it


def test_an_empty_schedule_dead_letters_the_first_failure():
    assert next_retry_delay(1, ()) is None


@pytest.mark.parametrize(
    ("requested", "step"), [(0.0, 5.0), (5.0, 5.0), (5.1, 30.0), (299.0, 300.0), (300.0, 300.0), (86400.0, 300.0)]
)
def test_a_handlers_delay_is_rounded_up_to_a_step_the_longest_at_most(requested, step):
    assert schedule_step(requested, SCHEDULE) == step
    assert next_retry_delay(1, SCHEDULE, requested=requested) == step  # whatever the attempt's own step


def test_an_unsorted_schedule_still_rounds_up_to_the_nearest_step():
    assert schedule_step(20.0, (300.0, 5.0, 30.0)) == 30.0


def test_retry_due_at_is_the_send_time_plus_the_delay_in_milliseconds_with_its_offset():
    now = datetime(2024, 5, 1, 12, 0, 0, 123456, tzinfo=UTC)
    assert retry_due_at(30.0, now) == "2024-05-01T12:00:30.123+00:00"
    assert retry_due_at(0.5, now) == "2024-05-01T12:00:00.623+00:00"


def test_hypercard_find_reads_back_the_due_time_the_retry_wrote():
    now = datetime(2024, 5, 1, 23, 59, 45, tzinfo=timezone(timedelta(hours=8)))
    assert due_at({"retry_due_at": retry_due_at(30.0, now)}) == now + timedelta(seconds=30)
    assert due_at({"retry_due_at": retry_due_at(30.0, now).encode()}) == now + timedelta(seconds=30)  # as bytes
