"""One error type per failure a client can act on, rendered in one place (app/main.py).

The envelope is OpenAI's: {"error": {"message", "type", "param", "code"}}, with the status
codes the openai SDK maps to its exception classes.
"""

from __future__ import annotations

from typing import Any, ClassVar


class ApiError(Exception):
    """A failure the client caused or can act on."""

    status_code: ClassVar[int] = 400
    error_type: ClassVar[str] = "invalid_request_error"
    code: str = "invalid_request"

    def __init__(
        self,
        message: str,
        *,
        param: str | None = None,
        code: str | None = None,
        extra: dict[str, Any] | None = None,
        headers: dict[str, str] | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.param = param
        if code is not None:
            self.code = code
        self.extra = extra or {}
        self.headers = headers

    def body(self) -> dict[str, Any]:
        error = {"message": self.message, "type": self.error_type, "param": self.param}
        return {"error": {**error, "code": self.code, **self.extra}}


class InvalidRequest(ApiError):
    code = "invalid_request"


class DatasetInvalid(ApiError):
    code = "invalid_dataset"


class ModelNotFound(ApiError):
    code = "model_not_found"


class InvalidJobState(ApiError):
    status_code = 409
    code = "invalid_job_state"


class IdempotencyConflict(ApiError):
    status_code = 409
    code = "idempotency_key_reused"


class Unauthenticated(ApiError):
    status_code = 401
    error_type = "authentication_error"
    code = "invalid_api_key"


class PermissionDenied(ApiError):
    """The object is visible to the caller but not theirs to change (a catalog model)."""

    status_code = 403
    error_type = "permission_error"
    code = "permission_denied"


class NotFound(ApiError):
    status_code = 404
    code = "not_found"


class FileNotFound(NotFound):
    code = "file_not_found"


class JobNotFound(NotFound):
    code = "job_not_found"


class CheckpointNotFound(NotFound):
    code = "checkpoint_not_found"


class ExportNotFound(NotFound):
    code = "export_not_found"


class UploadNotFound(NotFound):
    code = "upload_not_found"


class InvalidUploadState(ApiError):
    """Parts go only to a pending upload, and only a pending upload completes or cancels."""

    status_code = 409
    code = "invalid_upload_state"


class CursorNotFound(NotFound):
    """An `after` cursor that names no object in the list (a deleted one included)."""

    code = "cursor_not_found"

    def __init__(self, message: str, *, param: str = "after") -> None:
        super().__init__(message, param=param)


class WebhookNotFound(NotFound):
    code = "webhook_not_found"


class ArtifactNotFound(NotFound):
    """The row exists but its files do not (removed, or not written yet)."""

    code = "artifact_not_found"


class InvalidExportState(ApiError):
    status_code = 409
    code = "invalid_export_state"


class InvalidRange(ApiError):
    """A Range header that is not `bytes=first-last`, `bytes=first-` or `bytes=-suffix`."""

    code = "invalid_range"


class RangeNotSatisfiable(ApiError):
    """A Range that starts past the end of the object; Content-Range gives its size."""

    status_code = 416
    code = "range_not_satisfiable"

    def __init__(self, size: int) -> None:
        super().__init__(
            f"the requested range starts past the end of the content ({size} bytes)",
            param="Range",
            headers={"content-range": f"bytes */{size}"},
        )


class PayloadTooLarge(ApiError):
    status_code = 413
    code = "file_too_large"


class Unavailable(ApiError):
    status_code = 503
    error_type = "server_error"
    code = "service_unavailable"


class ServiceBusy(Unavailable):
    """The database had no connection or lock free in time; a retry shortly will do."""

    code = "service_busy"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class AdapterUnavailable(ApiError):
    """The inference server could not load a fine-tuned model's adapter: our side's fault."""

    status_code = 502
    error_type = "server_error"
    code = "adapter_load_failed"


class InsufficientStorage(ApiError):
    """The server's disk is full: nothing the client sent was kept."""

    status_code = 507
    error_type = "server_error"
    code = "insufficient_storage"


class RateLimited(ApiError):
    """Too many requests with one key; Retry-After says when to try again."""

    status_code = 429
    error_type = "requests"
    code = "rate_limit_exceeded"


class TooManyConcurrentUploads(ApiError):
    """One organization is already sending as many uploads as it may at once."""

    status_code = 429
    error_type = "requests"
    code = "too_many_concurrent_uploads"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, param="file", headers={"Retry-After": str(retry_after_s)})


class TooManyConcurrentGenerations(ApiError):
    """One organization already has as many chat or completion requests running as it may."""

    status_code = 429
    error_type = "requests"
    code = "too_many_concurrent_requests"

    def __init__(self, message: str, *, retry_after_s: int = 1) -> None:
        super().__init__(message, headers={"Retry-After": str(retry_after_s)})


class QuotaExceeded(ApiError):
    """An organization's limit (jobs at once, stored bytes, files); retrying will not help
    until something is cancelled or deleted, so clients are told not to retry."""

    status_code = 429
    error_type = "insufficient_quota"
    code = "quota_exceeded"

    def __init__(self, message: str, *, param: str | None = None, code: str | None = None) -> None:
        super().__init__(message, param=param, code=code, headers={"x-should-retry": "false"})
