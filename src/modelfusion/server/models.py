"""`GET /v1/models` and `GET /v1/models/{id}`: what a request may name as `model` and this
server can run.

One rule decides both (`runnable`): an id is listed, and retrievable, when a chat request
naming it would get past the plan's checks here — the preset resolves (its providers
usable, a `local:` model's llama-cpp-python importable and its file present: the engine's
`plan.preflight`), or the `provider:model` is one a request may name (`check_spec`) and can
run. So a server without llama-cpp-python lists no `local:` models and no preset that
needs them.
"""

from __future__ import annotations

from typing import Any

from ..config import DEFAULT_LOCAL_PRESET, Config, parse_spec
from ..errors import UsageError
from ..plan import preflight, resolve
from .errors import ApiError
from .resolve import check_spec

OWNER = "modelfusion"


def runnable(config: Config, model: str, allowed: frozenset[str] | None) -> bool:
    """Whether a chat request with this `model` would be planned here (nothing is sent)."""
    try:
        if model == "fusion" or model.startswith("fusion/"):
            preset = config.default() if model == "fusion" else \
                config.preset(model.removeprefix("fusion/"))
            resolve(config, preset=preset.name)
        else:
            check_spec(model, "model", config, allowed)
            preflight(config, parse_spec(model))
    except (UsageError, ApiError):
        return False
    return True


def card(model: str) -> dict[str, Any]:
    """OpenAI's model object."""
    owner = OWNER if model == "fusion" or model.startswith("fusion/") else model.split(":")[0]
    return {"id": model, "object": "model", "created": 0, "owned_by": owner}


def model_list(config: Config, allowed: frozenset[str] | None = None) -> list[dict[str, Any]]:
    """`fusion`, `fusion/<preset>`, and the provider:model specs the config mentions (the
    server cannot know every model a provider serves), those that are `runnable`."""
    presets = {DEFAULT_LOCAL_PRESET.name: DEFAULT_LOCAL_PRESET, **config.presets}
    ids = ["fusion", *(f"fusion/{name}" for name in sorted(presets))]
    specs: set[str] = set(config.prices)
    for p in presets.values():
        specs.update(p.models)
        if p.judge:
            specs.add(p.judge)
    named = set()
    for spec in specs:
        try:
            named.add(parse_spec(spec).id)  # `model*N` is listed as the model
        except UsageError:
            continue
    return [card(i) for i in [*ids, *sorted(named)] if runnable(config, i, allowed)]


def model_card(config: Config, model: str, allowed: frozenset[str] | None) -> dict[str, Any]:
    """One model object, or OpenAI's 404 for an id this server cannot run."""
    if not runnable(config, model, allowed):
        raise ApiError(404, f"the model {model!r} does not exist here or cannot run on this "
                       "server (GET /v1/models lists those that can)", code="model_not_found",
                       param="model")
    return card(model)
