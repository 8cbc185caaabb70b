"""From a parsed request to a ready `Fusion`: which panel, which judge, which options.

`model` picks the target: `fusion` (the default preset), `fusion/<preset>`, or a plain
`provider:model` (passthrough: a one-member Fusion, so the judge is skipped). Everything
the request names is checked before anything is sent upstream, and a refusal names its
field: specs here, options by the engine (`UsageError.option`, mapped back to where the
request set it). Which preset, judge and mode apply is the engine's rule (`plan.select`).
Requests name configured providers only, never URLs, and `local:` catalogue models only,
never files.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

from ..config import Config, Preset, parse_spec
from ..errors import ConfigError, UsageError
from ..fusion import DEPTH_HEADER, Fusion, ProviderPool
from ..options import EFFORT_OFF, FusionOptions
from ..plan import ADAPTIVE_OPTIONS, select
from ..providers.local.catalog import CATALOG
from .errors import ApiError, bad_request, usage_error
from .schemas import ChatRequest
from .settings import ServerSettings

_URLISH = re.compile(r"://|^//|^[a-z][a-z0-9+.-]*:/", re.I)
# Options that mean nothing for a single member (and quorum would fail validation there).
_PANEL_ONLY = ("quorum", "rounds", "fallback_judge", "judge_temperature", *ADAPTIVE_OPTIONS)


@dataclass(slots=True)
class Prepared:
    fusion: Fusion
    request: ChatRequest
    preset: str | None  # the preset the panel came from, if any (for traces)
    passthrough: bool  # one member, no judge: its tokens can be streamed as they come
    owner: str | None = None  # the id of the key that asked (server/auth.py), for its trace


def parse_depth(values: list[str], settings: ServerSettings) -> int:
    """The incoming X-Fusion-Depth (every value of it: a second one, which a proxy could
    have added or a client smuggled past one, is refused rather than one of them chosen)."""
    if not values:
        return 0
    if len(values) > 1:
        raise bad_request(f"{DEPTH_HEADER} was sent {len(values)} times: send it once",
                          DEPTH_HEADER, "invalid_header")
    value = values[0]
    try:
        depth = int(value)
    except ValueError:
        raise bad_request(f"{DEPTH_HEADER} must be an integer", DEPTH_HEADER,
                          "invalid_header") from None
    if depth < 0:
        raise bad_request(f"{DEPTH_HEADER} must be >= 0", DEPTH_HEADER, "invalid_header")
    if depth >= settings.max_depth:
        raise bad_request(f"{DEPTH_HEADER} is {depth}: this request has passed through "
                          f"{depth} fusion servers already (limit {settings.max_depth}); "
                          "refusing to forward it again", DEPTH_HEADER, "recursion_limit")
    return depth


def prepare(req: ChatRequest, config: Config, pool: ProviderPool, settings: ServerSettings,
            depth: int, owner: str | None = None) -> Prepared:
    allowed = settings.allowed_providers
    target_preset, spec_target = _target(req.model, config, allowed)
    for i, spec in enumerate(req.models or ()):
        check_spec(spec, req.params[f"models[{i}]"], config, allowed)
    for name in ("judge", "fallback_judge"):
        value = req.judge if name == "judge" else req.options.get(name)
        if value:
            check_spec(value, req.params[name], config, allowed)
    if req.models is not None:
        seats = sum(parse_spec(s).count for s in req.models)
        if seats > settings.max_members:
            where = req.params["models[0]"].rsplit("[", 1)[0]
            raise bad_request(f"{seats} panel members: at most {settings.max_members} per "
                              "request (model*N counts N)", where, "too_many_members")

    # `fusion/<p>` names its preset; plain `fusion` is the CLI without --preset (the
    # default preset only when the request lists no models); `provider:model` is a member
    # (the judge, when the request lists models).
    named = target_preset.name if target_preset and req.model != "fusion" else None
    chosen = select(config, req.models or ([spec_target] if spec_target else None),
                    req.judge or (spec_target if req.models else None), req.mode, named)
    preset, models, mode = chosen.preset, chosen.models, chosen.mode
    judge: str | None = chosen.judge
    options = dict(req.options)
    passthrough = (spec_target is not None and req.models is None) or depth >= 1
    if passthrough:
        # Depth >= 1: another fusion server sent this. Answer with the first member only,
        # so fusions never nest (docs/server.md, "Recursion").
        models, judge, mode = [parse_spec(models[0]).id], None, "merge"
        for name in _PANEL_ONLY:
            options.pop(name, None)
        if preset is not None and preset.options.get("quorum") is not None:
            options["quorum"] = 1
        if preset is not None and any(preset.options.get(k) for k in ADAPTIVE_OPTIONS):
            options["effort"] = EFFORT_OFF  # one member, as asked: no samples of it
    _cap_samples(req, options, settings)
    _cap_max_tokens(req, options, preset, settings)
    if "max_tokens" in req.params:
        # An OpenAI client's max_tokens bounds the answer it gets, whoever writes it: the
        # members, or the judge that merges them (checked against the cap just above).
        options.setdefault("answer_max_tokens", options["max_tokens"])
    options["depth"] = depth
    try:
        fusion = Fusion(models, judge, mode,
                        preset=preset.name if preset else None, config=config, pool=pool,
                        **options)
    except UsageError as e:
        param = req.params.get(e.option) if e.option else None
        if param is not None:  # an option the request set: name its field, CLI flags aside
            raise bad_request(str(e).replace("--", ""), param) from None
        raise usage_error(e, None) from None
    return Prepared(fusion, req, fusion.plan.preset, passthrough, owner)


def _target(model: str, config: Config, allowed: frozenset[str] | None
            ) -> tuple[Preset | None, str | None]:
    """(preset, passthrough spec) for the request's `model`."""
    if model == "fusion":
        try:
            return config.default(), None
        except ConfigError as e:
            raise usage_error(e, "model") from None
    if model.startswith("fusion/"):
        try:
            return config.preset(model.removeprefix("fusion/")), None
        except ConfigError as e:
            raise ApiError(404, str(e), code="model_not_found", param="model") from None
    if ":" in model and not _URLISH.search(model):
        check_spec(model, "model", config, allowed)
        return None, model
    if _URLISH.search(model):
        check_spec(model, "model", config, allowed)  # raises the URL refusal
    raise ApiError(404, f"model {model!r} does not exist here: use fusion, fusion/<preset> or "
                   "provider:model (GET /v1/models lists them)", code="model_not_found",
                   param="model")


