"""Logging for every divims service: one line per event, every configured secret masked."""

from __future__ import annotations

import logging
import sys
from collections.abc import Iterable

MASK = "<secret>"


class SecretMaskFilter(logging.Filter):
    """Replaces every known secret in a record's final message (and its exception text) by `<secret>`."""

    def __init__(self, secrets: Iterable[str]):
        super().__init__()
        self.secrets = sorted({s for s in secrets if s and len(s) >= 4}, key=len, reverse=True)

    def mask(self, text: str) -> str:
        for secret in self.secrets:
            if secret in text:
                text = text.replace(secret, MASK)
        return text

    def filter(self, record: logging.LogRecord) -> bool:
        if not self.secrets:
            return True
        message = record.getMessage()
        masked = self.mask(message)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = self.mask(record.exc_text)
        if masked != message:
            record.msg, record.args = masked, None
        return True


def setup_logging(level: str = "INFO", secrets: Iterable[str] = (), stream=None) -> SecretMaskFilter:
    """Configures the root logger once for a service process; returns the mask filter it installed."""
    handler = logging.StreamHandler(stream or sys.stderr)
    handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    mask = SecretMaskFilter(secrets)
    handler.addFilter(mask)
    root = logging.getLogger()
    for old in list(root.handlers):
        root.removeHandler(old)
    root.addHandler(handler)
    root.setLevel(level)
    # third-party chatter that would print URLs with checksums at DEBUG
    for noisy in ("urllib3", "paramiko.transport", "asyncssh", "waitress.queue"):
        logging.getLogger(noisy).setLevel(max(logging.WARNING, logging.getLevelName(level)))
    return mask
