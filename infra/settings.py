"""Settings decoded from HC_* environment variables into typed Structs, one per process, with errors that name the
variable. `BrokerSettings` holds what every process needs and what the gateway and the workers must agree on: both
declare the kinds' queues, whose arguments (the delivery limit) the broker compares."""

from __future__ import annotations

import difflib
import os
import re
from collections.abc import Mapping
from typing import Annotated, Literal, TypeVar

import msgspec

from schemas.topology import DEFAULT_DELIVERY_LIMIT

Seconds = Annotated[float, msgspec.Meta(gt=0)]
Port = Annotated[int, msgspec.Meta(ge=0, le=65535)]
ENV_PREFIX = "HC_"
SECRET_FIELDS = frozenset({"id_secret", "id_secret_previous"})

# Every HC_* variable a process, tool or test of the project reads. docker-compose gives all services one
# environment, so a worker accepts the gateway's variables and the other way round; a name in none of them is a
# typo that would leave a safeguard off without a word (HC_ALLOWED_IP for HC_ALLOWED_IPS), and stops start-up.
# Plain data rather than an import of the gateway's and the workers' settings, which never import each other:
# tests/infra/test_settings.py checks it against their fields and every HC_ name in the repository.
KNOWN_VARIABLES = frozenset(
    {
        # BrokerSettings: every process
        "HC_AMQP_URL", "HC_DELIVERY_LIMIT", "HC_LOG_LEVEL",
        # GatewaySettings
        "HC_HOST", "HC_PORT", "HC_PLATFORM_PUBLIC_KEY", "HC_API_KEY", "HC_SIGNATURE_MODE", "HC_ALLOWED_IPS",
        "HC_TRUSTED_PROXIES", "HC_MAX_BODY_BYTES", "HC_PUBLISH_TIMEOUT", "HC_READ_TIMEOUT", "HC_EXTRA_PATHS",
        "HC_DRAIN_SECONDS", "HC_PROCESSES", "HC_GATEWAY_METRICS_PORT", "HC_TRUST_ANY_PROXY",
        "HC_MAX_CONNECTIONS", "HC_KINDS",
        # WorkerSettings
        "HC_DATABASE_URL", "HC_MIGRATION_DATABASE_URL", "HC_PREFETCH", "HC_BATCH_SIZE",
        "HC_BATCH_WAIT", "HC_HANDLER_TIMEOUT", "HC_RETRY_DELAYS",
        "HC_SHUTDOWN_GRACE", "HC_HANDLERS", "HC_METRICS_PORT", "HC_INBOX_RETENTION_DAYS", "HC_INBOX_PRUNE_INTERVAL",
        "HC_HEALTH_PORT",
        # the identifier secret (BrokerSettings, infra.identifiers)
        "HC_ID_SECRET_FILE", "HC_ID_SECRET_PREVIOUS",
        # the deployment secret (docker-compose), hypercard-status, hypercard-send, the image's HEALTHCHECK,
        # HAProxy's certificate, the tests' own
        "HC_ID_SECRET", "HC_MANAGEMENT_URL", "HC_SEND_URL", "HC_SEND_KEY", "HC_HEALTHCHECK_URL", "HC_TLS_CERT",
        "HC_TEST_FAULT", "HC_TEST_NOTIFIER_FILE",
    }
)  # fmt: skip


class SettingsError(ValueError):
    """A setting has a bad value; the message names the environment variable."""


class BrokerSettings(msgspec.Struct, kw_only=True, frozen=True):
    amqp_url: str = "amqp://guest:guest@localhost:5672/"
    # Redeliveries of a crash-looping message before RabbitMQ dead-letters it: an argument of every kind's queue,
    # so the gateway and every worker must be given the same value.
    delivery_limit: Annotated[int, msgspec.Meta(ge=1)] = DEFAULT_DELIVERY_LIMIT
    log_level: Literal["debug", "info", "warning", "error"] = "info"
    # The key of event ids and inbox keys (`infra.identifiers`), the same for every gateway and worker; or a file
    # holding it. Never shown: the repr below leaves these out.
    id_secret: str = ""
    id_secret_file: str = ""
    id_secret_previous: str = ""  # the secret before a rotation, while the platform may still retry (README)

    def __repr__(self) -> str:
        fields = (
            f"{name}=<hidden>" if name in SECRET_FIELDS and getattr(self, name) else f"{name}={getattr(self, name)!r}"
            for name in self.__struct_fields__
        )
        return f"{type(self).__name__}({', '.join(fields)})"

    @property
    def amqp_urls(self) -> list[str]:
        """HC_AMQP_URL may list several cluster nodes, comma-separated; they are tried in turn."""
        return [url.strip() for url in self.amqp_url.split(",") if url.strip()]


S = TypeVar("S", bound=BrokerSettings)


def env_name(field: str) -> str:
    return ENV_PREFIX + field.upper()


def load_settings(kind: type[S], environ: Mapping[str, str] | None = None, **overrides: object) -> S:
    """Decode HC_* variables (and explicit overrides, e.g. from the command line) into `kind`. A tuple field is a
    comma-separated list."""
    environ = os.environ if environ is None else environ
    info = msgspec.inspect.type_info(kind)
    assert isinstance(info, msgspec.inspect.StructType)
    fields = {field.name: field.type for field in info.fields}
    _refuse_unknown_variables(environ, KNOWN_VARIABLES | {env_name(field) for field in fields})
    raw: dict[str, object] = {}
    for field, field_type in fields.items():
        value = environ.get(env_name(field))
        if isinstance(field_type, msgspec.inspect.VarTupleType) and value is not None:
            items = [item.strip() for item in value.split(",") if item.strip()]
            if not items:  # HC_ALLOWED_IPS= would otherwise mean "anyone": a list that is set says what it allows
                raise SettingsError(f"{env_name(field)}: set but empty ({value!r}); give a value, or unset it")
            raw[field] = items
        elif value is None or value.strip() == "":
            continue
        else:
            raw[field] = value.strip()
    raw.update({key: value for key, value in overrides.items() if value is not None})
    try:
        return msgspec.convert(raw, kind, strict=False)
    except msgspec.ValidationError as error:
        raise SettingsError(_name_the_variable(str(error))) from None


def _refuse_unknown_variables(environ: Mapping[str, str], known: frozenset[str]) -> None:
    # hc_allowed_ips too: a variable in the wrong case is read by nothing, and would leave its safeguard off.
    unknown = sorted(name for name in environ if name.upper().startswith(ENV_PREFIX) and name not in known)
    if not unknown:
        return
    problems = []
    for name in unknown:
        nearest = difflib.get_close_matches(name.upper(), known, n=1)
        problems.append(f"{name} (did you mean {nearest[0]}?)" if nearest else name)
    raise SettingsError(
        f"{', '.join(problems)}: no hypercard process reads this variable; correct or unset it (a misspelt setting "
        "would leave its safeguard off; the README's Settings tables list every variable)"
    )


def _name_the_variable(message: str) -> str:
    # msgspec says "... - at `$.port`" (or `$.retry_delays[1]`); the operator knows the variable as HC_PORT.
    found = re.search(r"`\$\.([a-z_]+)", message)
    if found is None:
        return message
    return f"{env_name(found.group(1))}: {message.split(' - at ')[0]}"
