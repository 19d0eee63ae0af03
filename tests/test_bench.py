"""`aspd bench`: metrics on hand-made answers, the harness end to end on the tiny model, bad question
files, resuming an interrupted run."""

from __future__ import annotations

import json
import math

import pytest

from bench import harness, metrics, questions, run_report
from bench.quality import answer_loss, cosine, sibling_similarity
from runtime.engine import Engine, GenerationOutput
from runtime.outputs import BlockStats
from runtime.protocol import Response
from runtime.sampling import SamplingParams
from tests.model_util import tiny_model


def _out(serial: int, blocks: list[list[int]]) -> GenerationOutput:
    par = sum(map(sum, blocks))
    return GenerationOutput(text="", markup="", response=Response(segments=()), finish_reason="stop",
                            prompt_tokens=1, completion_tokens=serial + par, serial_tokens=serial,
                            parallel_tokens=par, forward_passes=1,
                            blocks=[BlockStats(titles=[""] * len(b), branch_tokens=b, steps=max(b)) for b in blocks],
                            ttft_s=0.0, total_s=1.0)


def test_ideal_speedup_of_a_known_structure():
    # 10 serial tokens, a block of branches 30/20/10 tokens, then a block of 5/5: the critical path
    # is 10 + 30 + 5 = 45 of 80 tokens
    out = _out(10, [[30, 20, 10], [5, 5]])
    assert out.critical_path_tokens == 45
    assert metrics.ideal_speedup(out.completion_tokens, out.critical_path_tokens) == pytest.approx(80 / 45)
    assert metrics.ideal_speedup(50, 50) == 1.0  # a serial answer


def test_degenerate_text_detector():
    """Run-on words, endless letter runs and stray symbols count; prose, Markdown, code (fenced, inline,
    an inline span cut by the budget, preprocessor lines, dotted names, calls), language names, URLs and e-mails
    do not."""
    broken = "_jenkins-375x689ThisOneIs NotABoutMe #languagelearning 🌍 withoutanypausesorbreaksinbetweenwords ok"
    assert metrics.degenerate_words(broken) == broken.split()[:-1]
    assert metrics.degenerate_rate(broken) == 5 / 6
    clean = ("## Tips\n\n1. **Start Small**: learn 10 words a day (e.g. \"hola\"), see https://x.org/a_b#c.\n"
             "2. **Speak**: YouTube and JavaScript tutorials, McDonald's menus — it's fun! x ≈ 2^3 ≥ 7.\n"
             "| a | b |\n- use `my_var`:\n```python\nx_y = {'a': 1}  # note\n```\n"
             "C# or F#? Write to a.b@x.org.\n#include <stdio.h>\nif (file.is_open()) std::cout_x;\n"
             "Then `r\"^[a-z_]+@[A-Za-z]")
    assert metrics.degenerate_words(clean) == [] and metrics.degenerate_rate(clean) == 0.0
    assert metrics.degenerate_rate("") == 0.0
    assert metrics.degenerate_words("say #include twice, C#x and @me") == ["#include", "C#x", "@me"]  # in prose


def test_repetition_length_and_stats():
    assert metrics.repetition_rate("one two three four five six") == 0.0
    looping = " ".join(["the cat sat on the mat"] * 10)
    assert metrics.repetition_rate(looping) > 0.8
    assert metrics.length_ratio(30, 60) == 0.5
    s = metrics.stats([1.0, 3.0, float("nan"), 2.0])
    assert (s["mean"], s["median"], s["max"], s["n"]) == (2.0, 2.0, 3.0, 3)
    assert metrics.relative_delta(2.02, 2.0) == pytest.approx(0.01)


def test_cosine_of_identical_texts_is_one():
    a = "Exercise regularly, sleep well, and eat vegetables."
    same, other = cosine([a, a], [a, "The capital of France is Paris."])
    assert same == pytest.approx(1.0, abs=1e-5)
    assert other < 0.5


