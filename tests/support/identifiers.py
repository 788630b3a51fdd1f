"""The deployment secret (HC_ID_SECRET) the tests give every gateway and worker they start."""

from __future__ import annotations

TEST_ID_SECRET = "test-id-secret-0123456789abcdefghijklmnopqrstuvwxyz"
OTHER_ID_SECRET = "another-test-id-secret-9876543210zyxwvutsrqponmlkji"
