"""JSON over HTTP with a timeout on every request, and streams (server-sent events or JSON
lines) read as they arrive: every failure one error line, never a hang."""

from __future__ import annotations

import contextlib
import json
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass

from ..errors import OssConvertError

TIMEOUT_S = 10.0  # a request's connect and each read
MAX_BODY = 64 << 20


@dataclass(frozen=True)
class Reply:
    status: int
    body: object  # parsed JSON, or None where the body is not JSON


def _open(url: str, payload: dict | None, timeout: float):
    data = None if payload is None else json.dumps(payload).encode()
    request = urllib.request.Request(url, data=data, method="GET" if payload is None else "POST",
                                     headers={"Content-Type": "application/json", "Accept": "*/*"})
    try:
        return urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        return e
    except urllib.error.URLError as e:
        reason = e.reason
        if isinstance(reason, ConnectionRefusedError):
            raise OssConvertError(f"{url}: nothing is listening there") from None
        raise OssConvertError(f"{url}: cannot connect ({reason})") from None
    except TimeoutError:
        raise OssConvertError(f"{url}: no answer within {timeout:g} s") from None
    except (ConnectionError, OSError) as e:
        raise OssConvertError(f"{url}: connection failed ({e})") from None


@contextlib.contextmanager
def _reading(url: str, response, timeout: float, what: str) -> Iterator[None]:
    """A reply's body read: a silence past the timeout or a broken connection as one error line."""
    try:
        yield
    except TimeoutError:
        raise OssConvertError(f"{url}: {what} stopped (no data for {timeout:g} s)") from None
    except (ConnectionError, OSError) as e:
        raise OssConvertError(f"{url}: {what} broke midway ({e})") from None
    finally:
        response.close()


def get_json(url: str, payload: dict | None = None, timeout: float = TIMEOUT_S) -> Reply:
    """One request; the reply's status and JSON body (None where it is not JSON)."""
    response = _open(url, payload, timeout)
    with _reading(url, response, timeout, "the answer"):
        raw = response.read(MAX_BODY + 1)
    try:
        return Reply(response.status, json.loads(raw.decode("utf-8")))
    except (UnicodeDecodeError, ValueError):
        return Reply(response.status, None)


@dataclass(frozen=True)
class Event:
    data: dict
    at: float  # time.perf_counter() when it arrived


def stream(url: str, payload: dict, timeout: float = TIMEOUT_S * 6) -> Iterator[Event]:
    """The objects of a streamed answer (`data: {...}` lines, or one JSON object a line), each
    with its arrival time. A stream that ends before its last object is an error."""
    response = _open(url, payload, timeout)
    if response.status != 200:
        body = response.read(4096).decode("utf-8", "replace").strip().splitlines()
        raise OssConvertError(f"{url}: the server answered {response.status} ({body[0][:200] if body else 'no body'})")
    finished = False
    with _reading(url, response, timeout, "the stream"):
        for line in response:
            text = line.decode("utf-8", "replace").strip()
            if not text or text.startswith(":"):
                continue
            if text.startswith("data:"):
                text = text[5:].strip()
            if text == "[DONE]":
                finished = True
                break
            try:
                data = json.loads(text)
            except ValueError:
                raise OssConvertError(f"{url}: the stream held something that is not JSON: {text[:80]!r}") from None
            if not isinstance(data, dict):
                continue
            if "error" in data:
                raise OssConvertError(f"{url}: the server reported an error: {str(data['error'])[:200]}")
            yield Event(data, time.perf_counter())
            if data.get("stop") is True or data.get("done") is True:
                finished = True
    if not finished:
        raise OssConvertError(f"{url}: the stream ended before the answer did (the server stopped midway?)")