def test_sibling_similarity_is_the_mean_over_sibling_pairs():
    a, b = "Exercise regularly, sleep well.", "The capital of France is Paris."
    assert sibling_similarity([[a, a, a]]) == pytest.approx(1.0, abs=1e-5)
    assert sibling_similarity([[a, b]]) == pytest.approx(cosine([a], [b])[0], abs=1e-5)
    assert sibling_similarity([[a]]) != sibling_similarity([[a]])  # NaN: no pair of siblings


def test_answer_loss_is_the_mean_token_nll():
    loaded = tiny_model(seed=3)
    eng = Engine(loaded)
    prompt, answer = eng.encode("question: why?\n"), eng.encode("because it is.")
    # independent computation: the engine's scoring path (KV cache, one token at a time)
    seq = eng.new_sequence(prompt)
    lps = eng.score(seq, ["because it is."])[0]
    assert answer_loss(loaded.model, prompt, answer) == pytest.approx(-sum(lps) / len(lps), rel=1e-4)


def _qfile(tmp_path, n: int = 3):
    path = tmp_path / "q.jsonl"
    rows = [{"question_id": i + 1, "category": ["generic", "math", "coding"][i % 3],
             "turns": [f"how do i cook {w}?"]} for i, w in enumerate(["rice", "eggs", "pasta", "soup"][:n])]
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def _run(tmp_path, qs, names=("hf", "ar", "aspd", "sot")):
    loaded = tiny_model(seed=1, max_positions=2048)  # character tokens: SoT's prompt and outline are long
    params = SamplingParams(max_new_tokens=12, repetition_penalty=1.2)
    from rich.console import Console

    eng = Engine(loaded)
    return harness.run(qs, list(names), harness.Models(eng, eng), params, tmp_path / "out",
                       {"questions": "test"}, Console(quiet=True))


def test_harness_end_to_end_on_three_questions(tmp_path):
    qs = questions.load(_qfile(tmp_path))
    summary = _run(tmp_path, qs)
    out = tmp_path / "out"
    rows = [json.loads(x) for x in (out / "answers.jsonl").read_text().splitlines()]
    assert len(rows) == 12 and not any(r["error"] for r in rows)
    assert {r["system"] for r in rows} == {"hf", "ar", "aspd", "sot"}
    by = {(r["system"], r["question_id"]): r for r in rows}
    for q in (1, 2, 3):
        # same model, same greedy settings and penalty: transformers' generate and our AR engine agree
        assert by[("hf", q)]["text"] == by[("ar", q)]["text"]
        assert by[("ar", q)]["speed"]["speedup_vs_ar"] == 1.0
        assert by[("hf", q)]["quality"]["cosine"] == pytest.approx(1.0, abs=1e-5)
        sot = by[("sot", q)]
        assert sot["blocks"] == 1 and sot["branches"] == 4 and sot["critical_path_tokens"] < sot["completion_tokens"]
        for r in (by[(s, q)] for s in ("hf", "ar", "aspd", "sot")):
            assert r["latency_s"] > 0 and r["ttft_s"] is not None and 0 < r["ttft_s"] <= r["latency_s"]
            assert math.isfinite(r["quality"]["loss"])
    s = json.loads((out / "summary.json").read_text())
    assert set(s["systems"]) == {"hf", "ar", "aspd", "sot"}
    assert s["systems"]["ar"]["speedup_vs_ar"]["mean"] == 1.0
    for k in ("mean", "median", "max"):
        assert s["systems"]["sot"]["speedup_vs_hf"][k] is not None
    assert s["systems"]["hf"]["quality_delta"]["loss"] == 0.0
    assert set(s["categories"]) == {"generic", "math", "coding"}
    assert summary["meta"]["reference"] == "hf"
    for f in ("report.md", "speedup_by_category.png", "latency.png", "quality_vs_speedup.png"):
        assert (out / f).stat().st_size > 0
    assert "| sot |" in (out / "report.md").read_text()


def test_without_hf_quality_uses_the_engine_base_ar_reference(tmp_path):
    qs = questions.load(_qfile(tmp_path, 1))
    summary = _run(tmp_path, qs, names=("ar",))
    assert summary["meta"]["reference"] == "base-ar"
    assert summary["systems"]["ar"]["quality"]["cosine"] == pytest.approx(1.0, abs=1e-5)  # same model here
    assert list(summary["systems"]) == ["ar"]


