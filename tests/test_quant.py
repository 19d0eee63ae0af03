"""Weight formats: each quantized forward against a float reference with the same (dequantized)
weights, the GGUF Q4_1 reader against gguf's own dequantization, and the auto choice."""

from __future__ import annotations

import copy

import numpy as np
import pytest
import torch

from runtime import autotune, gguf_weights
from runtime.engine import Engine
from runtime.fast_decoder import FastDecoder
from runtime.quant import GROUP, Dense, Half, Int4, Int8, LoRA, activations, dequantize, float16_supported, linear
from runtime.weight_format import WeightFormat

gguf = pytest.importorskip("gguf")
# float16 runs fbgemm's kernel, which only x86 builds of torch have
FORMATS = [f for f in WeightFormat if f is not WeightFormat.FLOAT16 or float16_supported()]


def test_int8_and_int4_roundtrip_within_their_step():
    torch.manual_seed(0)
    w = torch.randn(64, 128)
    q8 = Int8.quantize(w, torch.float32)
    assert (dequantize(q8) - w).abs().max() <= q8.scales.max() / 2 + 1e-6
    q4 = Int4.quantize(w, torch.float32)
    step = (w.view(64, -1, GROUP).amax(-1) - w.view(64, -1, GROUP).amin(-1)) / 15
    err = (dequantize(q4) - w).abs().view(64, -1, GROUP).amax(-1)
    assert (err <= step / 2 + 1e-5).all()


def test_int4_holds_exact_codes():
    """Codes, scales and zeros given to Int4 come back exactly through the fp32 kernel."""
    torch.manual_seed(1)
    q = torch.randint(0, 16, (32, 64))
    d, m = torch.rand(32, 2) * 0.1, torch.randn(32, 2) * 0.1
    lin = Int4.from_codes(q, d, m + 8 * d, torch.float32)
    want = q.float().view(32, 2, GROUP) * d[..., None] + m[..., None]
    torch.testing.assert_close(dequantize(lin), want.view(32, 64), atol=1e-6, rtol=0)


@pytest.mark.parametrize("fmt", FORMATS)
def test_every_format_takes_zero_rows(fmt):
    """A pass that wants no logits (a prefill without log-probs) hands the head zero rows."""
    lin = linear(torch.randn(64, 64), fmt)
    x = torch.zeros(0, 64, dtype=activations(fmt))
    assert lin(x).shape == (0, 64)


@pytest.mark.skipif(not float16_supported(), reason="fbgemm is x86 only")
def test_float16_holds_the_weight_in_half_precision_and_computes_in_float32():
    torch.manual_seed(2)
    w, x = torch.randn(96, 64), torch.randn(5, 64)
    lin = linear(w, WeightFormat.FLOAT16)
    assert isinstance(lin, Half) and lin.nbytes == w.numel() * 2
    assert torch.equal(dequantize(lin), w.half().float())  # the kernel's weight is w rounded once to fp16
    want = x.double() @ w.half().double().T
    assert (lin(x).double() - want).abs().max() < 1e-5  # float32 arithmetic, not bf16's 3 digits
    assert lin(x[None]).shape == (1, 5, 96)


def test_int4_pads_outputs_and_falls_back_to_int8_for_inputs_its_kernel_cannot_take():
    assert isinstance(linear(torch.randn(64, 48), WeightFormat.INT4), Int8)
    padded = linear(torch.randn(54, 64), WeightFormat.INT4)  # outputs padded to 16, sliced off again
    assert isinstance(padded, Int4) and padded(torch.randn(3, 64, dtype=torch.bfloat16)).shape == (3, 54)
    assert isinstance(linear(torch.randn(64, 64), WeightFormat.BFLOAT16), Dense)


def _dequantized_copy(tiny, dec: FastDecoder):
    """The tiny model with every decoder weight replaced by what `dec` computes with (float32)."""
    model = copy.deepcopy(tiny.model)
    for layer, (_, qkv, o, _, gu, down) in zip(model.model.layers, dec.layers):
        a, m = layer.self_attn, layer.mlp
        for mods, lin in (((a.q_proj, a.k_proj, a.v_proj), qkv), ((a.o_proj,), o),
                          ((m.gate_proj, m.up_proj), gu), ((m.down_proj,), down)):
            w, row = dequantize(lin).float(), 0
            for mod in mods:
                n = mod.weight.shape[0]
                mod.weight = torch.nn.Parameter(w[row:row + n].clone(), requires_grad=False)
                row += n
    model.lm_head.weight = torch.nn.Parameter(dequantize(dec.lm_head).float().clone(), requires_grad=False)
    return model


