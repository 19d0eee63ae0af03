"""The tiny model the tests share: a random-weight Llama with a character-level tokenizer (fp32,
built here), and an engine on it that writes markup often."""

from __future__ import annotations

import dataclasses

import torch
from tokenizers import Regex, Tokenizer, decoders, models, pre_tokenizers
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

from runtime.engine import Engine
from runtime.model_loader import LoadedModel, add_special_tokens

CHARS = list(" abcdefghijklmnopqrstuvwxyz.,:;!?-\n0123456789")
JSON_CHARS = CHARS + list('{}[]"')  # a vocabulary that can write JSON (programs with json_schema gens)


def tiny_tokenizer(chars: list[str] = CHARS) -> PreTrainedTokenizerFast:
    vocab = {"<eos>": 0, "<unk>": 1, **{c: i + 2 for i, c in enumerate(chars)}}
    tk = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tk.pre_tokenizer = pre_tokenizers.Split(Regex("[\\s\\S]"), behavior="isolated")
    tk.decoder = decoders.Fuse()
    return PreTrainedTokenizerFast(tokenizer_object=tk, eos_token="<eos>", unk_token="<unk>")


def tiny_model(seed: int = 0, max_positions: int = 512, chars: list[str] = CHARS) -> LoadedModel:
    """`chars`: the vocabulary (the default has no JSON punctuation)."""
    torch.manual_seed(seed)
    tok = tiny_tokenizer(chars)
    cfg = LlamaConfig(vocab_size=len(tok), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=max_positions,
                      tie_word_embeddings=False, eos_token_id=0, bos_token_id=None, pad_token_id=None)
    model = LlamaForCausalLM(cfg).to(torch.float32)
    model.config._attn_implementation = "sdpa"
    ids = add_special_tokens(model, tok)
    return LoadedModel(model=model.eval(), tokenizer=tok, ids=ids, name="tiny")


def markup_heavy_engine(seed: int, line_rule: bool = False) -> Engine:
    """An engine on a tiny model whose head makes markup and EOS likely, so blocks open and close often.
    `line_rule`: keep the rule that a block opens only after a newline (off by default: random text
    rarely writes one, and these tests are about the markup, not where a block opens)."""
    lm = tiny_model(seed=seed)
    if not line_rule:
        lm.ids = dataclasses.replace(lm.ids, line_end=None)
    head = lm.model.get_output_embeddings().weight
    with torch.no_grad():
        head[sorted(lm.ids.markup)] *= 0.0
        head[sorted(lm.ids.markup)] += lm.model.get_input_embeddings().weight[sorted(lm.ids.markup)] * 40
        head[sorted(lm.ids.eos)] = lm.model.get_input_embeddings().weight[sorted(lm.ids.eos)] * 6
        if line_rule:  # newlines likely too
            newline = lm.tokenizer.encode("\n", add_special_tokens=False)
            head[newline] = lm.model.get_input_embeddings().weight[newline] * 10
    return Engine(lm)


def forked_answers(eng: Engine, seeds: int = 30, **params):
    """(sequence, output) of the sampled answers to "q: " that fork and finish, one per seed."""
    from runtime.sampling import SamplingParams

    for seed in range(seeds):
        seq = eng.new_sequence("q: ")
        out = eng.generate(seq, SamplingParams(max_new_tokens=200, max_branch_tokens=5, max_title_tokens=3,
                                               temperature=1.0, seed=seed, **params), "aspd")
        if out.finish_reason == "stop" and out.blocks:
            yield seq, out