def test_interrupted_run_resumes_without_redoing_answers(tmp_path):
    path = _qfile(tmp_path, 3)
    qs = questions.load(path)
    _run(tmp_path, qs[:2], names=("ar", "aspd"))
    answers = tmp_path / "out" / "answers.jsonl"
    first = {(r["system"], r["question_id"]): r["latency_s"] for r in map(json.loads, answers.read_text().splitlines())}
    assert len(first) == 6  # ar, aspd and the untimed base-model reference (no hf here)
    with answers.open("a") as f:  # a run killed while writing its next line
        f.write('{"question_id": 3, "system": "ar", "te')
    _run(tmp_path, qs, names=("ar", "aspd"))
    rows = [json.loads(x) for x in answers.read_text().splitlines()]
    assert len(rows) == 9
    again = {(r["system"], r["question_id"]): r["latency_s"] for r in rows}
    assert all(again[k] == v for k, v in first.items())  # the finished answers were not redone


def test_failed_answers_are_kept_and_retried(tmp_path):
    qs = questions.load(_qfile(tmp_path, 1))
    loaded = tiny_model(seed=1)
    store = harness.Store(tmp_path / "a.jsonl")

    class Flaky:
        name, calls = "flaky", 0

        def answer(self, q):
            Flaky.calls += 1
            if Flaky.calls == 1:  # the first run's first call (its warm-up)
                raise RuntimeError("server went away")
            return harness.EngineSystem("flaky", Engine(loaded), SamplingParams(max_new_tokens=3), "ar").answer(q)

    harness.answer_all(qs, [Flaky()], store)
    assert store.rows[0]["error"] == "RuntimeError: server went away"
    harness.answer_all(qs, [Flaky()], store)
    assert len(store.rows) == 1 and store.rows[0]["error"] is None


@pytest.mark.parametrize("line, msg", [
    ("{not json", "q.jsonl:2: not valid JSON"),
    ('{"question_id": 7, "category": "x"}', "q.jsonl:2: turns: Field required"),
    ('{"question_id": 7, "turns": []}', "q.jsonl:2: turns: List should have at least 1 item"),
    ('{"question_id": 1, "turns": ["again?"]}', "q.jsonl:2: duplicate question_id 1"),
    ('{"question_id": 7, "turns": ["  "]}', "q.jsonl:2: the first turn is empty"),
])
def test_malformed_questions_file_names_the_line(tmp_path, line, msg):
    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "turns": ["hi?"]}\n' + line + "\n")
    with pytest.raises(questions.QuestionsError, match=msg):
        questions.load(path)


def test_cli_reports_a_bad_questions_file_and_bad_systems(tmp_path, capsys):
    from aspd_cli.main import main

    path = tmp_path / "q.jsonl"
    path.write_text('{"question_id": 1, "turns": ["hi?"]}\n[1, 2]\n')
    assert main(["bench", "--questions", str(path), "--out", str(tmp_path / "o")]) == 2
    assert "q.jsonl:2" in capsys.readouterr().err
    assert main(["bench", "--systems", "ar,gpt5", "--out", str(tmp_path / "o")]) == 2
    assert "unknown system 'gpt5'" in capsys.readouterr().err


def test_vicuna80_ships_and_parses():
    qs = questions.load(questions.VICUNA80)
    assert len(qs) == 80 and len({q.category for q in qs}) == 9


def test_quality_delta_marks_the_one_percent_line():
    assert run_report._delta(0.004, better_up=False)[1] == "green"
    assert run_report._delta(0.03, better_up=False)[1] == "red"
    assert run_report._delta(-0.03, better_up=True)[1] == "red"
    assert run_report._delta(-0.2, better_up=False)[1] == "green"  # lower loss is better


