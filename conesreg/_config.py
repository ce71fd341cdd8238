"""The user's config file (TOML at ``constants.CONFIG_FILE``): registries and defaults.

Example file::

    default_namespace = "acme"
    default_registry = "local"
    offline = false

    [registries.local]
    kind = "local"
    path = "/home/me/.local/share/conesreg/registry"
"""

from __future__ import annotations

import tomllib
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from . import constants
from ._storage import atomic_write
from .artifact import constants as artifact_constants
from .artifact._names import check_name
from .errors import ConesregError, ConfigError


class RegistryConfig(BaseModel):
    """One named source."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    kind: Literal["local", "http", "hub"] = "local"
    path: str | None = None
    url: str | None = None
    #: Bearer token of an http registry; the file is written 0600 and the CLI never prints it.
    token: str | None = None


class Config(BaseModel):
    """Everything the config file may hold; unknown keys are an error, not silently ignored."""

    model_config = ConfigDict(extra="forbid", defer_build=True)

    default_namespace: str = artifact_constants.DEFAULT_NAMESPACE
    default_registry: str = constants.DEFAULT_REGISTRY
    offline: bool = False
    #: The base model of ``generate`` and ``load_pipeline`` when none is given.
    default_base: str | None = None
    registries: dict[str, RegistryConfig] = Field(default_factory=dict)

    def registry(self, name: str | None) -> tuple[str, RegistryConfig]:
        """The (name, config) of a registry alias; ``None`` means the default registry."""
        name = name or self.default_registry
        if name in self.registries:
            return name, self.registries[name]
        if name == constants.DEFAULT_REGISTRY:
            return name, RegistryConfig(kind="local", path=str(constants.REGISTRY_DIR))
        if name == constants.HUB_REGISTRY:
            return name, RegistryConfig(kind="hub")
        known = ", ".join(
            sorted({constants.DEFAULT_REGISTRY, constants.HUB_REGISTRY, *self.registries})
        )
        raise ConfigError(
            f"unknown registry {name!r} (known: {known})",
            hint="add it with `conesreg config registry add NAME URL`",
        )

    def base_model(self) -> str | None:
        """The configured base model: ``CONESREG_BASE_MODEL``, then the config's
        ``default_base``; None if neither is set (``load_pipeline`` then takes the bundled mini
        model)."""
        return constants.BASE_MODEL or self.default_base

    @property
    def is_offline(self) -> bool:
        return constants.OFFLINE or self.offline


SETTABLE = ("default_namespace", "default_registry", "offline", "default_base")


def load_config(path: Path | None = None) -> Config:
    """Read the config file; a missing file means all defaults.

    Raises:
        ConfigError: the file is not valid TOML or has unknown keys or bad values.
    """
    path = path or constants.CONFIG_FILE
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        return Config()
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise ConfigError(f"cannot read config file {path}: {e}") from None
    try:
        return Config.model_validate(data)
    except ValidationError as e:
        err = e.errors()[0]
        where = ".".join(str(p) for p in err["loc"])
        raise ConfigError(f"config file {path}: {where}: {err['msg']}") from None


def save_config(config: Config, path: Path | None = None) -> None:
    """Write the config atomically, readable by the owner only (it may hold registry tokens)."""
    import tomli_w

    path = path or constants.CONFIG_FILE
    data = config.model_dump(mode="json", exclude_none=True)
    atomic_write(path, tomli_w.dumps(data).encode(), mode=0o600)  # never readable by others


def set_value(config: Config, key: str, value: str) -> Config:
    """A copy of ``config`` with ``key`` set from its text form.

    Raises:
        ConfigError: unknown key or invalid value.
    """
    if key not in SETTABLE:
        raise ConfigError(
            f"unknown config key {key!r}", hint=f"settable keys: {', '.join(SETTABLE)}"
        )
    parsed: Any = value
    if key == "offline":
        if value.lower() not in {"true", "false", "1", "0", "yes", "no"}:
            raise ConfigError(f"offline must be true or false, not {value!r}")
        parsed = value.lower() in {"true", "1", "yes"}
    elif key != "default_base":
        try:
            check_name(value, what=key)
        except ConesregError as e:
            raise ConfigError(e.message, hint=e.hint) from None
    if key == "default_registry":
        config.registry(value)  # must exist
    return config.model_copy(update={key: parsed})


def add_registry(
    config: Config, name: str, url: str, *, kind: Literal["http", "hub"] = "http"
) -> Config:
    """A copy of ``config`` with a registry ``name`` at ``url`` (replacing the URL of one already
    there, and keeping its token only if the URL is unchanged).

    Args:
        config: the config to extend.
        name: the alias.
        url: a registry_server's URL (``http``) or a Hub endpoint (``hub``).
        kind: ``http`` for a registry_server, ``hub`` for a Hugging Face Hub endpoint.

    Raises:
        ConfigError: a bad name, a URL that is not http(s), or a reserved name (``local``).

    Example:
        >>> add_registry(Config(), "team", "https://concepts.acme.dev").registries["team"].kind
        'http'
    """
    from urllib.parse import urlsplit

    try:
        check_name(name, what="registry name")
    except ConesregError as e:
        raise ConfigError(e.message, hint=e.hint) from None
    if name == constants.DEFAULT_REGISTRY:
        raise ConfigError(
            f"{name!r} is the embedded registry's name", hint="pick another name, e.g. team"
        )
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise ConfigError(
            f"{url!r} is not an http(s) URL", hint="e.g. https://concepts.example.com"
        )
    old = config.registries.get(name)
    token = old.token if old is not None and old.url == url.rstrip("/") else None
    reg = RegistryConfig(kind=kind, url=url.rstrip("/"), token=token)
    return config.model_copy(update={"registries": {**config.registries, name: reg}})


def set_token(config: Config, name: str, token: str) -> Config:
    """A copy of ``config`` with ``token`` stored for the http registry ``name``.

    Raises:
        ConfigError: no http registry of that name, or an empty token.
    """
    reg = config.registries.get(name)
    if name == constants.HUB_REGISTRY or (reg is not None and reg.kind == "hub"):
        raise ConfigError(
            f"{name!r} is a Hugging Face Hub registry: conesreg uses huggingface_hub's own login",
            hint="run `hf auth login` or set HF_TOKEN",
        )
    if reg is None or reg.kind != "http":
        raise ConfigError(
            f"no http registry named {name!r}",
            hint="add it first: `conesreg config registry add NAME URL`",
        )
    token = token.strip()
    if not token or any(c.isspace() for c in token):
        raise ConfigError("the token is empty or has spaces", hint="paste the token exactly")
    new = reg.model_copy(update={"token": token})
    return config.model_copy(update={"registries": {**config.registries, name: new}})
