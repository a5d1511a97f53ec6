"""The OpenAPI document as served: FastAPI's, with what FastAPI cannot say said.

- A parameter (query, header, path) is never null: leaving it out is how a client says
  "none", and a client that serialized null would send the text "null". FastAPI writes an
  optional parameter as `anyOf: [X, null]`; it is written as X.
- A request that fails its schema is answered 400 (app/main.py), as OpenAI answers it, so the
  422 FastAPI declares on every operation with parameters is removed with its schemas.
- Links from the operations that create or list objects to those that read, change or delete
  them, so a client generator or a stateful fuzzer can follow an id from one to the next.
- An upload's announced size is bounded by this server's cap (a setting).
"""

from __future__ import annotations

from typing import Any

from fastapi import FastAPI
from fastapi.openapi.utils import get_openapi

CREATED = "$response.body#/id"
FIRST_LISTED = "$response.body#/data/0/id"
SAME_JOB = "$request.path.fine_tuning_job_id"
JOB = "/v1/fine_tuning/jobs/{fine_tuning_job_id}"

# (operation whose answer names an object, path whose operations take it, their parameters).
LINKS: tuple[tuple[str, str, dict[str, str]], ...] = (
    *(
        (source, target, {"file_id": value})
        for source, value in (("POST /v1/files", CREATED), ("GET /v1/files", FIRST_LISTED))
        for target in ("/v1/files/{file_id}", "/v1/files/{file_id}/content")
    ),
    *(
        ("POST /v1/uploads", f"/v1/uploads/{{upload_id}}/{action}", {"upload_id": CREATED})
        for action in ("parts", "complete", "cancel")
    ),
    *(
        (source, target, {"fine_tuning_job_id": value})
        for source, value in (
            ("POST /v1/fine_tuning/jobs", CREATED),
            ("GET /v1/fine_tuning/jobs", FIRST_LISTED),
        )
        for target in (
            JOB,
            *(f"{JOB}/{action}" for action in ("cancel", "pause", "resume", "events")),
            *(f"{JOB}/{part}" for part in ("checkpoints", "adapter", "exports")),
        )
    ),
    (
        f"GET {JOB}/checkpoints",
        f"{JOB}/checkpoints/{{checkpoint_id}}/adapter",
        {"fine_tuning_job_id": SAME_JOB, "checkpoint_id": FIRST_LISTED},
    ),
    *(
        (source, target, {"fine_tuning_job_id": SAME_JOB, "export_id": value})
        for source, value in (
            (f"POST {JOB}/exports", CREATED),
            (f"GET {JOB}/exports", FIRST_LISTED),
        )
        for target in (f"{JOB}/exports/{{export_id}}", f"{JOB}/exports/{{export_id}}/content")
    ),
    ("GET /v1/models", "/v1/models/{model}", {"model": FIRST_LISTED}),
)


def _operations(schema: dict[str, Any]) -> list[dict[str, Any]]:
    return [
        operation
        for path_item in schema.get("paths", {}).values()
        for operation in path_item.values()
        if isinstance(operation, dict) and "responses" in operation
    ]


def _not_null(schema: dict[str, Any]) -> dict[str, Any]:
    """`anyOf: [X, {"type": "null"}]` as X, keeping the outer title and default."""
    variants = schema.get("anyOf")
    if not variants:
        return schema
    kept = [variant for variant in variants if variant.get("type") != "null"]
    if len(kept) != 1:
        return schema
    outer = {key: value for key, value in schema.items() if key != "anyOf"}
    if outer.get("default", 0) is None:
        del outer["default"]
    return {**kept[0], **outer}


def _add_links(schema: dict[str, Any]) -> None:
    paths = schema["paths"]
    for source, target, parameters in LINKS:
        method, path = source.split(" ", 1)
        responses = paths[path][method.lower()]["responses"]
        links = responses["200"].setdefault("links", {})
        for operation in paths[target].values():
            links[operation["operationId"]] = {
                "operationId": operation["operationId"],
                "parameters": parameters,
            }


def _document_upload_cap(schema: dict[str, Any], max_upload_bytes: int) -> None:
    """An upload's announced size may not pass this server's upload cap (413 beyond)."""
    upload = schema["components"]["schemas"]["UploadCreate"]["properties"]["bytes"]
    upload["maximum"] = max_upload_bytes


def openapi_document(app: FastAPI) -> dict[str, Any]:
    """The app's OpenAPI document, built once."""
    if app.openapi_schema:
        return app.openapi_schema
    schema = get_openapi(
        title=app.title,
        version=app.version,
        description=app.description,
        routes=app.routes,
    )
    for operation in _operations(schema):
        operation["responses"].pop("422", None)
        for parameter in operation.get("parameters", []):
            parameter["schema"] = _not_null(parameter.get("schema", {}))
    components = schema.get("components", {}).get("schemas", {})
    for unused in ("HTTPValidationError", "ValidationError"):
        components.pop(unused, None)
    _add_links(schema)
    _document_upload_cap(schema, app.state.settings.max_upload_bytes)
    app.openapi_schema = schema
    return schema
