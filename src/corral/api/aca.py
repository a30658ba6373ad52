"""Wire shapes of the Azure Container Apps dynamic-sessions API that Corral's façade speaks
(``/aca/{pool}/...``, :mod:`corral.server.routes.aca`).

Two API versions, as the clients send them:

* ``2024-02-02-preview`` (Semantic Kernel's Python ``SessionsPythonTool``; also what a
  request without ``api-version`` gets): bodies wrapped in ``properties``, files listed as
  ``{"value": [{"properties": {"filename", "size", ...}}]}``.
* ``2024-10-02-preview`` (the .NET ``SessionsPythonPlugin``, 1.49 and later): flat
  execution bodies and ``{"name", "sizeInBytes", "lastModifiedAt", "type", ...}`` entries.

Only what a client reads is guaranteed; the extra fields follow Azure's documented
responses. No I/O here.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

#: The newest API version served; requests naming it (or a later one) get its shapes.
V2 = "2024-10-02-preview"
V1 = "2024-02-02-preview"
#: Longest cell timeout a request may ask for, as in Azure.
MAX_EXECUTION_TIMEOUT = 220


class _Request(BaseModel):
    # Clients add fields of their own (``identifier``, ``sanitizeInput``): ignored.
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True)


class _Response(BaseModel):
    model_config = ConfigDict(extra="ignore", frozen=True, populate_by_name=True,
                              serialize_by_alias=True)


class ExecutionProperties(_Request):
    """What to run. Values are matched without regard to case (the .NET client sends
    ``"Inline"``/``"Synchronous"``, the Python one ``"inline"``/``"synchronous"``)."""

    code: str = Field(max_length=512 * 1024)
    code_input_type: str = Field(default="inline", alias="codeInputType", max_length=32)
    execution_type: str = Field(default="synchronous", alias="executionType", max_length=32)
    #: Clamped to 1..:data:`MAX_EXECUTION_TIMEOUT` rather than refused.
    timeout_in_seconds: int = Field(default=100, alias="timeoutInSeconds")


class ExecuteRequestV1(_Request):
    """``POST /aca/{pool}/code/execute`` (2024-02-02-preview)."""

    properties: ExecutionProperties


class ExecutionResultV1(_Response):
    """``status`` is ``Success``, or ``Failure`` when the code raised (the traceback is in
    ``stderr``, the error's one-line form in ``result``). ``result`` is the value of the
    last expression as text, or an image ``{"type": "image", "format": "png",
    "base64_data": ...}`` when that is all the cell showed."""

    status: Literal["Success", "Failure"]
    result: Any = None
    stdout: str
    stderr: str
    execution_time_in_milliseconds: int = Field(alias="executionTimeInMilliseconds")


class ExecuteResponseV1(_Response):
    properties: ExecutionResultV1


class ExecutionDetailsV2(_Response):
    stdout: str
    stderr: str
    execution_result: Any = Field(default=None, alias="executionResult")
    execution_time_in_milliseconds: int = Field(alias="executionTimeInMilliseconds")


class ExecutionV2(_Response):
    """``POST /aca/{pool}/executions`` (2024-10-02-preview): ``status`` is ``Succeeded``,
    or ``Failed`` when the code raised."""

    id: str
    identifier: str
    session_id: str = Field(alias="sessionId")
    execution_type: str = Field(alias="executionType")
    status: Literal["Succeeded", "Failed"]
    result: ExecutionDetailsV2


class FileV1(_Response):
    """A file under ``/mnt/data``; ``filename`` is relative to it."""

    filename: str
    size: int
    last_modified_time: str = Field(alias="lastModifiedTime")


class FileEntryV1(_Response):
    properties: FileV1


class FileListV1(_Response):
    """``GET /aca/{pool}/files`` and the answer to an upload (2024-02-02-preview)."""

    value: list[FileEntryV1]


class FileV2(_Response):
    """A file or directory; ``name`` is relative to the listed directory."""

    name: str
    size_in_bytes: int | None = Field(alias="sizeInBytes")
    last_modified_at: str = Field(alias="lastModifiedAt")
    content_type: str | None = Field(default=None, alias="contentType")
    type: Literal["File", "Directory"]


class FileListV2(_Response):
    value: list[FileV2]
