"""Reading a JSON request body the way every endpoint must (SPEC §3): media type, then JSON."""

from __future__ import annotations

import json
from typing import Any

from django.http import HttpRequest

from leaddist.http.errors import Rejected


def _reject_constant(name: str) -> None:
    raise ValueError(f"{name} is not JSON")


def parse_json_body(request: HttpRequest) -> Any:
    """Media type, then JSON: 415 unless application/json, 400 unless UTF-8 JSON text."""
    if request.content_type != "application/json":
        raise Rejected(415, "unsupported_media_type", "The body must be sent as application/json.")
    try:
        text = request.body.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise Rejected(400, "malformed_json", "The body is not UTF-8 text.") from exc
    if not text.strip():
        raise Rejected(400, "malformed_json", "The body is empty.")
    try:
        return json.loads(text, parse_constant=_reject_constant)
    except RecursionError as exc:
        raise Rejected(400, "malformed_json", "The JSON is nested too deeply.") from exc
    except ValueError as exc:
        raise Rejected(400, "malformed_json", f"The body is not valid JSON: {exc}") from exc
