"""Validation of transcription requests (multipart/form-data) into typed objects; the field policy is
`neuron.shared.transcription_fields`."""

from __future__ import annotations

from dataclasses import dataclass

from neuron.shared.errors import bad_request
from neuron.shared.multipart import parse_form
from neuron.shared.transcription_fields import FORMATS, POLICY, RESPONSE_FORMATS


@dataclass
class TranscriptionRequest:
    model: str
    audio: bytes
    language: str | None = None
    prompt: str | None = None
    response_format: str = "json"
    temperature: float = 0.0


def parse_transcription(body: bytes, content_type: str | None) -> TranscriptionRequest:
    form = parse_form(body, content_type)
    fields = form.texts(files=("file",))
    POLICY.check({k: v for k, v in fields.items() if k != "stream" or str(v).lower() != "false"})
    part = form.part("file")
    if part is None:
        raise bad_request(f"file: required, the audio to transcribe ({FORMATS}) as a file part", param="file",
                          code="missing_field")
    if part.end == part.start:
        raise bad_request("file: the uploaded file is empty", param="file")
    for name, value in fields.items():
        if isinstance(value, list) and name != "timestamp_granularities":
            raise bad_request(f"{name}: sent more than once; send it once", param=name)
    _check_granularities(fields.get("timestamp_granularities"))
    return TranscriptionRequest(
        model=_model(fields.get("model")), audio=form.value(part),
        language=_language(fields.get("language")), prompt=fields.get("prompt") or None,
        response_format=_response_format(fields.get("response_format")),
        temperature=_temperature(fields.get("temperature")))


def _model(value: str | None) -> str:
    if not value:
        raise bad_request("model: required, a transcription model id from GET /v1/models", param="model",
                          code="missing_field")
    return value


def _language(value: str | None) -> str | None:
    if not value:
        return None
    code = value.strip().lower()
    if not code.isalpha() or not 2 <= len(code) <= 3:
        raise bad_request(f"language: expected an ISO-639-1 code such as 'en', got {value!r}", param="language")
    return code


def _response_format(value: str | None) -> str:
    if value in (None, ""):
        return "json"
    if value in ("srt", "vtt"):
        raise bad_request(f"response_format: {value} is not supported here; ask for verbose_json, whose segments "
                          "carry the same timestamps", param="response_format", code="unsupported_parameter")
    if value not in RESPONSE_FORMATS:
        raise bad_request(f"response_format: expected one of {', '.join(RESPONSE_FORMATS)}, got {value!r}",
                          param="response_format")
    return value


def _temperature(value: str | None) -> float:
    if value in (None, ""):
        return 0.0
    try:
        temperature = float(value)
    except ValueError:
        raise bad_request(f"temperature: expected a number from 0 to 1, got {value!r}", param="temperature") from None
    if not 0.0 <= temperature <= 1.0:
        raise bad_request(f"temperature: must be from 0 to 1, got {value}", param="temperature")
    return temperature


def _check_granularities(value: str | list[str] | None) -> None:
    """Segment timestamps are verbose_json's segments; word timestamps are refused (nothing to keep)."""
    for item in [value] if isinstance(value, str) else value or []:
        if item == "word":
            raise bad_request("timestamp_granularities: word timestamps are not supported here; segment timestamps "
                              "come with response_format verbose_json", param="timestamp_granularities",
                              code="unsupported_parameter")
        if item != "segment":
            raise bad_request(f"timestamp_granularities: expected segment, got {item!r}",
                              param="timestamp_granularities")
