"""Start-up checks of a fleet, before the remote engine takes requests: which model the servers
serve (it must be the front's: its tokenizer renders every prompt), a tokenization round trip
through each server's /tokenize, and whether the servers offer prompt logprobs that read the
prefix cache (/inference/v1/generate)."""

from __future__ import annotations

import logging
import os
import time
from typing import Any, Literal

import httpx

from flip_reward.engines.prompt_logprobs import layout

log = logging.getLogger(__name__)

GENERATE_PATH = "/inference/v1/generate"
# vLLM's 400 for a reply holding NaN: json refuses it, and vLLM answers a ValueError with 400
# (vllm/entrypoints/serve/exception_handling/register.py:36, vLLM 0.32.0).
NAN_REFUSAL = "not JSON compliant"
PromptLogprobsEndpoint = Literal["generate", "completions"]


class FleetMismatch(RuntimeError):
    """The fleet serves another model than the front's tokenizer belongs to: rewards would be wrong."""


def discover_models(http: httpx.Client, urls: list[str], wait_s: float) -> dict[str, list[dict[str, Any]]]:
    """Each URL's /v1/models cards, waiting until at least one answers (the fleet may still be
    loading); a URL that does not answer then is left out (and checked by nothing: give all servers
    one configuration)."""
    deadline = time.monotonic() + wait_s
    problems: dict[str, str] = {}
    while True:
        answered: dict[str, list[dict[str, Any]]] = {}
        for url in urls:
            try:
                response = http.get(url.rstrip("/") + "/v1/models")
                if response.status_code in (401, 403):
                    raise FleetMismatch(
                        f"{url} refused the API key (HTTP {response.status_code}): "
                        "set FLIP_REMOTE_API_KEY or FLIP_REMOTE_API_KEY_FILE to the fleet's key"
                    )
                response.raise_for_status()
                answered[url] = response.json()["data"]
            except (httpx.HTTPError, ValueError, KeyError) as exc:
                problems[url] = f"{type(exc).__name__}: {exc}"
        if answered:
            for url in set(urls) - set(answered):
                log.warning("remote server %s did not answer at start (%s); used unchecked", url, problems.get(url))
            return answered
        if time.monotonic() >= deadline:
            raise RuntimeError(f"no remote server answered /v1/models within {wait_s:.0f} s: {problems}")
        time.sleep(2.0)


def _basename(name: str) -> str:
    return os.path.basename(name.rstrip("/")).lower()


def choose_model(
    cards: dict[str, list[dict[str, Any]]], wanted: str | None, front_model: str
) -> tuple[str, int | None]:
    """The served model to request: `wanted` (FLIP_REMOTE_MODEL) if set, else the one whose name or
    path matches the front's model (FLIP_MODEL's last path part). Every answering server must serve
    it, and it must be the front's model: otherwise FleetMismatch, naming both."""
    chosen: str | None = None
    server_len: int | None = None
    for url, listed in cards.items():
        served = {card["id"]: card for card in listed}
        if wanted is not None:
            card = served.get(wanted)
            if card is None:
                raise FleetMismatch(f"{url} does not serve model {wanted!r}; it serves {sorted(served)}")
        else:
            matching = [
                c for c in listed if _basename(front_model) in {_basename(c["id"]), _basename(c.get("root") or "")}
            ]
            if not matching:
                raise FleetMismatch(
                    f"the front's tokenizer is {front_model!r} (FLIP_MODEL) but {url} serves "
                    f"{sorted(served)}: set FLIP_MODEL to the fleet's model"
                )
            card = matching[0]
        names = {_basename(card["id"]), _basename(card.get("root") or "")}
        if _basename(front_model) not in names:
            raise FleetMismatch(
                f"the front's tokenizer is {front_model!r} (FLIP_MODEL) but {url} serves "
                f"{card['id']!r} from {card.get('root')!r}: set FLIP_MODEL to the fleet's model"
            )
        if chosen is not None and card["id"] != chosen:
            raise FleetMismatch(f"the servers serve different models: {chosen!r} and {card['id']!r} ({url})")
        chosen, server_len = card["id"], card.get("max_model_len")
    assert chosen is not None
    return chosen, server_len


# Rendered through the chat template: special tokens, whitespace, digits and non-ASCII text, the
# places two tokenizers of one family most often part.
_PROBE_MESSAGES = [
    {"role": "system", "content": "You infer instructions."},
    {"role": "user", "content": "Explain Rayleigh scattering in 3 sentences, über-précis: 42 µm?\n\n  Indented."},
]


