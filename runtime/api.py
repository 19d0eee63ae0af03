"""Wire formats of `aspd serve`: SGLang's /generate, as pydantic models (OpenAI's: `api_openai`).

Every body is validated here (types, ranges, unsupported options) so that a bad request is a
clear 400 before it reaches the serving loop. `sglang_sampling` maps SGLang's sampling parameters
onto the one `SamplingParams` (the server's wire and NativeBackend's frontend calls alike), and
`meta_info` is SGLang's answer metadata (the server's /generate and NativeBackend's gens alike).
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

from pydantic import BaseModel, ConfigDict, Field, ValidationError, field_validator, model_validator

from .outcomes import Result
from .outputs import FinishReason
from .sampling import DEFAULTS, SamplingParams


class BadRequest(ValueError):
    """A request the server refuses with 400 (its message says why)."""


SEED = Field(None, ge=-(2**63), le=2**64 - 1)  # what torch's generator takes


def _utf8(v):
    """Strings must be valid UTF-8: JSON can carry a lone surrogate ("\\ud800") that no tokenizer takes."""
    if isinstance(v, str):
        try:
            v.encode("utf-8")
        except UnicodeEncodeError:
            raise ValueError("holds a lone UTF-16 surrogate (not valid UTF-8)") from None
    elif isinstance(v, list | tuple):
        for x in v:
            _utf8(x)
    elif isinstance(v, dict):
        for k, x in v.items():
            _utf8(k)
            _utf8(x)
    return v


class Wire(BaseModel):
    """A wire body: strict types (no "yes" for a bool, no true for a number) and valid UTF-8 throughout."""

    model_config = ConfigDict(strict=True, extra="ignore")

    @field_validator("*", mode="after")
    @classmethod
    def _valid_utf8(cls, v):
        return _utf8(v)


class WireSampling(Wire):
    """SGLang's `sampling_params` (what RuntimeEndpoint sends), plus the ASPD caps."""

    model_config = ConfigDict(strict=True, extra="forbid")

    max_new_tokens: int | None = Field(128, ge=0)
    min_new_tokens: int = Field(0, ge=0)
    n: int = 1
    stop: str | list[str] | None = None
    stop_token_ids: list[int] | None = None
    temperature: float = Field(1.0, ge=0.0, le=100.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = -1
    min_p: float = Field(0.0, ge=0.0, le=1.0)
    frequency_penalty: float = 0.0
    presence_penalty: float = 0.0
    repetition_penalty: float | None = Field(None, gt=0.0, le=10.0)  # None: the server's default
    no_repeat_ngram_size: int | None = Field(None, ge=0, le=64)  # None: the server's default
    ignore_eos: bool = False
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True
    no_stop_trim: bool = False
    regex: str | None = None
    json_schema: str | None = None
    ebnf: str | None = None
    structural_tag: str | None = None
    seed: int | None = SEED
    sampling_seed: int | None = SEED
    aspd: bool = False
    max_branches: int = Field(8, ge=2, le=64)
    max_branch_tokens: int | None = Field(None, ge=1)  # None: max_new_tokens
    fork_bias: float | None = Field(None, ge=-100.0, le=100.0)  # None: the adapter's (its gate's for an answer)
    intro_first: bool | None = None  # a chat answer's first line is serial text (None: the server's default)

    def to_sampling(self, default_max: int, defaults: SamplingParams = DEFAULTS) -> SamplingParams:
        """`defaults`: the server's anti-loop settings, for a request that sets none."""
        return sglang_sampling(self, defaults, default_max, grammars=True)


GRAMMARS = ("regex", "json_schema")  # SGLang's constrained decoding that the engine implements (grammar.py)
CONSTRAINED = ("ebnf", "structural_tag", "dtype")  # and what it does not


def _or(value, default):
    return default if value is None else value


def sglang_sampling(sp, defaults: SamplingParams = DEFAULTS, default_max: int | None = None,
                    server: str = "aspd serve", grammars: bool = False) -> SamplingParams:
    """SGLang's sampling parameters as ours: the wire's (`WireSampling`) or its frontend's
    (`SglSamplingParams`, on NativeBackend), any object with SGLang's field names. What it lacks or
    leaves None comes from `defaults` (anti-loop settings, seed, ASPD caps); `max_new_tokens` None is
    `default_max`. An option we do not implement is refused by name (BadRequest), never ignored;
    `grammars`: the caller serves `regex` / `json_schema` (the server and NativeBackend do)."""
    for name in CONSTRAINED + (() if grammars else GRAMMARS):
        if getattr(sp, name, None) is not None:
            raise BadRequest(f"constrained decoding ({name}) is not supported by {server}")
    if getattr(sp, "n", 1) not in (None, 1):
        raise BadRequest("n must be 1 (send a list of texts for several answers)")
    if getattr(sp, "min_new_tokens", 0):
        raise BadRequest("min_new_tokens is not supported")
    if getattr(sp, "frequency_penalty", 0) or getattr(sp, "presence_penalty", 0):
        raise BadRequest("frequency_penalty and presence_penalty are not supported; use repetition_penalty")
    if sp.top_k < -1:
        raise BadRequest("top_k must be -1 (off) or positive")
    n = sp.max_new_tokens if sp.max_new_tokens is not None else _or(default_max, defaults.max_new_tokens)
    given = dict(
        max_new_tokens=n, temperature=sp.temperature, top_p=sp.top_p, top_k=max(sp.top_k, 0), min_p=sp.min_p,
        stop=(sp.stop,) if isinstance(sp.stop, str) else tuple(sp.stop or ()),
        stop_token_ids=tuple(sp.stop_token_ids or ()), ignore_eos=bool(sp.ignore_eos),
        seed=_or(getattr(sp, "seed", None), getattr(sp, "sampling_seed", None)),
        max_branch_tokens=getattr(sp, "max_branch_tokens", None) or max(1, n),
        **{k: getattr(sp, k, None) for k in ("repetition_penalty", "no_repeat_ngram_size", "max_branches",
                                             "fork_bias", "intro_first", *GRAMMARS)})
    try:
        return SamplingParams(**{**defaults.model_dump(), **{k: v for k, v in given.items() if v is not None}})
    except ValidationError as e:  # a grammar llguidance rejects, both grammars: a 400 naming the field
        raise BadRequest(first_error(e)) from None


def first_error(e: ValidationError) -> str:
    first = e.errors()[0]
    where = ".".join(map(str, first["loc"]))
    msg = first["msg"].removeprefix("Value error, ")
    return f"{where}: {msg}" if where else msg


class AspdOptions(Wire):
    """ASPD's options of one /generate request, in SGLang's `session_params` (`{"aspd": {...}}`): the
    one free-form object sglang-router forwards as written (it drops fields SGLang does not define,
    such as `aspd` and `fork_bias`, and proxies /generate only). `join` and `release` act on `rid`:
    the KV join (/concate_and_append_request) and the session's release (/abort_request)."""

    model_config = ConfigDict(strict=True, extra="forbid")

    adaptive: bool = False
    fork_bias: float | None = Field(None, ge=-100.0, le=100.0)
    join: list[str] | None = None
    release: bool = False


class SessionParams(Wire):
    aspd: AspdOptions = AspdOptions()  # SGLang's own keys (id, offset, ...) are ignored, as before


class GenerateRequest(Wire):
    """SGLang's /generate body. Unknown top-level fields are ignored (clients send many), unknown
    sampling parameters are not (a typo would silently change the output)."""

    text: str | list[str] | None = None
    input_ids: list[int] | list[list[int]] | None = None
    sampling_params: WireSampling | list[WireSampling] | None = None  # one per prompt, or one for all
    rid: str | list[str] | None = None
    stream: bool = False
    return_logprob: bool = False
    logprob_start_len: int = -1
    top_logprobs_num: int = Field(0, ge=0, le=20)
    return_text_in_logprobs: bool = False
    image_data: object | None = None
    aspd: bool = False
    session_params: SessionParams | list | None = None  # SGLang's; a dict's "aspd" carries ours

    @property
    def options(self) -> AspdOptions:
        sp = self.session_params
        return sp.aspd if isinstance(sp, SessionParams) else AspdOptions()

    @model_validator(mode="after")
    def _one_prompt(self):
        if (self.text is None) == (self.input_ids is None):
            raise ValueError("give exactly one of text and input_ids")
        if self.image_data is not None:
            raise ValueError("images are not supported")
        return self

    def prompts(self) -> list[tuple[str | None, list[int] | None]]:
        """(text, input_ids) per prompt; one for a single request."""
        if self.text is not None:
            texts = [self.text] if isinstance(self.text, str) else self.text
            return [(t, None) for t in texts]
        ids = self.input_ids
        if ids and isinstance(ids[0], list):
            return [(None, x) for x in ids]
        return [(None, ids)]

    @property
    def batched(self) -> bool:
        return isinstance(self.text, list) or bool(self.input_ids and isinstance(self.input_ids[0], list))

    def samplings(self, n: int) -> list[WireSampling]:
        sp = self.sampling_params
        if isinstance(sp, list):
            if len(sp) != n:
                raise BadRequest(f"sampling_params: {len(sp)} entries for {n} prompts")
        else:
            sp = [sp or WireSampling()] * n
        bias = self.options.fork_bias
        return sp if bias is None else [x if x.fork_bias is not None else x.model_copy(update={"fork_bias": bias})
                                        for x in sp]

    @property
    def aspd_mode(self) -> bool:
        sp = self.sampling_params
        return self.aspd or self.options.adaptive or \
            any(x.aspd for x in (sp if isinstance(sp, list) else [sp] if sp else []))

    def rids(self, n: int) -> list[str | None]:
        if self.rid is None:
            return [None] * n
        rids = [self.rid] if isinstance(self.rid, str) else self.rid
        if len(rids) != n:
            raise BadRequest(f"{len(rids)} rids for {n} prompts")
        return list(rids)


class AbortRequest(Wire):
    rid: str


class JoinRequest(Wire):
    src_rids: list[str]
    dst_rid: str


# ----------------------------------------------------------------- SGLang's answer metadata


def meta_info(result: Result, decode: Callable[[list[int]], str] | None = None, rid: str | None = None) -> dict:
    """SGLang's `meta_info` of one answer; `decode` writes each token's text into the log-prob
    triples (`return_text_in_logprobs`); `rid` as the client wrote it (default: the result's)."""
    o = result.output
    meta = {"id": result.rid if rid is None else rid,
            "finish_reason": _finish_reason(o.finish_reason, o.completion_tokens),
            "prompt_tokens": result.prompt_tokens, "completion_tokens": o.completion_tokens,
            "cached_tokens": result.cached_tokens, "e2e_latency": result.latency_s}
    if result.input_logprobs is not None:
        meta["input_token_logprobs"], meta["input_top_logprobs"] = _triples(result.input_logprobs, decode)
        meta["output_token_logprobs"], meta["output_top_logprobs"] = _triples(o.token_logprobs or [], decode)
    if o.blocks or o.parallel_tokens:
        meta["aspd"] = {"markup": o.markup, "segments": [s.model_dump() for s in o.response.segments],
                        "serial_tokens": o.serial_tokens, "parallel_tokens": o.parallel_tokens,
                        "blocks": [b.model_dump() for b in o.blocks], "forward_passes": o.forward_passes}
    return meta


def _finish_reason(reason: FinishReason, completion_tokens: int) -> dict:
    if reason == FinishReason.LENGTH:
        return {"type": "length", "length": completion_tokens}
    if reason == FinishReason.ABORT:
        return {"type": "abort", "message": "aborted by /abort_request"}
    return {"type": "stop", "matched": None}


def _triples(entries: Sequence, decode: Callable[[list[int]], str] | None) -> tuple[list, list]:
    """SGLang's [logprob, token id, text] triples and the top alternatives per position."""
    def text(t: int) -> str | None:
        return decode([t]) if decode is not None else None
    main = [[lp, t, text(t)] for lp, t, _ in entries]
    tops = [[[a_lp, a_t, text(a_t)] for a_lp, a_t in alts] if alts else None for _, _, alts in entries]
    return main, tops
