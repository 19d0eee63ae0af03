"""Constrained generation (`regex`, `json_schema`; runtime/grammar.py) on tiny random models sampled
at temperature 1: every output matches, serially, in ASPD mode (which then never opens a block), in
every branch of a fork or of decode_branches, and through the server; bad grammars are clear errors."""

from __future__ import annotations

import json
import re

import httpx
import pytest
from pydantic import ValidationError

from bench.constrained import Case, branches, schema_ok, serial
from runtime.engine import Engine
from runtime.sampling import SamplingParams
from tests.model_util import JSON_CHARS, markup_heavy_engine, tiny_model
from tests.serve_util import idle, serve_in_thread

REGEXES = [r"\d{3}-\d{4}", r"(yes|no|maybe)", r"[a-z]{2,8}\.(com|org)", r"\d{4}-\d{2}-\d{2}",
           r"-?\d{1,3}(\.\d{1,2})?", r"[a-z]{3,5}( [a-z]{2,4}){1,3}!"]
PERSON = {"type": "object", "properties": {
    "name": {"type": "string", "minLength": 1, "maxLength": 6},
    "age": {"type": "integer", "minimum": 0, "maximum": 120}, "ok": {"type": "boolean"},
    "tags": {"type": "array", "items": {"enum": ["red", "green", "blue"]}, "maxItems": 3}},
    "required": ["name", "age", "ok"], "additionalProperties": False}
SCHEMAS = [PERSON, {"type": "array", "items": {"type": "integer", "minimum": -9, "maximum": 99},
                    "minItems": 1, "maxItems": 4},
           {"enum": ["north", "south", 7, None]}]


def params(seed: int, **kw) -> SamplingParams:
    return SamplingParams(**{"max_new_tokens": 120, "temperature": 1.0, "seed": seed, **kw})


@pytest.fixture(scope="module")
def eng():
    return Engine(tiny_model(seed=3))


@pytest.fixture(scope="module")
def json_eng():
    return Engine(tiny_model(seed=4, chars=JSON_CHARS, max_positions=2048))


@pytest.mark.parametrize("mode", ["ar", "aspd"])
def test_every_sampled_output_matches_its_regex(eng, mode):
    free = 0
    for regex in REGEXES:
        for seed in range(12):
            out = eng.generate(eng.new_sequence("q: "), params(seed, regex=regex), mode)
            assert re.fullmatch(regex, out.text), (regex, seed, out.text)
            assert out.finish_reason == "stop" and not out.blocks
            plain = eng.generate(eng.new_sequence("q: "), params(seed), mode)
            free += re.fullmatch(regex, plain.text) is None
    assert free > 60  # the same sampling without the grammar: almost never a match


def test_eos_and_markup_only_where_the_grammar_allows():
    """A head that makes markup and EOS likely: ASPD mode opens blocks without a grammar, never with
    one, and EOS comes only once the output matches (so outputs are never short)."""
    eng = markup_heavy_engine(1)
    blocks = 0
    for seed in range(15):
        out = eng.generate(eng.new_sequence("q: "), params(seed, regex=r"[a-z]{3,6}( \d\d)?"), "aspd")
        assert re.fullmatch(r"[a-z]{3,6}( \d\d)?", out.text) and out.stop_token in eng.ids.eos | {None}
        assert not out.blocks and not set(eng.encode(out.text)) & eng.ids.markup
        blocks += len(eng.generate(eng.new_sequence("q: "), params(seed, max_branch_tokens=5,
                                                                    max_title_tokens=3), "aspd").blocks)
    assert blocks > 0


def test_a_grammar_wins_over_the_anti_loop_rule(eng):
    """The only valid output repeats an n-gram: the n-gram ban gives way to the grammar."""
    for seed in range(3):
        out = eng.generate(eng.new_sequence("q: "), params(seed, regex="(ab){6}", no_repeat_ngram_size=3), "ar")
        assert out.text == "ab" * 6


def test_json_schema_outputs_parse_and_validate(json_eng):
    for schema in SCHEMAS:
        for seed in range(10):
            out = json_eng.generate(json_eng.new_sequence("q: "),
                                    params(seed, json_schema=json.dumps(schema), max_new_tokens=200), "ar")
            assert out.finish_reason == "stop", (schema, seed, out.text)
            assert schema_ok(json.loads(out.text), schema), (schema, seed, out.text)


def test_schema_check_is_not_vacuous():
    assert schema_ok({"name": "ab", "age": 3, "ok": True}, PERSON)
    assert not schema_ok({"name": "ab", "age": 300, "ok": True}, PERSON)
    assert not schema_ok({"name": "ab", "age": 3}, PERSON)
    assert not schema_ok({"name": "ab", "age": 3, "ok": True, "x": 1}, PERSON)
    assert not schema_ok({"name": "ab", "age": 3, "ok": True, "tags": ["pink"]}, PERSON)


@pytest.mark.parametrize("markup", [False, True])
def test_each_branch_of_a_fork_matches(eng, markup):
    regex = r"\d{2}:\d{2}( [a-z]{2,4})?"
    for seed in range(8):
        seq = eng.new_sequence("q: ")
        out = eng.fork(seq, ["first", "second", "third"], params(seed, regex=regex, max_branch_tokens=40),
                       markup=markup)
        bodies = [b.body for b in out.response.blocks[0].branches]
        assert len(bodies) == 3 and all(re.fullmatch(regex, b) for b in bodies), bodies