def check_tokenizer(http: httpx.Client, url: str, model: str, tokenizer: Any, front_model: str) -> None:
    """The server's /tokenize must give the same ids as the front's tokenizer for a probe prompt."""
    try:
        text = tokenizer.apply_chat_template(_PROBE_MESSAGES, tokenize=False, add_generation_prompt=True)
    except ValueError:  # no chat template: the plain text still tells two tokenizers apart
        text = "\n".join(m["content"] for m in _PROBE_MESSAGES)
    mine = tokenizer.encode(text, add_special_tokens=False)
    response = http.post(
        url.rstrip("/") + "/tokenize", json={"model": model, "prompt": text, "add_special_tokens": False}
    )
    if response.status_code == 404:
        raise FleetMismatch(
            f"{url} has no /tokenize: the front cannot check that its tokenizer "
            f"({front_model!r}) is the fleet's ({model!r})"
        )
    response.raise_for_status()
    theirs = response.json()["tokens"]
    if theirs != mine:
        first = next((k for k, (a, b) in enumerate(zip(mine, theirs)) if a != b), min(len(mine), len(theirs)))
        raise FleetMismatch(
            f"the front's tokenizer ({front_model!r}) and {url}'s model ({model!r}) tokenize "
            f"a probe prompt differently (first at token {first}: {len(mine)} vs {len(theirs)} ids)"
        )


def prompt_logprobs_payload(model: str, ids: list[int], read_cache: bool | None) -> dict[str, Any]:
    """An /inference/v1/generate body for prompt logprobs: one throw-away token, the actual token's
    logprob at every computed position, not detokenized. `read_cache`: whether the prefix cache may
    serve the prompt's head (None: the server's default, which skips it for prompt logprobs)."""
    sampling: dict[str, Any] = {"max_tokens": 1, "temperature": 0.0, "prompt_logprobs": 0, "detokenize": False}
    if read_cache is not None:
        sampling["skip_reading_prefix_cache"] = not read_cache
    return {"model": model, "token_ids": ids, "sampling_params": sampling}


def offers_cache_reads(http: httpx.Client, url: str, model: str, tokenizer: Any) -> bool:
    """Whether the server has vLLM's /inference/v1/generate and reports cached tokens there."""
    ids = tokenizer.encode("probe", add_special_tokens=False) or [0]
    payload = prompt_logprobs_payload(model, ids, read_cache=None)
    try:
        response = http.post(url.rstrip("/") + GENERATE_PATH, json=payload)
    except httpx.HTTPError:
        return False
    if response.status_code != 200:
        return False
    usage = response.json().get("usage") or {}
    return (usage.get("prompt_tokens_details") or {}).get("cached_tokens") is not None


# Long enough to fill whole KV blocks (16 tokens on GPUs, 32 or more on vLLM-CPU) several times.
_RUNNER_PROBE = " ".join(["The quick brown fox jumps over the lazy dog near the quiet river bank."] * 12)


def probe_runtime(http: httpx.Client, url: str, model: str, tokenizer: Any) -> dict[str, Any]:
    """What can be learnt of a server's vLLM from outside: its version (/version) and which model
    runner lays out its prompt logprobs. The same probe is sent through the cache-reading endpoint
    until it is found cached: the V1 runner then returns an entry per prompt position, the V2 runner
    only the positions it computed (flip_reward/engines/prompt_logprobs.py). The V1 runner's
    unwritten rows may hold NaN, which vLLM refuses to serialize (a 400); when the same probe then
    succeeds without the cache, the NaN came from positions it did not compute: V1 too. Unknown
    stays None (a Service spreading the probes over pods, no prefix cache): the engine reads either
    layout."""
    info: dict[str, Any] = {"vllm_version": None, "model_runner": None}
    base = url.rstrip("/")
    try:
        info["vllm_version"] = http.get(base + "/version").json().get("version")
    except (httpx.HTTPError, ValueError, AttributeError):
        pass
    ids = tokenizer.encode(_RUNNER_PROBE, add_special_tokens=False)
    cache_read, computed = (prompt_logprobs_payload(model, ids, read_cache=flag) for flag in (True, False))
    for _ in range(4):  # the first may only fill the cache
        try:
            response = http.post(base + GENERATE_PATH, json=cache_read)
            nan_refused = response.status_code == 400 and NAN_REFUSAL in response.text
            if nan_refused and http.post(base + GENERATE_PATH, json=computed).status_code == 200:
                info["model_runner"] = "V1"
                break
        except httpx.HTTPError:
            return info
        if response.status_code != 200:
            continue
        body = response.json()
        cached = ((body.get("usage") or {}).get("prompt_tokens_details") or {}).get("cached_tokens") or 0
        if cached:
            found = layout(len(ids), len(body.get("prompt_logprobs") or []), cached)
            info["model_runner"] = {"full": "V1", "tail": "V2"}.get(found or "")
            break
    return info


def check_fleet(
    http: httpx.Client,
    urls: list[str],
    wait_s: float,
    wanted_model: str | None,
    tokenizer: Any,
    front_model: str,
    endpoint: Literal["auto", "generate", "completions"],
) -> tuple[str, int | None, PromptLogprobsEndpoint]:
    """Every check above, in order: the model the fleet serves (and its context length), the
    tokenizer of each answering server, and the prompt-logprobs endpoint (`auto`: the cache-reading
    one where the first server offers it). Raises FleetMismatch, naming both sides."""
    cards = discover_models(http, urls, wait_s)
    model, server_len = choose_model(cards, wanted_model, front_model)
    for url in cards:
        check_tokenizer(http, url, model, tokenizer, front_model)
    if endpoint == "auto":
        endpoint = "generate" if offers_cache_reads(http, next(iter(cards)), model, tokenizer) else "completions"
    return model, server_len, endpoint