@pytest.mark.parametrize("fmt", [f for f in FORMATS if f is not WeightFormat.FLOAT32])
def test_each_format_equals_its_dequantized_float_reference(tiny, fmt):
    """Prefill and a packed branch step in `fmt` against fp32 on the same (dequantized) weights.
    Tolerance: bf16 activations (8 bits of mantissa) over two layers, 3% of the logits' range;
    float16 computes in float32, 0.01%."""
    dec = FastDecoder(copy.deepcopy(tiny.model), fmt)
    assert dec.format is fmt and dec.dtype is activations(fmt)
    if fmt is WeightFormat.INT4:
        assert isinstance(dec.layers[0][1], Int4)
    ref = FastDecoder(_dequantized_copy(tiny, dec), WeightFormat.FLOAT32)
    ids, pos = torch.tensor([3, 9, 14, 20, 7]), torch.arange(5)
    outs = []
    for d in (dec, ref):
        kv = d.new_cache()
        a = d.forward_many([kv], [ids], [pos], [torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()], [torch.arange(5)])
        mask = torch.ones(1, 1, 2, 7, dtype=torch.bool)
        mask[0, 0, 0, 6] = mask[0, 0, 1, 5] = False  # two branches: each sees the prefix and itself
        b = d.forward_many([kv], [torch.tensor([11, 12])], [torch.tensor([5, 5])], [mask], [torch.arange(2)])
        outs.append(torch.cat([a[0], b[0]]).float())
    scale = outs[1].abs().max()
    assert (outs[0] - outs[1]).abs().max() <= (0.03 if dec.dtype is torch.bfloat16 else 1e-4) * scale


def test_engine_runs_each_format(tiny):
    """The engine's step API works unchanged on every format (greedy text is well-formed)."""
    from runtime.sampling import SamplingParams

    for fmt in FORMATS:
        loaded = copy.copy(tiny)
        loaded.model = copy.deepcopy(tiny.model)
        loaded.weights = fmt
        eng = Engine(loaded, fast=True)
        assert eng.runner.weights is fmt
        out = eng.fork(eng.new_sequence(eng.encode("ab")), ["x", "y"], SamplingParams(max_new_tokens=8))
        assert out.parallel_tokens > 0


