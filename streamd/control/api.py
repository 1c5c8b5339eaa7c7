"""``/api/streams``: the REST API for streams changed at runtime, and its OpenAPI document.

Transport-free: :func:`handle` maps (method, path, body) to (status, JSON) so
the hand-written HTTP handler stays a thin shell around it. The work is done
by a :class:`~streamd.control.admin.StreamAdmin` (the supervisor's). URLs are
answered with their password redacted, as everywhere else; a ``PUT`` gives
the whole stream, its URL in full.
"""

from __future__ import annotations

import json
import logging
from typing import Any
from urllib.parse import unquote

from streamd.config import StreamConfig
from streamd.control.admin import AdminError, StreamAdmin
from streamd.runtime.redact import redact_url, redact_whole_url

log = logging.getLogger(__name__)

PREFIX = "/api/streams"
MAX_BODY_BYTES = 1024 * 1024  # as a pipeline file

Answer = tuple[int, Any]


def shown(stream: StreamConfig) -> dict[str, Any]:
    """A stream as the API answers it: the pipeline file's form, no password."""
    data = stream.model_dump(mode="json")
    data["url"] = redact_whole_url(stream.url)
    return data


def handle(admin: StreamAdmin, method: str, path: str, body: bytes | None) -> Answer:
    """Answer one request under ``/api/``."""
    if path == "/api/openapi.json" and method == "GET":
        return 200, openapi()
    if path != PREFIX and not path.startswith(PREFIX + "/"):
        return 404, {"error": f"no such endpoint {path!r}; try {PREFIX}, /api/openapi.json"}
    sid = unquote(path[len(PREFIX) + 1 :]) if path != PREFIX else None
    try:
        return _dispatch(admin, method, sid, body)
    except AdminError as e:
        return e.status, {"error": str(e), "problems": [list(p) for p in e.problems]}
    except TimeoutError:
        return 503, {"error": "the supervisor did not apply the change in time; retry"}
    except Exception as e:  # logged by the supervisor; the client hears it failed
        return 500, {"error": f"the change failed: {redact_url(str(e))}"}


def _dispatch(admin: StreamAdmin, method: str, sid: str | None, body: bytes | None) -> Answer:
    if sid is None and method == "GET":
        return 200, {"streams": [shown(s) for s in admin.list_streams()]}
    if sid is None and method == "POST":
        return 201, shown(admin.add_stream(_json(body)))
    if sid is None or method == "POST":
        return 405, {"error": f"{method} not allowed here"}
    if method == "GET":
        stream = admin.get_stream(sid)
        if stream is None:
            return 404, {"error": f"no stream {sid!r}", "problems": [["", f"no stream {sid!r}"]]}
        return 200, shown(stream)
    if method == "PUT":
        return 200, shown(admin.update_stream(sid, _json(body)))
    if method == "DELETE":
        admin.remove_stream(sid)
        return 200, {"removed": sid}
    return 405, {"error": f"{method} not allowed here"}


def _json(body: bytes | None) -> dict[str, Any]:
    """The request's JSON object; AdminError 400/413/422 otherwise."""
    if body is None or not body.strip():
        raise AdminError(422, [("", "a JSON object (one stream, as in the pipeline file)")])
    if len(body) > MAX_BODY_BYTES:
        raise AdminError(413, [("", f"larger than {MAX_BODY_BYTES} bytes")])
    try:
        data = json.loads(body)
    except (ValueError, RecursionError) as e:
        raise AdminError(400, [("", f"invalid JSON: {e}")]) from None
    if not isinstance(data, dict):
        raise AdminError(422, [("", "a stream must be a JSON object")])
    return data


def openapi() -> dict[str, Any]:
    """OpenAPI 3.1 for ``/api/streams``, the stream schema taken from ``StreamConfig``."""
    schema = StreamConfig.model_json_schema(ref_template="#/components/schemas/{model}")
    schemas: dict[str, Any] = schema.pop("$defs", {})
    schemas["StreamConfig"] = schema
    schemas["Problem"] = {
        "type": "object",
        "required": ["error"],
        "properties": {
            "error": {"type": "string"},
            "problems": {
                "type": "array",
                "description": "[key path, reason] pairs, e.g. ['url', 'required key is missing']",
                "items": {"type": "array", "items": {"type": "string"}, "minItems": 2},
            },
        },
    }
    stream = {"$ref": "#/components/schemas/StreamConfig"}
    problem = {
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Problem"}}}
    }

    def answer(text: str, body: dict[str, Any] | None = None) -> dict[str, Any]:
        out: dict[str, Any] = {"description": text}
        if body is not None:
            out["content"] = {"application/json": {"schema": body}}
        return out

    errors = {
        "401": {"description": "missing or wrong token"},
        "404": {"description": "no such stream", **problem},
        "409": {"description": "the id is taken", **problem},
        "422": {"description": "invalid: nothing applied", **problem},
    }
    by_id = {"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}
    request = {"required": True, "content": {"application/json": {"schema": stream}}}
    return {
        "openapi": "3.1.0",
        "info": {"title": "streamd streams", "version": "1"},
        "security": [{"bearer": []}],
        "components": {
            "schemas": schemas,
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
        },
        "paths": {
            PREFIX: {
                "get": {"summary": "The running streams", "responses": {"200": answer(
                    "the streams", {"type": "object", "properties": {
                        "streams": {"type": "array", "items": stream}}})}},
                "post": {"summary": "Add a stream: its process starts", "requestBody": request,
                         "responses": {"201": answer("added", stream), **errors}},
            },
            PREFIX + "/{id}": {
                "parameters": [by_id],
                "get": {"summary": "One stream",
                        "responses": {"200": answer("the stream", stream), **errors}},
                "put": {"summary": "Replace a stream's configuration: zones and lines apply "
                        "in place (tracks kept), anything else restarts its process only",
                        "requestBody": request,
                        "responses": {"200": answer("changed", stream), **errors}},
                "delete": {"summary": "Remove a stream: its process stops",
                           "responses": {"200": answer("removed"), **errors}},
            },
        },
    }  # fmt: skip
