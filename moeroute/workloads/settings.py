"""The routing settings a captured file records beside its logits (``moeroute capture``), and how evaluations use
them as defaults for that file (docs/traces.md):

- ``k``: experts per token (the model's ``num_experts_per_tok``);
- ``score``: the score function, ``softmax`` or ``sigmoid`` (DeepSeek-V3);
- ``groups`` / ``group_topk``: group-limited routing (DeepSeek-V3's ``n_group`` / ``topk_group``);
- ``renormalize``: whether the top-k weights are renormalised (``norm_topk_prob``; Mixtral always does);
- ``routed_scaling``: the factor the weights are multiplied by (recorded; no router option uses it).

Stored as JSON under the safetensors metadata key ``moeroute.routing``, or for ``.pt`` files in a sidecar
``<file>.routing.json``. ``eval`` and sweeps take ``k`` from it unless given, and pass ``score=``, ``groups=``,
``group_topk=`` and ``renormalize=`` to a router only where the router accepts the option (checked by binding the
spec) and the spec does not set it already.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Any, Optional

from moeroute.core.errors import MoeRouteError
from moeroute.core.options import parse_spec

METADATA_KEY = "moeroute.routing"
SIDECAR_SUFFIX = ".routing.json"


@dataclass(frozen=True)
class RoutingSettings:
    """A model's routing settings (``None``: not known)."""

    k: Optional[int] = None
    score: Optional[str] = None
    groups: Optional[int] = None
    group_topk: Optional[int] = None
    renormalize: Optional[bool] = None
    routed_scaling: Optional[float] = None
    model_type: str = ""

    def router_options(self) -> dict[str, str]:
        """The router options these settings imply, as spec values (groups only when there are several)."""
        out: dict[str, str] = {}
        if self.score is not None:
            out["score"] = self.score
        if self.groups is not None and self.groups > 1:
            out["groups"] = str(self.groups)
            if self.group_topk is not None:
                out["group_topk"] = str(self.group_topk)
        if self.renormalize is not None:
            out["renormalize"] = "true" if self.renormalize else "false"
        return out

    def describe(self) -> str:
        parts = [f"{k}={v}" for k, v in asdict(self).items() if v not in (None, "") and k != "model_type"]
        return ", ".join(parts)

    def to_json(self) -> str:
        return json.dumps({k: v for k, v in asdict(self).items() if v not in (None, "")}, sort_keys=True)

    @classmethod
    def from_json(cls, text: str, where: str) -> "RoutingSettings":
        try:
            raw = json.loads(text)
        except ValueError:
            raise MoeRouteError(f"{where}: routing settings are not JSON") from None
        known = {f.name for f in fields(cls)}
        if not isinstance(raw, dict):
            raise MoeRouteError(f"{where}: routing settings must be a JSON object")
        settings = cls(**{k: v for k, v in raw.items() if k in known})
        if settings.score not in (None, "softmax", "sigmoid", "sqrt_softplus"):
            raise MoeRouteError(f"{where}: unknown score function {settings.score!r}")
        if settings.k is not None and (not isinstance(settings.k, int) or settings.k < 1):
            raise MoeRouteError(f"{where}: k must be an integer >= 1, got {settings.k!r}")
        return settings


def sidecar_path(path: "str | Path") -> Path:
    return Path(str(path) + SIDECAR_SUFFIX)


def read_settings(path: str, metadata: Optional[dict[str, str]] = None) -> Optional[RoutingSettings]:
    """The routing settings recorded with ``path`` (its safetensors ``metadata`` or its sidecar), or ``None``."""
    if metadata and METADATA_KEY in metadata:
        return RoutingSettings.from_json(metadata[METADATA_KEY], f"{path} (metadata {METADATA_KEY})")
    side = sidecar_path(path)
    if side.is_file():
        return RoutingSettings.from_json(side.read_text(encoding="utf-8"), str(side))
    return None


UNITS = (("score",), ("groups", "group_topk"), ("renormalize",))
"""Options passed together or not at all (a group count without its group top-k would be another rule)."""


def _binds(spec: str, options: dict[str, str]) -> bool:
    from moeroute.routers import bind_router

    try:
        bind_router(spec, **options)
    except MoeRouteError:
        return False
    return True


def with_settings(spec: str, settings: Optional[RoutingSettings]) -> str:
    """``spec`` plus the options of ``settings`` that the router accepts (checked by binding) and the spec does not
    set; canonical. Without settings, ``spec`` itself."""
    from moeroute.routers import bind_router

    if settings is None:
        return spec
    _, raw = parse_spec(spec)
    implied = settings.router_options()
    extra: dict[str, str] = {}
    for unit in UNITS:
        options = {k: implied[k] for k in unit if k in implied and k not in raw}
        if options and _binds(spec, {**extra, **options}):
            extra.update(options)
    return bind_router(spec, **extra).spec if extra else spec


def settings_metadata(settings: RoutingSettings) -> dict[str, Any]:
    """The safetensors metadata entry for ``settings``."""
    return {METADATA_KEY: settings.to_json()}