def test_q4_1_reader_equals_gguf_dequantization():
    """Our Q4_1 block reader, through the int4 kernel, gives gguf-py's dequantized weights exactly."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal((48, 96)).astype(np.float32)
    blocks = gguf.quants.quantize(w, gguf.GGMLQuantizationType.Q4_1)
    q, d, m = gguf_weights.q4_1_codes(blocks, 48, 96)
    lin = Int4.from_codes(q, d, m + 8 * d, torch.float32)
    ref = torch.from_numpy(gguf.quants.dequantize(blocks, gguf.GGMLQuantizationType.Q4_1))
    torch.testing.assert_close(dequantize(lin), ref, atol=1e-6, rtol=0)


def test_rope_row_order_matches_transformers():
    from transformers.modeling_gguf_pytorch_utils import LlamaTensorProcessor

    w = np.arange(48 * 4, dtype=np.float32).reshape(48, 4)
    ref = LlamaTensorProcessor()._reverse_permute_weights(w, 6, 3)
    assert np.array_equal(w[gguf_weights.rope_row_order(48, 3)], ref)


TIMES = {"bfloat16": {"1": 30.0, "4": 33.0}, "int8": {"1": 20.0, "4": 24.0}, "int4": {"1": 15.0, "4": 21.0}}


def test_auto_choice_is_a_function_of_the_timings():
    assert autotune.choose(TIMES) is WeightFormat.INT4
    assert autotune.choose(TIMES) is autotune.choose(dict(reversed(list(TIMES.items()))))
    # a less precise format must be MIN_GAIN cheaper than the best more precise one
    close = {"bfloat16": {"1": 20.0, "4": 20.0}, "int8": {"1": 19.0, "4": 19.5}, "int4": {"1": 18.5, "4": 19.0}}
    assert autotune.choose(close) is WeightFormat.BFLOAT16
    avx2 = {"bfloat16": {"1": 42.0, "4": 99.0}, "int8": {"1": 25.0, "4": 40.0}, "int4": {"1": 22.0, "4": 39.0}}
    assert autotune.choose(avx2) is WeightFormat.INT8
    assert autotune.choose({}) is WeightFormat.BFLOAT16
    if float16_supported():  # most precise of the candidates: chosen unless another is MIN_GAIN cheaper
        fp16 = {"float16": {"1": 24.0, "4": 30.0}, **avx2}  # the int kernels' cost grows faster in rows
        assert autotune.CANDIDATES[0] is WeightFormat.FLOAT16 and autotune.choose(fp16) is WeightFormat.FLOAT16
        assert autotune.choose({**fp16, "float16": {"1": 35.0, "4": 40.0}}) is WeightFormat.INT8


@pytest.fixture
def measures(tmp_path, monkeypatch) -> list[int]:
    """A fresh autotune cache and `measure` replaced by TIMES: one entry per measurement taken."""
    monkeypatch.setenv("ASPD_CACHE", str(tmp_path))
    calls: list[int] = []
    monkeypatch.setattr(autotune, "measure", lambda model, gguf, lora: calls.append(1) or TIMES)
    return calls


def test_auto_format_is_measured_once_and_cached(tiny, measures, monkeypatch):
    calls = measures
    monkeypatch.setattr(autotune, "busy", lambda: False)  # whatever else this machine runs
    model = copy.deepcopy(tiny.model)
    assert autotune.choose_format(model, None, None, "tiny") == (WeightFormat.INT4, None)
    assert autotune.choose_format(model, None, None, "tiny", WeightFormat.INT8) == (WeightFormat.INT8, None)
    assert len(calls) == 1
    entry = autotune.cached_entry("tiny")
    assert entry["choice"] == "int4" and entry["timings_ms"] == TIMES


def test_a_measurement_on_a_busy_machine_serves_that_load_only(tiny, measures, monkeypatch):
    calls = measures
    monkeypatch.setattr(autotune.os, "getloadavg", lambda: (2.0 * (autotune.os.cpu_count() or 1), 0.0, 0.0))
    model = copy.deepcopy(tiny.model)
    assert autotune.choose_format(model, None, None, "tiny") == (WeightFormat.INT4, None)
    assert autotune.cached_entry("tiny") is None
    monkeypatch.setattr(autotune.os, "getloadavg", lambda: (0.5, 0.0, 0.0))
    assert autotune.choose_format(model, None, None, "tiny") == (WeightFormat.INT4, None)
    assert len(calls) == 2 and autotune.cached_entry("tiny")["choice"] == "int4"


def test_an_adapters_cached_choice_follows_its_shape_not_its_path(tmp_path):
    a, b, c = (tmp_path / n for n in "abc")
    for d, rank in ((a, 8), (b, 8), (c, 16)):
        d.mkdir()
        (d / "adapter_config.json").write_text(f'{{"r": {rank}}}')
    assert autotune.model_key("m", str(a)) == autotune.model_key("m", str(b)) != autotune.model_key("m", str(c))
    assert autotune.model_key("m", None) != autotune.model_key("m", str(a))


def test_measure_times_every_candidate_on_the_real_decoder(tiny):
    t = autotune.measure(copy.deepcopy(tiny.model), None, None, repeats=1, context=8)
    assert set(t) == {f.value for f in autotune.CANDIDATES}
    assert all(set(v) == {"1", "4", "64"} and min(v.values()) > 0 for v in t.values())


@pytest.fixture(scope="module")
def adapted(tiny, tmp_path_factory):
    """The tiny model with a random (non-zero) LoRA on every projection, saved and merged by the loader."""
    from peft import LoraConfig, get_peft_model

    from runtime.model_loader import apply_adapter

    torch.manual_seed(3)
    cfg = LoraConfig(r=4, lora_alpha=8, init_lora_weights=False,
                     target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"])
    path = tmp_path_factory.mktemp("adapter")
    get_peft_model(copy.deepcopy(tiny.model), cfg).save_pretrained(path)
    return apply_adapter(copy.deepcopy(tiny.model), str(path))


def test_quantized_formats_keep_an_adapter_beside_the_base_weights(tiny, adapted):
    """int4 + LoRA computes the merged weight up to the base weight's own quantization error; the
    adapter is not rounded away, and float formats run the merged weights."""
    merged, factors = adapted
    assert len(factors) == 7 * len(merged.model.layers)
    dec = FastDecoder(copy.deepcopy(merged), WeightFormat.INT4, None, factors)
    qkv = dec.layers[0][1]
    assert isinstance(qkv, LoRA) and qkv.a.shape[0] == 12  # three rank-4 adapters stacked
    a = merged.model.layers[0].self_attn
    want = torch.cat([a.q_proj.weight, a.k_proj.weight, a.v_proj.weight]).float()
    delta = qkv.b.float() @ qkv.a.float()
    base = want - delta
    step = (base.view(base.shape[0], -1, GROUP).amax(-1) - base.view(base.shape[0], -1, GROUP).amin(-1)) / 15
    err = (dequantize(qkv).float() - want).abs().view(base.shape[0], -1, GROUP).amax(-1)
    assert (err <= step / 2 + 0.02 * want.abs().max()).all()
    assert delta.abs().max() > step.max()  # large enough that requantizing the merged weight would lose it
    assert isinstance(FastDecoder(copy.deepcopy(merged), WeightFormat.BFLOAT16, None, factors).layers[0][1], Dense)


def test_dense_rows_only_where_bf16_prefills_faster():
    fast_bf16 = {"bfloat16": {"64": 70.0}, "int4": {"64": 106.0}}
    assert autotune.dense_rows(fast_bf16, WeightFormat.INT4) == autotune.DENSE_ROWS
    assert autotune.dense_rows({"bfloat16": {"64": 300.0}, "int4": {"64": 106.0}}, WeightFormat.INT4) is None
    assert autotune.dense_rows(fast_bf16, WeightFormat.BFLOAT16) is None


def test_prefill_on_dense_weights_then_decode_quantized(tiny):
    """With dense_rows, a long pass writes exactly the bf16 decoder's KV, and a decode step is exactly
    the plain int4 decoder's step over that cache."""
    model = copy.deepcopy(tiny.model)
    dec = FastDecoder(model, WeightFormat.INT4, dense_rows=4)
    bf16, int4 = FastDecoder(model, WeightFormat.BFLOAT16), FastDecoder(model, WeightFormat.INT4)
    assert dec.dense_layers and isinstance(dec.dense_layers[0][1], Dense)
    ids, causal = torch.tensor([3, 9, 14, 20, 7]), torch.ones(1, 1, 5, 5, dtype=torch.bool).tril()

    def run(prefill, step):
        kv = prefill.new_cache()
        prefill.forward_many([kv], [ids], [torch.arange(5)], [causal], [torch.tensor([4])])
        keys = kv.k[:, :, :5].clone()
        out = step.forward_many([kv], [torch.tensor([11])], [torch.tensor([5])], [None], [torch.tensor([0])])[0]
        return keys, out

    got, want = run(dec, dec), run(bf16, int4)
    assert torch.equal(got[0], want[0]) and torch.equal(got[1], want[1])
    assert not torch.equal(got[0], run(int4, int4)[0])

    def batch_step(d):  # four sequences' decode steps: four logits rows, the dense head too
        kvs = [d.new_cache() for _ in range(4)]
        for kv in kvs:
            d.forward_many([kv], [ids], [torch.arange(5)], [causal], [torch.tensor([4])])
        return d.forward_many(kvs, [torch.tensor([11 + j]) for j in range(4)], [torch.tensor([5])] * 4,
                              [None] * 4, [torch.tensor([0])] * 4)

    assert all(torch.equal(a, b) for a, b in zip(batch_step(dec), batch_step(bf16)))


@pytest.mark.parametrize("dtype,device,msg", [("float8", "cpu", "unknown dtype 'float8'"),
                                              ("int4", "cuda", "CPU's kernels only"),
                                              ("float16", "cuda", "CPU's kernels only")])
def test_load_rejects_a_dtype_it_cannot_run_in_one_line(dtype, device, msg):
    from runtime.model_loader import ModelLoadError, load

    with pytest.raises(ModelLoadError, match=msg):
        load("/no/such/model", dtype=dtype, device=device)


def test_load_rejects_float16_without_fbgemm_in_one_line(monkeypatch):
    from runtime import model_loader

    monkeypatch.setattr(model_loader, "float16_supported", lambda: False)
    with pytest.raises(model_loader.ModelLoadError, match="fbgemm"):
        model_loader.load("/no/such/model", dtype="float16")
