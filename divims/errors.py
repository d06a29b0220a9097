"""Errors raised by divims clients. Messages name the service and the server, never a secret."""

from __future__ import annotations


class DivimsError(Exception):
    """Base of every divims error."""


class ConfigError(DivimsError):
    """The configuration is invalid: `problems` holds one line per problem, each naming its key path."""

    def __init__(self, problems: list[str]):
        self.problems = list(problems)
        super().__init__("; ".join(self.problems))


class ClientError(DivimsError):
    """A call to a remote service failed. `service` is bbb|scalelite|scaleway|ssh|prometheus,
    `target` the server (host) or endpoint it was about."""

    kind = "error"

    def __init__(self, service: str, target: str, message: str):
        self.service = service
        self.target = target
        self.message = message
        super().__init__(f"{service} {target}: {message}")


class TransientError(ClientError):
    """Timeouts, connection failures, 429 and 5xx: worth retrying later."""

    kind = "transient"


class TimeoutError_(TransientError):
    kind = "timeout"


class AuthError(ClientError):
    """Bad credentials or checksum (Scalelite's checksumError arrives as XML with HTTP 200)."""

    kind = "auth"


class NotFoundError(ClientError):
    kind = "not_found"


class ProtocolError(ClientError):
    """The answer could not be understood (garbage, unparsable XML/JSON)."""

    kind = "protocol"


class APIError(ClientError):
    """The service answered with an error of its own (BBB FAILED with a messageKey, a Scaleway 4xx)."""

    kind = "api"

    def __init__(self, service: str, target: str, message: str, key: str = ""):
        self.key = key
        super().__init__(service, target, f"{message} ({key})" if key else message)


class NotSupportedError(ClientError):
    kind = "not_supported"
