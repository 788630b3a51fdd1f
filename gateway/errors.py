"""Why the gateway refuses a request. Each maps to an HTTP status and a non-1 reply `code` (the platform retries);
the one place that turns them into replies is `gateway.replies.reply_contract`."""

from __future__ import annotations


class GatewayError(Exception):
    """Base: a request the gateway did not accept. The message goes to the sender in the reply's `msg`."""

    status = 400


class BadRequest(GatewayError):
    status = 400


class Unauthorized(GatewayError):
    status = 401


class Forbidden(GatewayError):
    status = 403


class PayloadTooLarge(GatewayError):
    status = 413


class UnsupportedMediaType(GatewayError):
    status = 415


class RequestTimeout(GatewayError):
    status = 408


class BrokerUnavailable(GatewayError):
    """The event could not be stored (broker down, confirm timed out, nack, returned): the platform must resend."""

    status = 503


class Draining(GatewayError):
    """Shutting down: /readyz says so, so that the load balancer stops sending here."""

    status = 503
