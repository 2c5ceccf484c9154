"""Server settings: defaults < YAML file < ``GUARD_*`` environment variables < command-line flags.

Validated once at start-up by pydantic; every error names the field (``upstream.url``) and how to
fix it. The settings object is immutable and passed explicitly to ``build_app``.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Literal, Mapping

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from guard.errors import ConfigError


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class ApiKey(_Strict):
    name: str = Field(min_length=1, description="shown in audit logs, never the key itself")
    key: str = Field(min_length=8)


class UpstreamSettings(_Strict):
    kind: Literal["local", "vllm"] = "local"
    url: str | list[str] | None = Field(None, description="base URL of the vLLM OpenAI server, e.g. http://127.0.0.1:8011; "
                                        "several replicas as a list or comma-separated")
    model: str | None = Field(None, description="model name the upstream serves; discovered from /v1/models if unset")
    api_key: str | None = None
    connect_timeout_s: float = Field(5.0, gt=0)
    read_timeout_s: float = Field(300.0, gt=0, description="max seconds between two bytes from the upstream")

    @model_validator(mode="after")
    def _url_for_vllm(self) -> "UpstreamSettings":
        if self.kind == "vllm" and not self.url:
            raise ValueError("upstream.kind is 'vllm' but upstream.url is missing: set --upstream-url http://HOST:PORT")
        for url in self.urls:
            if not url.startswith(("http://", "https://")):
                raise ValueError(f"upstream.url {url!r} must start with http:// or https://")
        return self

    @property
    def urls(self) -> list[str]:
        if not self.url:
            return []
        items = self.url.split(",") if isinstance(self.url, str) else self.url
        return [u.strip() for u in items if u.strip()]


class LocalEngineSettings(_Strict):
    max_concurrency: int = Field(1, ge=1, description="generations running at once in the local engine")
    max_queue: int = Field(64, ge=0, description="requests waiting beyond that; more get 429")
    threads: int | None = Field(None, ge=1, description="torch intra-op threads (default: torch's choice)")
    device: str = Field("auto", description="auto (a CUDA GPU when visible, else the CPU), cpu, cuda or cuda:N")


class Settings(_Strict):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=0, le=65535)
    model: str = Field("default", description="served model: 'default' (bundled SmolLM2), a cached name, a folder or a hub id")
    served_model_name: str | None = Field(None, description="name clients use in 'model'; derived from model if unset")
    upstream: UpstreamSettings = UpstreamSettings()
    local: LocalEngineSettings = LocalEngineSettings()
    policy: Path | None = Field(None, description="policy YAML; without one every request passes")
    api_keys: tuple[ApiKey, ...] = ()
    admin_api_key: str | None = Field(None, min_length=8, description="enables /admin/* (policy reload)")
    metrics_api_key: str | None = Field(None, min_length=8, description="a key for /metrics only (Prometheus "
                                        "bearer_token); the admin key is accepted too; with neither, /metrics is off")
    max_body_bytes: int = Field(4 * 1024 * 1024, ge=1024)
    body_read_timeout_s: float = Field(30.0, gt=0, le=3600, description="a request body must arrive within this "
                                       "many seconds of its headers; a slower client gets 408 and is disconnected")
    header_timeout_s: float = Field(75.0, gt=0, le=3600, description="a connection must deliver a complete request "
                                    "head within this many seconds of opening (or of its previous response), else "
                                    "it is closed; also the idle keep-alive timeout, so keep it above a load "
                                    "balancer's idle timeout (often 60 s)")
    max_tokens_limit: int = Field(4096, ge=1, description="largest max_tokens a client may ask for")
    max_n: int = Field(8, ge=1, le=128, description="most choices (n) one request may ask for; each is a "
                       "generation, so n multiplies a request's cost (vLLM itself has no limit)")
    max_inflight: int = Field(256, ge=1, description="generation requests in flight at once; more get 429 + Retry-After")
    audit_prompts: bool = Field(False, description="include the prompt text in the audit line of flagged requests")
    shutdown_timeout_s: float = Field(30.0, ge=0, le=3600, description="on SIGTERM, how long streams in flight may run on")
    debug: bool = Field(False, description="show target ids and detector scores in responses")
    log_level: Literal["debug", "info", "warning", "error"] = "info"

    @field_validator("api_keys", mode="before")
    @classmethod
    def _keys_from_strings(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = [v for v in value.split(",") if v.strip()]
        if isinstance(value, (list, tuple)):
            out = []
            for i, item in enumerate(value):
                if isinstance(item, str):
                    name, _, key = item.strip().rpartition(":")
                    out.append({"name": name or f"key{i}", "key": key})
                else:
                    out.append(item)
            return out
        return value


_ENV_PREFIX = "GUARD_"
# Env var -> dotted settings path. Explicit, so a typo'd variable is not silently half-applied.
_ENV_FIELDS = {
    "HOST": "host", "PORT": "port", "MODEL": "model", "SERVED_MODEL_NAME": "served_model_name",
    "POLICY": "policy", "API_KEYS": "api_keys", "ADMIN_API_KEY": "admin_api_key", "DEBUG": "debug", "LOG_LEVEL": "log_level",
    "METRICS_API_KEY": "metrics_api_key", "BODY_READ_TIMEOUT_S": "body_read_timeout_s", "HEADER_TIMEOUT_S": "header_timeout_s",
    "MAX_BODY_BYTES": "max_body_bytes", "MAX_INFLIGHT": "max_inflight", "AUDIT_PROMPTS": "audit_prompts", "MAX_TOKENS_LIMIT": "max_tokens_limit", "MAX_N": "max_n",
    "SHUTDOWN_TIMEOUT_S": "shutdown_timeout_s",
    "UPSTREAM": "upstream.kind", "UPSTREAM_URL": "upstream.url", "UPSTREAM_MODEL": "upstream.model",
    "UPSTREAM_API_KEY": "upstream.api_key", "UPSTREAM_READ_TIMEOUT_S": "upstream.read_timeout_s",
    "UPSTREAM_CONNECT_TIMEOUT_S": "upstream.connect_timeout_s",
    "MAX_CONCURRENCY": "local.max_concurrency", "MAX_QUEUE": "local.max_queue", "THREADS": "local.threads", "DEVICE": "local.device",
}


def _set_dotted(data: dict[str, Any], dotted: str, value: Any) -> None:
    *parents, leaf = dotted.split(".")
    node = data
    for part in parents:
        node = node.setdefault(part, {})
        if not isinstance(node, dict):
            raise ConfigError(f"expected a mapping at {part}", param=dotted)
    node[leaf] = value


def env_overrides(environ: Mapping[str, str]) -> dict[str, str]:
    """``GUARD_*`` variables as dotted paths; an unknown ``GUARD_`` variable is an error, not ignored."""
    out: dict[str, str] = {}
    # Not settings: read by guard.paths and by the test suite's vLLM fixture.
    ignored = {"GUARD_CACHE_DIR", "GUARD_DATA_DIR", "GUARD_CONFIG", "GUARD_VLLM_URL", "GUARD_VLLM_PYTHON"}
    for name, value in environ.items():
        if not name.startswith(_ENV_PREFIX) or name in ignored:
            continue
        field = _ENV_FIELDS.get(name[len(_ENV_PREFIX):])
        if field is None:
            known = ", ".join(_ENV_PREFIX + k for k in sorted(_ENV_FIELDS))
            raise ConfigError(f"unknown environment variable {name}; known: {known}", param=name)
        out[field] = value
    return out


def format_validation_error(exc: ValidationError, source: str) -> ConfigError:
    lines = []
    first_loc = None
    for err in exc.errors():
        loc = ".".join(str(p) for p in err["loc"]) or "(top level)"
        first_loc = first_loc or loc
        msg = err["msg"].removeprefix("Value error, ")
        lines.append(f"{loc}: {msg}")
    return ConfigError(f"invalid {source}: " + "; ".join(lines), param=first_loc)


def load_yaml_mapping(path: Path, what: str) -> dict[str, Any]:
    try:
        text = Path(path).read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError(f"cannot read {what} {path}: {exc.strerror}", param=what) from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise ConfigError(f"{what} {path} is not valid YAML: {exc}", param=what) from None
    if data is None:
        return {}
    if not isinstance(data, dict):
        raise ConfigError(f"{what} {path} must be a mapping at the top level, got {type(data).__name__}", param=what)
    return data


def load_settings(
    config_path: Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    environ: Mapping[str, str] | None = None,
) -> Settings:
    """Merge the layers and validate. ``overrides`` are dotted paths from flags (None = not given)."""
    data: dict[str, Any] = load_yaml_mapping(config_path, "config") if config_path else {}
    base_dir = Path(config_path).resolve().parent if config_path else None
    layers = [env_overrides(os.environ if environ is None else environ), dict(overrides or {})]
    for layer in layers:
        for dotted, value in layer.items():
            if value is not None:
                _set_dotted(data, dotted, value)
    if base_dir and isinstance(data.get("policy"), str) and not Path(data["policy"]).is_absolute():
        # A relative policy path in a config file is relative to that file.
        if "policy" not in {k for layer in layers for k, v in layer.items() if v is not None}:
            data["policy"] = str(base_dir / data["policy"])
    try:
        return Settings.model_validate(data)
    except ValidationError as exc:
        raise format_validation_error(exc, f"config{f' {config_path}' if config_path else ''}") from None