def check_spec(spec: str, param: str, config: Config,
               allowed: frozenset[str] | None = None) -> None:
    """A spec must name a configured provider the server allows requests to name; never a
    URL (no server-side request forgery). Presets' own specs are the operator's, not
    checked against `allowed`."""
    if _URLISH.search(spec):
        raise bad_request(f"{param} looks like a URL ({spec!r}): name a configured provider "
                          "as provider:model instead", param, "url_not_allowed")
    try:
        parsed = parse_spec(spec)
        provider = config.provider(parsed.provider)
    except UsageError as e:
        raise usage_error(e, param) from None
    if allowed is not None and parsed.provider not in allowed:
        raise bad_request(f"{param}: provider {parsed.provider!r} is not enabled on this "
                          f"server; requests may name: {', '.join(sorted(allowed)) or 'none'} "
                          "(or use fusion / fusion/<preset>)", param, "provider_not_allowed")
    if provider.kind == "local" and parsed.model not in CATALOG:
        # `local:` also takes a path to a .gguf (the CLI's and the library's own files);
        # from a request that would name files on the server, and the error would say where
        # they are and whether they exist. Requests name catalogue models only.
        raise bad_request(f"{param}: a request may name only the built-in local models "
                          f"({', '.join(sorted(CATALOG))}), not a file", param,
                          "local_model_not_allowed")


def _cap_samples(req: ChatRequest, options: dict[str, Any], settings: ServerSettings) -> None:
    """A request's sample budget is seats it may ask for: the same cap as its models."""
    for name in ADAPTIVE_OPTIONS:
        if name not in options or name not in req.params:
            continue
        # The types were checked when parsed; an unknown level is the engine's to name.
        samples = FusionOptions(**{name: options[name]}).samples
        if samples is not None and samples > settings.max_members:
            raise bad_request(f"{name} asks for {samples} samples: at most "
                              f"{settings.max_members} per request", req.params[name],
                              "too_many_members")


def _cap_max_tokens(req: ChatRequest, options: dict[str, Any], preset: Preset | None,
                    settings: ServerSettings) -> None:
    """Members' answers and the judge's verdicts alike: at most the cap. Where nothing sets
    one, the cap bounds the cost of a request (the judge keeps its default if lower)."""
    cap = settings.max_tokens_cap
    unset = {"max_tokens": cap, "judge_max_tokens": min(cap, FusionOptions().judge_max_tokens)}
    for name, default in unset.items():
        asked = options.get(name)
        if asked is not None and asked > cap:
            raise bad_request(f"{name} is {asked}: at most {cap} on this server",
                              req.params.get(name, name), "max_tokens_too_large")
        if asked is None and (preset is None or preset.options.get(name) is None):
            options[name] = default
