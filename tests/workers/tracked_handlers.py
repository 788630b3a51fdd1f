"""Registers the test kind in the global registry: the module a worker subprocess loads with --handlers."""

from tests.workers.effects import Tracked, record
from workers import handles

handles(Tracked, retry_delays=(0.2, 0.4, 0.8))(record)
