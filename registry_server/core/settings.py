"""Server settings: one frozen pydantic model, read from ``CONESREG_SERVER_*`` once, here."""

from __future__ import annotations

import os
from pathlib import Path

from platformdirs import user_data_dir
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from conesreg.artifact import constants

_ENV_PREFIX = "CONESREG_SERVER_"
#: Settings that may come from the environment, by field name (``CONESREG_SERVER_<NAME>``).
_ENV_FIELDS = (
    "data",
    "database_url",
    "max_blob_bytes",
    "max_manifest_bytes",
    "max_hub_commit_bytes",
    "max_target_numel",
    "orphan_age_seconds",
    "chunk_timeout_seconds",
    "registry_name",
    "blobs",
    "blob_redirect",
    "blob_redirect_seconds",
)


class Settings(BaseModel):
    """Where the server keeps its data and the limits it enforces.

    Example:
        >>> s = Settings(data=Path("/srv/conesreg"))
        >>> s.effective_database_url
        'sqlite:////srv/conesreg/registry.db'
    """

    model_config = ConfigDict(frozen=True, extra="forbid")

    data: Path = Field(
        default_factory=lambda: Path(user_data_dir("conesreg")) / "server",
        description="folder of the SQLite database (by default) and the blob store",
    )
    database_url: str | None = Field(
        default=None, description="SQLAlchemy URL; default: SQLite at DATA/registry.db"
    )
    max_blob_bytes: int = Field(default=256 << 20, gt=0)
    max_manifest_bytes: int = Field(default=1 << 20, gt=0)
    max_hub_commit_bytes: int = Field(
        default=1 << 30,
        gt=0,
        description="the largest Hub commit body (NDJSON, files base64-encoded inline)",
    )
    max_target_numel: int = Field(
        # A factory: the client's ceiling is read when the settings are made, not at import.
        default_factory=lambda: constants.MAX_TARGET_NUMEL,
        gt=0,
        description="the most target scalars (mask.total) a published concept may have; "
        "manifests and masks claiming more are refused at publish (422). Default: the client's "
        "CONESREG_MAX_TARGET_NUMEL (2**32, above any supported base model's whole UNet), which "
        "also caps it",
    )
    orphan_age_seconds: float = Field(
        default=24 * 3600,
        ge=0,
        description="uploaded blobs that no version references are deleted after this long",
    )
    chunk_timeout_seconds: float = Field(
        default=30.0, gt=0, description="an upload that sends nothing for this long is dropped"
    )
    blobs: str | None = Field(
        default=None,
        description="where blobs live: s3://BUCKET[/PREFIX] (endpoint and credentials: boto3's "
        "AWS_* settings), or a folder; default: DATA/blobs",
    )
    blob_redirect: bool = Field(
        default=False,
        description="answer blob GETs with a redirect to a short-lived presigned URL of the "
        "object store (S3 only), so that bytes flow from the store, not through the server",
    )
    blob_redirect_seconds: int = Field(default=300, gt=0, le=7 * 24 * 3600)
    registry_name: str = Field(
        default="server",
        description="the `registry` field of index entries (clients replace it by their alias)",
    )

    @field_validator("blobs")
    @classmethod
    def _blob_store(cls, value: str | None) -> str | None:
        if value and "://" in value:
            scheme, _, rest = value.partition("://")
            if scheme != "s3" or not rest.split("/", 1)[0]:
                raise ValueError(f"{value!r} is no s3://BUCKET[/PREFIX] URL (nor a folder)")
        return value

    @model_validator(mode="after")
    def _redirect_needs_s3(self) -> Settings:
        if self.blob_redirect and not (self.blobs or "").startswith("s3://"):
            raise ValueError("blob_redirect needs an s3:// blob store (--blobs s3://BUCKET)")
        return self

    @property
    def effective_database_url(self) -> str:
        """The database URL in use (the SQLite default spelled out)."""
        return self.database_url or f"sqlite:///{self.data / 'registry.db'}"

    @property
    def blob_dir(self) -> Path:
        """The default blob folder (when ``blobs`` is not set)."""
        return self.data / "blobs"

    def to_env(self) -> dict[str, str]:
        """These settings as ``CONESREG_SERVER_*`` variables (the fields :meth:`from_env`
        reads), for worker processes that build their own.

        Example:
            >>> Settings(data=Path("/srv/r")).to_env()["CONESREG_SERVER_DATA"]
            '/srv/r'
        """
        values = self.model_dump(include=set(_ENV_FIELDS), exclude_none=True)
        return {_ENV_PREFIX + k.upper(): str(v) for k, v in values.items()}

    @classmethod
    def from_env(cls, **overrides: object) -> Settings:
        """Settings from ``CONESREG_SERVER_<FIELD>`` variables, then ``overrides`` (not None).

        Args:
            overrides: field values that win over the environment (None means "not given").

        Returns:
            The validated settings.

        Raises:
            pydantic.ValidationError: a value of the wrong type or out of range.

        Example:
            >>> Settings.from_env(data=Path("/tmp/reg")).data
            PosixPath('/tmp/reg')
        """
        values: dict[str, object] = {}
        for name in _ENV_FIELDS:
            raw = os.environ.get(_ENV_PREFIX + name.upper())
            if raw:
                values[name] = raw
        # CONESREG_SERVER_DATABASE is the short name (as --database); it wins over the old one.
        if raw := os.environ.get(_ENV_PREFIX + "DATABASE"):
            values["database_url"] = raw
        values.update({k: v for k, v in overrides.items() if v is not None})
        return cls.model_validate(values)
