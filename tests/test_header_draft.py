"""Drafted header tokens (runtime/header_draft.py): what is drafted, and that verifying a draft in the
step that feeds it never changes the text, whatever the draft, while a right draft saves forwards."""

from __future__ import annotations

import pytest

from runtime import constraint as C
from runtime import protocol as P
from runtime.engine import Engine
from runtime.header_draft import draft, number
from runtime.run import Run
from runtime.sampling import SamplingParams
from runtime.titles import Titles
from tests.model_util import markup_heavy_engine

IDS = P.SpecialIds(title=1, end_title=2, para=3, branch=4, end_branch=5, end_para=6, eos=frozenset({0}))


def enc(text: str) -> list[int]:
    return [100 + ord(c) for c in text]


def test_title_numbers():
    assert number("2. Set a routine") == 2 and number("12. More") == 12
    assert number("Python") is None and number("2.5 million") is None and number("2.") is None


def test_the_next_title_is_drafted_with_its_number_and_a_first_title_starts_at_one():
    closed = C.Phase.TITLES_CLOSED
    assert draft(closed, 0, ["1. Eat well", "2. Sleep"], [], enc, IDS) == [IDS.title, *enc("3.")]
    assert draft(closed, 0, ["Python", "Rust"], [], enc, IDS) == [IDS.title]  # unnumbered: only the opening
    assert draft(C.Phase.TITLE, 0, [], [], enc, IDS) == enc("1.")
    assert draft(C.Phase.TITLE, 0, [], ["4. Rest", "5. Walk"], enc, IDS) == enc("6.")  # a later block numbers on
    assert draft(C.Phase.TITLE, 0, [], ["Rest"], enc, IDS) == enc("1.")
    assert draft(C.Phase.TITLE, 2, [], [], enc, IDS) == []  # inside a title: nothing predictable
    assert draft(C.Phase.SERIAL, 0, [], [], enc, IDS) == []


def test_titles_are_tracked_per_header_and_kept_for_the_answer():
    """The constraint's phase before each token, as the run passes it: two headers with text between."""
    t, ph = Titles(), C.Phase
    written = [(7, ph.SERIAL), (IDS.title, ph.SERIAL), (11, ph.TITLE), (12, ph.TITLE), (IDS.end_title, ph.TITLE),
               (IDS.title, ph.TITLES_CLOSED), (13, ph.TITLE)]
    for pos, (tok, phase) in enumerate(written):
        t.track(tok, phase, pos, IDS)
    assert t.current == [[11, 12], [13]] and t.earlier == [] and t.header_start == 1
    assert t.closed(ph.TITLE) == [[11, 12]] and t.closed(ph.TITLES_CLOSED) == [[11, 12], [13]]
    t.track(IDS.title, ph.SERIAL, 20, IDS)  # a later block's header: the first one's titles become earlier
    assert t.current == [[]] and t.earlier == [[11, 12], [13]] and t.header_start == 20
    assert t.all() == [[11, 12], [13], []]


def _answers(eng: Engine, seeds: range, **kw) -> list[tuple[str, int]]:
    out = []
    for seed in seeds:
        seq = eng.new_sequence("q: ")
        res = eng.generate(seq, SamplingParams(max_new_tokens=120, max_branch_tokens=8, max_title_tokens=4,
                                               max_branches=4, seed=seed, **kw), "aspd")
        out.append((eng.text(seq), res.forward_passes))
    return out


