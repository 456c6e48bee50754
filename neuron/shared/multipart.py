"""multipart/form-data bodies read in place: where each part lies in the body's bytes, and its small text fields.

Both servers read an upload this way (`POST /v1/audio/transcriptions`): the gateway only to find `model` (and
to put another name in its place when the node knows the model by an alias), the neuron to take the file and
the fields. Offsets, not copies: a 25 MB upload is sliced once, where it is used, and the gateway forwards the
client's own bytes. aiohttp's reader cannot be used for this: it reads the request's stream, which the body
limits middleware has already read (`neuron.shared.http`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from neuron.shared.errors import bad_request

MAX_PARTS = 64  # a transcription has a file and a dozen fields; more is not a form a client sends
MAX_FIELD_BYTES = 64 * 1024  # a text field (a prompt is at most a few hundred tokens)
_PARAM = re.compile(r';\s*([A-Za-z0-9_*-]+)\s*=\s*(?:"((?:[^"\\]|\\.)*)"|([^;\s]*))')


@dataclass(frozen=True)
class Part:
    """One part: its form name (a trailing `[]`, an array's, dropped), file name and type if a file, and where
    its value lies in the body."""

    name: str
    filename: str | None
    content_type: str | None
    start: int
    end: int


@dataclass(frozen=True)
class Form:
    body: bytes
    parts: list[Part]

    def part(self, name: str) -> Part | None:
        return next((p for p in self.parts if p.name == name), None)

    def value(self, part: Part) -> bytes:
        return self.body[part.start:part.end]

    def text(self, name: str) -> str | None:
        """A text field's value (the first, if sent twice), None if absent."""
        part = self.part(name)
        return None if part is None else _decoded(self.value(part), name)

    def texts(self, files: tuple[str, ...] = ()) -> dict[str, str | list[str]]:
        """Every field but files (parts with a file name, or named in `files`: a client may leave the name out):
        an array field (`name[]`, or a name sent twice) as a list."""
        out: dict[str, str | list[str]] = {}
        for part in self.parts:
            if part.filename is not None or part.name in files:
                continue
            value = _decoded(self.value(part), part.name)
            if part.name in out:
                previous = out[part.name]
                out[part.name] = [*previous, value] if isinstance(previous, list) else [previous, value]
            else:
                out[part.name] = value
        return out


def boundary_of(content_type: str | None) -> bytes:
    """The boundary of a multipart/form-data Content-Type, or the 400 that says what to send."""
    kind, _, params = (content_type or "").partition(";")
    if kind.strip().lower() != "multipart/form-data":
        raise bad_request(f"request body: expected multipart/form-data (a file upload, as OpenAI's SDKs send), got "
                          f"{kind.strip() or 'no Content-Type'}", code="invalid_body")
    found = {m[1].lower(): m[2] if m[2] is not None else m[3] for m in _PARAM.finditer(";" + params)}
    boundary = found.get("boundary")
    if not boundary:
        raise bad_request("Content-Type: multipart/form-data without a boundary", code="invalid_body")
    return boundary.encode("latin-1")


def parse_form(body: bytes, content_type: str | None) -> Form:
    """The parts of a multipart/form-data body, or a 400 naming what is malformed."""
    delimiter = b"--" + boundary_of(content_type)
    at = body.find(delimiter)
    parts: list[Part] = []
    while at >= 0:
        at += len(delimiter)
        if body.startswith(b"--", at):
            return Form(body, parts)
        header_end = body.find(b"\r\n\r\n", at)
        end = body.find(b"\r\n" + delimiter, header_end + 4) if header_end >= 0 else -1
        if end < 0:
            break
        if len(parts) == MAX_PARTS:
            raise bad_request(f"request body: more than {MAX_PARTS} form fields", code="invalid_body")
        parts.append(_part(body[at:header_end].decode("latin-1"), header_end + 4, end))
        at = end + 2
    raise bad_request("request body: a multipart/form-data body that does not end with its closing boundary "
                      "(cut short, or not multipart)", code="invalid_body")


def _part(headers: str, start: int, end: int) -> Part:
    disposition, content_type = "", None
    for line in headers.split("\r\n"):
        name, _, value = line.partition(":")
        if name.strip().lower() == "content-disposition":
            disposition = value
        elif name.strip().lower() == "content-type":
            content_type = value.strip()
    params = {m[1].lower(): (m[2] if m[2] is not None else m[3]) for m in _PARAM.finditer(disposition)}
    if "name" not in params:
        raise bad_request("request body: a form part without a name (Content-Disposition: form-data; name=...)",
                          code="invalid_body")
    name = params["name"].removesuffix("[]")
    return Part(name, params.get("filename"), content_type, start, end)


def _decoded(value: bytes, name: str) -> str:
    if len(value) > MAX_FIELD_BYTES:
        raise bad_request(f"{name}: at most {MAX_FIELD_BYTES} bytes", param=name)
    try:
        return value.decode("utf-8")
    except UnicodeDecodeError:
        raise bad_request(f"{name}: not UTF-8 text", param=name) from None


def replaced(form: Form, name: str, value: str) -> bytes:
    """The body with one text field's value replaced, every other byte as it came (the gateway's alias)."""
    part = form.part(name)
    if part is None:
        raise bad_request(f"{name}: required", param=name, code="missing_field")
    return form.body[:part.start] + value.encode("utf-8") + form.body[part.end:]