def test_each_branch_of_a_block_decodes_under_its_own_grammar(json_eng):
    grammars = [{"regex": r"\d{3}-\d{4}"}, {"json_schema": json.dumps(PERSON)}, {"regex": "(red|green)!"}, {}]
    for seed in range(6):
        seq = json_eng.new_sequence("list: ")
        json_eng.open_block(seq)
        for s in ("a ", "b ", "c ", "d "):
            json_eng.add_branch(seq, s)
        out = json_eng.decode_branches(seq, {j: params(seed + j, max_new_tokens=150, **g)
                                             for j, g in enumerate(grammars)})
        a, b, c, _ = [x.body for x in out.response.blocks[0].branches]
        assert re.fullmatch(r"\d{3}-\d{4}", a) and re.fullmatch("(red|green)!", c), (a, c)
        assert schema_ok(json.loads(b), PERSON), b
        json_eng.release(seq)


def test_the_benchmark_cases_run_and_check_on_the_tiny_model(json_eng):
    cases = [Case("phone", "p", regex=r"\d{3}-\d{4}"), Case("obj", "o", schema=PERSON),
             Case("yes", "y", regex="(yes|no)"), Case("bad", "b", regex="x")]
    rows = serial(json_eng, cases[:3], [0, 1], temperature=1.0, max_new_tokens=150)
    rows += branches(json_eng, cases[:3], [0], 2, temperature=1.0, max_new_tokens=150)
    assert len(rows) == 9 and all(r["ok"] for r in rows), [r for r in rows if not r["ok"]]
    assert not cases[3].ok("y") and not Case("o", "o", schema=PERSON).ok("{")


@pytest.mark.parametrize("kw, field", [
    ({"regex": "([0-9]"}, "regex"), ({"json_schema": "{"}, "json_schema"),
    ({"json_schema": '{"type": "strnig"}'}, "json_schema"), ({"json_schema": "[1]"}, "json_schema"),
    ({"regex": "a", "json_schema": "{}"}, "at most one of regex and json_schema")])
def test_bad_grammars_are_errors_naming_the_field(kw, field):
    with pytest.raises(ValidationError, match=re.escape(field)):
        SamplingParams(**kw)


def test_a_grammar_the_vocabulary_cannot_write_is_a_clear_error(eng):
    from runtime.sequence import EngineError

    with pytest.raises(EngineError, match="no token of this model's vocabulary"):
        eng.generate(eng.new_sequence("q: "), params(0, regex="a@b"), "ar")


def test_server_regex_json_schema_and_response_format(json_eng):
    with serve_in_thread(json_eng, max_running=4, max_waiting=8) as (url, _):
        sp = [{"regex": r"\d{3}-\d{4}", "temperature": 1.0, "seed": s, "max_new_tokens": 100} for s in range(3)]
        sp += [{"json_schema": json.dumps(PERSON), "temperature": 1.0, "seed": 9, "max_new_tokens": 150},
               {"temperature": 1.0, "seed": 1, "max_new_tokens": 10}]
        r = httpx.post(url + "/generate", json={"text": ["a"] * 5, "sampling_params": sp}, timeout=60)
        assert r.status_code == 200, r.text
        texts = [x["text"] for x in r.json()]
        assert all(re.fullmatch(r"\d{3}-\d{4}", t) for t in texts[:3]), texts
        assert schema_ok(json.loads(texts[3]), PERSON)
        chat = {"messages": [{"role": "user", "content": "hi"}], "max_tokens": 150, "seed": 2}
        for rf, schema in ((PERSON, PERSON), (None, {"type": "object"})):
            fmt = ({"type": "json_schema", "json_schema": {"name": "p", "schema": rf}} if rf
                   else {"type": "json_object"})
            r = httpx.post(url + "/v1/chat/completions", json={**chat, "response_format": fmt}, timeout=60)
            assert r.status_code == 200, r.text
            choice = r.json()["choices"][0]
            assert choice["finish_reason"] == "stop", choice
            assert schema_ok(json.loads(choice["message"]["content"]), schema)
        bad = [("/generate", {"text": "a", "sampling_params": {"regex": "(a"}}, "regex"),
               ("/generate", {"text": "a", "sampling_params": {"json_schema": "{"}}, "json_schema"),
               ("/generate", {"text": "a", "sampling_params": {"regex": "a", "json_schema": "{}"}}, "json_schema"),
               ("/generate", {"text": "a", "sampling_params": {"regex": "a@"}}, "regex"),
               ("/v1/chat/completions", {**chat, "response_format": {"type": "yaml"}}, "response_format"),
               ("/v1/completions", {"prompt": "a", "response_format": {
                   "type": "json_schema", "json_schema": {"schema": {"type": 3}}}}, "response_format")]
        for path, body, field in bad:
            r = httpx.post(url + path, json=body, timeout=30)
            assert r.status_code == 400 and field in r.json()["error"]["message"], (body, r.text)
        idle(url)


def test_a_regex_digit_class_means_ascii_digits():
    """llguidance's `\\d` is any Unicode digit (a sampled date came out as segmented digits): it is
    read as [0-9], as SGLang's grammar engine does, inside classes too; escapes are left alone."""
    from runtime.grammar import ascii_digits

    assert ascii_digits(r"\d{4}-\d") == "[0-9]{4}-[0-9]"
    assert ascii_digits(r"[\d.]+|[^\d]") == "[0-9.]+|[^0-9]"
    assert ascii_digits(r"[]\d]") == "[]0-9]"  # a "]" first in a class is literal
    assert ascii_digits(r"\\d|a\.d|\D") == r"\\d|a\.d|\D"