@pytest.mark.parametrize("fast", [True, False], ids=["fast", "transformers"])
@pytest.mark.parametrize("sampling", [{}, {"temperature": 1.0}], ids=["greedy", "sampled"])
def test_verified_drafts_never_change_the_text_and_right_ones_save_forwards(monkeypatch, fast, sampling):
    """An oracle drafts the next three tokens of the undrafted answer at every serial step, right or with
    its middle token wrong: the written text (markup, cache and all) is the undrafted one every time;
    right drafts take fewer forwards."""
    eng = markup_heavy_engine(4)
    eng = Engine(eng.loaded, fast=fast, drafts=False)
    seeds = range(12)
    plain = _answers(eng, seeds, **sampling)
    assert sum(t.count(P.PARA) for t, _ in plain) >= 3  # the answers open blocks: drafts run across joins
    eng.drafts = True
    y, z = eng.encode("yz")
    for wrong in (False, True):
        passes = 0
        for seed, (text, _) in zip(seeds, plain):
            ref = Engine(eng.loaded, fast=fast, drafts=False)  # the undrafted answer's serial tokens
            seq = ref.new_sequence("q: ")
            ref.generate(seq, SamplingParams(max_new_tokens=120, max_branch_tokens=8, max_title_tokens=4,
                                             max_branches=4, seed=seed, **sampling), "aspd")
            monkeypatch.setattr(Run, "_propose", _oracle(_serial_generated(ref, seq), wrong, y, z))
            got = _answers(eng, range(seed, seed + 1), **sampling)[0]
            assert got[0] == text
            passes += got[1]
        total = sum(n for _, n in plain)
        assert passes < total if not wrong else passes <= total


def _oracle(truth: list[int], wrong: bool, y: int, z: int):
    """A proposer that drafts the next three tokens of `truth` (with the middle one wrong)."""
    def propose(run: Run) -> list[int]:
        done = len(run.seq.serial.generated)
        ahead = truth[done:done + 3]
        if wrong and len(ahead) == 3:
            ahead[1] = z if ahead[1] != z else y
        return ahead
    return propose


def _serial_generated(eng: Engine, seq) -> list[int]:
    """The serial stream's sampled tokens of the answer (as `Run` counts them), markup included."""
    toks, tags = seq.written_sequence()
    prompt = len(eng.encode("q: "))
    return [t for t, tag in zip(toks[prompt:], tags[prompt:]) if tag == P.SERIAL_TAG]


def test_a_rejected_draft_leaves_the_cache_as_if_never_fed(monkeypatch):
    """After a wrong draft the cache holds no dead entries: later steps keep the mask-free serial path."""
    eng = markup_heavy_engine(4)
    eng.drafts = True
    monkeypatch.setattr(Run, "_propose", lambda run: [eng.ids.end_para] * 3)  # never sampled in serial text
    for seed in range(5):
        seq = eng.new_sequence("q: ")
        eng.generate(seq, SamplingParams(max_new_tokens=40, max_branch_tokens=8, max_title_tokens=4,
                                         temperature=1.0, seed=seed), "aspd")
        assert not seq.kv.has_dead and seq.kv.length == len(seq.written_sequence()[0])


def test_drafted_headers_in_a_batch_equal_undrafted_answers_alone():
    """The serving loop batches a drafted step (several tokens of one sequence) with other sequences'
    one-token steps: every answer is the undrafted answer decoded alone, in fewer forwards."""
    from runtime.offline import complete

    lm = markup_heavy_engine(5).loaded
    params = SamplingParams(max_new_tokens=80, max_branch_tokens=6, max_title_tokens=3, max_branches=4)
    prompts = [[t] for t in Engine(lm).encode("abcdefgh")]
    plain = Engine(lm, drafts=False)
    alone = [plain.generate(plain.new_sequence(p), params, "aspd") for p in prompts]
    assert sum(len(o.blocks) for o in alone) >= 4
    drafted = Engine(lm, drafts=True)
    got = dict(complete(drafted, prompts, params, mode="aspd", batch=4))
    assert [got[i].result.output.markup for i in range(len(prompts))] == [o.markup for o in alone]
    single = Engine(lm, drafts=True)
    assert sum(single.generate(single.new_sequence(p), params, "aspd").forward_passes for p in prompts) < sum(
        o.forward_passes for o in alone)
