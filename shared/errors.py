"""The one error type for bad client input, shared by validation and the web layer."""

from __future__ import annotations


class InputError(Exception):
    """A request the client must fix: carries the HTTP status, an error code and the field."""

    def __init__(
        self,
        message: str,
        *,
        field: str | None = None,
        status: int = 400,
        code: str = "invalid",
        retry_after: int | None = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.field = field
        self.status = status
        self.code = code
        self.retry_after = retry_after

    def as_dict(self) -> dict:
        body = {"code": self.code, "message": self.message}
        if self.field:
            body["field"] = self.field
        return {"error": body}