def test_sglang_system_over_a_real_server(tmp_path):
    """`sglang@URL` against `aspd serve` (tiny model, in a thread): the streamed text, the tokens
    from usage, a first-token time; then the harness with it and the FastChat judge over the same server."""
    from bench.answer_grader import Grader, rating
    from tests.serve_util import serve_in_thread

    qs = questions.load(_qfile(tmp_path, 2))
    eng = Engine(tiny_model(seed=1, max_positions=4096))
    with serve_in_thread(eng) as (url, _):
        params = SamplingParams(max_new_tokens=10, repetition_penalty=1.2)
        system = harness.build([f"sglang@{url}"], harness.Models(eng, eng), params)[0]
        a = system.answer(qs[0])
        assert a.system == f"sglang@{url}" and a.completion_tokens == len(eng.encode(a.text)) > 0
        assert 0 < a.ttft_s <= a.latency_s
        g = Grader(url).grade("1", "math", "what is 2+2?", "4")
        assert g is None or 1 <= g <= 10  # the tiny model rarely writes "[[n]]": None is the honest answer
    assert rating("The answer is fine. Rating: [[7]]") == 7.0 and rating("no verdict") is None


def test_decoding_default_is_the_most_natural_setting_that_never_loops():
    from bench.decoding import choose

    def row(p, n, loops, degenerate, loss):
        return {"repetition_penalty": p, "no_repeat_ngram_size": n, "loops": loops, "degenerate": degenerate,
                "loss": loss}

    plain = row(1.0, 0, 0.3, 0.006, 0.4)  # loops: most natural by loss, never chosen
    rows = [plain, row(1.2, 0, 0.0, 0.002, 1.2), row(1.0, 5, 0.0, 0.002, 0.77), row(1.0, 6, 0.0125, 0.006, 0.74),
            row(1.05, 5, 0.0, 0.02, 0.6)]  # the last writes broken words
    assert choose(rows)["no_repeat_ngram_size"] == 5


def test_loss_regions_split_an_answer_into_its_pieces():
    from bench.loss_regions import cut_branches, opening, pieces, placed, position_key

    markup = ("Tips:\n<|title|>1. Sleep<|/title|><|title|>2. Water<|/title|><|title|>3. Walk<|/title|><|para|>"
              "<|branch|>1. Sleep: 1. **Sleep**: rest well.\n<|/branch|><|branch|>2. Water: Eight cups<|/branch|>"
              "<|branch|>3. Walk: 3. **Walk**\nDaily.<|/branch|><|/para|>Done.")
    from runtime.protocol import parse

    row = {"text": parse(markup).answer_text(), "markup": markup, "blocks": 1}
    parts = pieces(row)
    assert "".join(t for _, t in parts) == row["text"]
    assert parts == [("serial", "Tips:\n"), ("title line", "1. **Sleep**:"), ("first branch opening", " rest well."),
                     ("first branch body", "\n"), ("added", "2. Water: "), ("sibling opening", "Eight cups"),
                     ("added", "\n"), ("title line", "3. **Walk**\n"), ("sibling opening", "Daily."), ("added", "\n"),
                     ("serial", "Done.")]
    assert cut_branches(row) == (1, 3)  # "Eight cups" stopped mid-sentence
    assert [k for _, _, k in placed(row)] == [0, 1, 1, 1, 0, 2, 0, 3, 3, 0, 0]  # each piece's branch in its block
    assert [position_key(r, k) for r, _, k in placed(row)] == [
        None, "title line 1", "body 1", "body 1", None, "body 2", None, "title line 3", "body 3", None, None]
    assert position_key("sibling body", 9) == "body 6"  # later branches pooled with the sixth
    assert pieces({"text": "plain", "markup": None, "blocks": 0}) == [("serial", "plain")]
    # an answer that opens with its block; serial lists split like branches
    opens = {"text": parse(markup[len("Tips:\n"):]).answer_text(), "markup": markup[len("Tips:\n"):], "blocks": 1}
    assert pieces(opens)[0] == ("opening title line", "1. **Sleep**:")
    text = "Tips:\n\n1. **Sleep**: rest\nwell.\n\n- Walk daily\nDone.\n\nBye."
    parts = pieces({"text": text, "markup": None, "blocks": 0})
    assert "".join(t for _, t in parts) == text
    assert parts == [("serial", "Tips:\n"), ("serial", "\n"), ("list title", "1. **Sleep**:"),
                     ("list opening", " rest\n"), ("list body", "well.\n"), ("serial", "\n"),
                     ("list title", "- Walk daily\n"), ("list opening", "Done."), ("list body", "\n"), ("serial", "\n"),
                     ("serial", "Bye.")]
    # a body's opening ends at its first sentence's end (a list number's dot is none) or its line's end
    assert opening("sibling body", " 4. Rest. More") == [("sibling opening", " 4. Rest."), ("sibling body", " More")]
    assert opening("list body", " Born in 2023. Then") == [("list opening", " Born in 2023."), ("list body", " Then")]
    assert opening("sibling body", " It costs $3.50 a day. Then more.") == [
        ("sibling opening", " It costs $3.50 a day."), ("sibling body", " Then more.")]


