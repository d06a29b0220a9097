"""The BigBlueButton API client: checksums, getMeetings, getRecordings, end.

Every call names its server (the URL's host) in errors and logs, never the secret nor the
checksummed URL. XML is parsed with xml.etree after refusing any DTD, so no entity is ever
declared, let alone expanded.
"""

from __future__ import annotations

import hashlib
import logging
import xml.etree.ElementTree as ET
from collections.abc import Sequence
from urllib.parse import urlencode

import requests

from divims.errors import APIError, AuthError, ProtocolError, TimeoutError_, TransientError
from divims.model import Meeting, Recording, url_host

log = logging.getLogger(__name__)

ALGORITHMS = ("sha1", "sha256", "sha384", "sha512")
# The checksum's hex length tells which algorithm made it (BBB and Scalelite both do this).
ALGORITHM_BY_LENGTH = {40: "sha1", 64: "sha256", 96: "sha384", 128: "sha512"}


def checksum(call: str, query: str, secret: str, algorithm: str = "sha1") -> str:
    """hex(sha(call + query + secret)) as BBB computes it; `query` is the exact encoded string sent,
    without the checksum parameter."""
    if algorithm not in ALGORITHMS:
        raise ValueError(f"unsupported checksum algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
    return hashlib.new(algorithm, (call + query + secret).encode("utf-8")).hexdigest()


def parse_xml(body: bytes, service: str, target: str) -> ET.Element:
    """Parses an API answer; anything with a DTD, or not XML at all, is a ProtocolError."""
    if b"<!doctype" in body.lower():
        raise ProtocolError(service, target, "answer carries a DTD, refused")
    try:
        return ET.fromstring(body)
    except ET.ParseError as exc:
        raise ProtocolError(service, target, f"answer is not XML ({exc.__class__.__name__}: {exc})") from None


def raise_for_failed(root: ET.Element, service: str, target: str, call: str) -> None:
    """Raises the error a BBB-style `<returncode>FAILED</returncode>` answer means."""
    code = (root.findtext("returncode") or "").strip()
    if code == "SUCCESS":
        return
    key = (root.findtext("messageKey") or "").strip()
    message = (root.findtext("message") or "").strip() or f"{call} failed"
    if code != "FAILED":
        raise ProtocolError(service, target, f"{call}: answer has no SUCCESS/FAILED returncode")
    if key == "checksumError":
        raise AuthError(service, target, f"{call}: checksum rejected (wrong secret or algorithm)")
    raise APIError(service, target, f"{call}: {message}", key=key)


def _int(elem: ET.Element, tag: str, target: str, default: int | None = 0) -> int:
    text = elem.findtext(tag)
    if text is None or not text.strip():
        if default is None:
            raise ProtocolError("bbb", target, f"<{tag}> missing")
        return default
    try:
        return int(text.strip())
    except ValueError:
        raise ProtocolError("bbb", target, f"<{tag}> is not an integer: {text.strip()[:40]!r}") from None


def _bool(elem: ET.Element, tag: str) -> bool:
    return (elem.findtext(tag) or "").strip().lower() == "true"


def _text(elem: ET.Element, tag: str, target: str) -> str:
    text = elem.findtext(tag)
    if text is None or not text.strip():
        raise ProtocolError("bbb", target, f"<{tag}> missing")
    return text.strip()


def parse_meeting(elem: ET.Element, target: str) -> Meeting:
    """One `<meeting>` element (getMeetings) or a getMeetingInfo `<response>`."""
    return Meeting(
        meeting_id=_text(elem, "meetingID", target),
        internal_meeting_id=(elem.findtext("internalMeetingID") or "").strip(),
        create_time=_int(elem, "createTime", target, default=None) / 1000.0,
        participant_count=_int(elem, "participantCount", target),
        listener_count=_int(elem, "listenerCount", target),
        voice_participant_count=_int(elem, "voiceParticipantCount", target),
        video_count=_int(elem, "videoCount", target),
        moderator_count=_int(elem, "moderatorCount", target),
        is_breakout=_bool(elem, "isBreakout"),
        recording=_bool(elem, "recording"),
        moderator_pw=(elem.findtext("moderatorPW") or "").strip(),
    )


def parse_recording(elem: ET.Element, target: str) -> Recording:
    return Recording(
        record_id=_text(elem, "recordID", target),
        meeting_id=(elem.findtext("meetingID") or "").strip(),
        state=(elem.findtext("state") or "").strip(),
        start_time=_int(elem, "startTime", target) / 1000.0,
        end_time=_int(elem, "endTime", target) / 1000.0,
    )


class BBBClient:
    """One BBB server's API. `url` is the API base, `https://<host>/bigbluebutton/api`."""

    def __init__(self, url: str, secret: str, *, timeout_seconds: float = 5, algorithm: str = "sha256",
                 session: requests.Session | None = None):
        if algorithm not in ALGORITHMS:
            raise ValueError(f"unsupported checksum algorithm {algorithm!r} (one of {', '.join(ALGORITHMS)})")
        if not url.startswith(("http://", "https://")):
            raise ValueError(f"BBB API URL must start with http:// or https://, got {url_host(url) or url!r}")
        self.url = url.rstrip("/")
        self.host = url_host(url)
        self._secret = secret
        self.timeout_seconds = timeout_seconds
        self.algorithm = algorithm
        self._session = session or requests.Session()

    def __repr__(self) -> str:
        return f"BBBClient({self.url!r}, algorithm={self.algorithm!r})"

    def close(self) -> None:
        self._session.close()

    def signed_url(self, call: str, params: Sequence[tuple[str, str]] = ()) -> str:
        """The URL of an API call with its checksum (a secret-bearing value: never log it)."""
        query = urlencode(list(params))
        sig = checksum(call, query, self._secret, self.algorithm)
        return f"{self.url}/{call}?{query + '&' if query else ''}checksum={sig}"

    def call(self, call: str, params: Sequence[tuple[str, str]] = ()) -> ET.Element:
        """Calls the API and returns the `<response>` of a SUCCESS; raises a ClientError otherwise."""
        try:
            resp = self._session.get(self.signed_url(call, params), timeout=self.timeout_seconds,
                                     allow_redirects=False)
        except requests.Timeout:
            raise TimeoutError_("bbb", self.host, f"{call}: no answer within {self.timeout_seconds:g} s") from None
        except requests.RequestException as exc:
            # requests' own message holds the URL with its checksum: name only the kind of failure.
            raise TransientError("bbb", self.host, f"{call}: {_failure_kind(exc)}") from None
        if resp.status_code >= 400:
            raise TransientError("bbb", self.host, f"{call}: HTTP {resp.status_code}")
        root = parse_xml(resp.content, "bbb", self.host)
        if root.tag != "response":
            raise ProtocolError("bbb", self.host, f"{call}: answer root is <{root.tag}>, not <response>")
        raise_for_failed(root, "bbb", self.host, call)
        return root

    def get_meetings(self) -> list[Meeting]:
        """Every meeting on the server, breakout rooms included (an empty list for noMeetings)."""
        root = self.call("getMeetings")
        meetings = root.find("meetings")
        if meetings is None:
            if (root.findtext("messageKey") or "").strip() == "noMeetings":
                return []
            raise ProtocolError("bbb", self.host, "getMeetings: answer has no <meetings>")
        result = [parse_meeting(m, self.host) for m in meetings.findall("meeting")]
        log.debug("bbb %s: %d meetings", self.host, len(result))
        return result

    def get_recordings(self, states: Sequence[str]) -> list[Recording]:
        """The server's recordings in any of `states` (processing|processed|published|unpublished|deleted|any)."""
        params = [("state", ",".join(states))] if states else []
        root = self.call("getRecordings", params)
        recordings = root.find("recordings")
        if recordings is None:
            if (root.findtext("messageKey") or "").strip() == "noRecordings":
                return []
            raise ProtocolError("bbb", self.host, "getRecordings: answer has no <recordings>")
        return [parse_recording(r, self.host) for r in recordings.findall("recording")]

    def end_meeting(self, meeting_id: str, password: str | None = None) -> None:
        """Ends a meeting (BBB < 3 needs the moderator password). An unknown meeting is APIError(notFound)."""
        params = [("meetingID", meeting_id)]
        if password:
            params.append(("password", password))
        self.call("end", params)
        log.info("bbb %s: ended meeting %s", self.host, meeting_id)


def _failure_kind(exc: requests.RequestException) -> str:
    if isinstance(exc, requests.exceptions.SSLError):
        return "TLS handshake failed"
    if isinstance(exc, requests.ConnectionError):
        text = str(exc).lower()
        if "refused" in text:
            return "connection refused"
        if "reset" in text or "aborted" in text or "remotedisconnected" in text:
            return "connection reset"
        if "name or service" in text or "resolve" in text or "nodename" in text:
            return "name resolution failed"
        return "connection failed"
    return exc.__class__.__name__