def test_blind_items_split_a_bold_numbered_list_and_end_a_body_as_a_branch_would():
    from bench.steered_control import list_items
    from training.blind import blind_body

    text = "Sure.\n\n1. **Plan**: Do it.\n\n2. **Rest**: Sleep\nwell.\n\n3. **Eat**: Food.\n\nIn short, yes."
    items = list_items(text)
    assert [(text[a:b], head, sep) for _, a, b, head, sep in items] == [
        ("1. **Plan**: Do it.\n\n", "1. **Plan**:", "\n\n"), ("2. **Rest**: Sleep\nwell.\n\n", "2. **Rest**:", "\n\n"),
        ("3. **Eat**: Food.", "3. **Eat**:", "")]
    assert {g for g, *_ in items} == {text.index("1.")}  # one block: every branch sees only "Sure.\n\n"
    assert list_items("Sure.\n\n1. Plan it.\n2. Rest.\n3. Eat.") == []  # no bold titles: not this control's shape
    assert blind_body(" Sleep a lot.\n\n3. **Eat**: more") == " Sleep a lot."
    assert blind_body(" Sleep.\n4. Walk") == " Sleep."
    assert blind_body(" Sleep\nwell. ") == " Sleep\nwell."


def test_a_serial_list_reads_as_the_block_aspd_would_have_written():
    from bench.blind_control import as_blocks
    from runtime.protocol import parse
    from training.blind import lead

    text = "Sure.\n\n1. **Plan**: Do it.\n\n2. **Rest**: Sleep\nwell.\n\n3. **Eat**: Food.\n\nIn short, yes."
    resp = as_blocks(text)
    (block,) = resp.blocks
    assert block.titles == ("1. Plan", "2. Rest", "3. Eat")
    assert parse(resp.markup()).answer_text() == text  # lossless: the serial answer as its blocks render it
    assert [lead(b) for b in block.branches] == [" 1. **Plan**:", " 2. **Rest**:", " 3. **Eat**:"]  # blind re-writes
    assert as_blocks("Sure.\n\n1. Plan it.\n2. Rest.").blocks == []  # no bold titles: stays serial


def test_a_whole_run_takes_each_list_where_the_base_model_wrote_one():
    from bench.blind_control import merged

    run = [{"question_id": q, "loss": 1.0} for q in ("1", "2", "3")]
    lists = [{"question_id": "2", "loss": 2.0}, {"question_id": "9", "loss": 5.0}]
    assert [r["loss"] for r in merged(run, lists)] == [1.0, 2.0, 1.0]  # the run's questions, in its order


def test_compare_reads_the_committed_run_and_its_loss_matches_the_bench(tmp_path, capsys):
    """`bench/compare.py` on the committed Vicuna-80 run against itself: its loss over every answer both
    runs fork is a ratio of sums; over all answers it is the bench's own relative delta."""
    from pathlib import Path

    from bench import compare

    run = Path(__file__).resolve().parents[1] / "bench" / "results" / "vicuna80"
    summary, rows = compare.load(run)
    every = sorted({q for _, q in rows})
    want = summary["systems"]["aspd"]["quality_delta"]["loss"]
    assert compare.loss_delta(rows, "aspd", every) == pytest.approx(want, abs=5e-4)
    assert compare.main([str(run), str(run)]) == 0
    out = capsys.readouterr().out
    assert f"{summary['systems']['aspd']['fork_share']:.1%}" in out and "different CPUs" not in out
    assert compare.main([str(run), str(tmp_path)]) == 2
    assert "no summary.json" in capsys.readouterr().err
