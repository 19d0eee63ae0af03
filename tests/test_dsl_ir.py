"""The DSL traces to a checked IR: structure, JSON round trip, and clear errors for malformed programs."""

from __future__ import annotations

import json

import pytest

from aspd_lang import ir
from aspd_lang.dsl import gen, program, select


@program
def tips(s, topic):
    with s.user():
        s += f"Give three tips about {topic}."
    with s.assistant():
        s += "Here are three tips:\n"
        with s.parallel(["Exercise", "Sleep", "Diet"]) as branches:
            for i, b in enumerate(branches):
                b += f"{i + 1}. {b.title}:" + gen(f"tip{i}", max_tokens=48, stop="\n")
        s += "\nIn short, " + s["tip0"] + gen("summary", max_tokens=32)
        s += select("mood", ["good", "bad"])


def test_trace_structure_and_locations():
    p = tips.ir()
    assert p.name == "tips" and p.params == ("topic",)
    user, asst = p.body
    assert isinstance(user, ir.Role) and user.role == "user"
    assert user.body[0].parts == ("Give three tips about ", ir.VarRef(var="topic"), ".")
    par = asst.body[1]
    assert isinstance(par, ir.Parallel) and [b.title for b in par.branches] == ["Exercise", "Sleep", "Diet"]
    text, g = par.branches[1].body
    assert text.parts == ("2. Sleep:",) and g.name == "tip1" and g.stop == ("\n",) and g.max_tokens == 48
    assert asst.body[2].parts == ("\nIn short, ", ir.VarRef(var="tip0"))
    assert g.loc.file == "test_dsl_ir.py" and g.loc.line == tips.fn.__code__.co_firstlineno + 8
    assert "parallel(3 branches)" in p.pretty()


def test_ir_json_round_trip():
    p = tips.ir()
    again = ir.Program.model_validate_json(p.model_dump_json())
    assert again == p
    assert json.loads(p.model_dump_json())["body"][1]["body"][1]["kind"] == "parallel"


def _err(fn) -> str:
    with pytest.raises(ir.ProgramError) as e:
        program(fn).ir()
    return str(e.value)


def test_nested_parallel_is_rejected_with_program_node_and_line():
    def nested(s):
        with s.parallel(["a", "b"]) as bs:
            bs[0] += "go"
            bs[1] += "go"
            with bs[0].parallel(["c", "d"]) as inner:
                inner[0] += gen("x")
    msg = _err(nested)
    assert "program 'nested'" in msg and "parallel blocks cannot be nested" in msg
    assert f"test_dsl_ir.py:{nested.__code__.co_firstlineno + 4}" in msg


def test_fewer_than_two_branches():
    def one(s):
        with s.parallel(["only"]) as bs:
            bs[0] += gen("x")
    assert "at least 2 branches, got 1" in _err(one)


def test_duplicate_variable_across_branches():
    def dup(s):
        with s.parallel(["a", "b"]) as bs:
            for b in bs:
                b += b.title + gen("tip")
    assert "variable 'tip' is defined in branches 'a' and 'b'" in _err(dup)


def test_select_without_choices():
    def sel(s):
        s += select("pick", [])
    assert "select('pick')" in _err(sel) and "at least one choice" in _err(sel)


def test_unknown_argument():
    def unk(s):
        s += gen("x", max_token=5)
    msg = _err(unk)
    assert "gen('x')" in msg and "unknown argument(s) ['max_token']" in msg


def test_invalid_argument_value():
    def bad(s):
        s += gen("x", max_tokens=0)
    assert "max_tokens" in _err(bad)


def test_reading_a_variable_before_it_exists():
    def early(s):
        s += "Summary of " + s["later"]
        s += gen("later")
    msg = _err(early)
    assert "reads variable 'later' before it exists" in msg


def test_branch_variables_are_visible_after_the_join_only():
    def cross(s):
        with s.parallel(["a", "b"]) as bs:
            bs[0] += "go" + gen("x")
            bs[1] += "see " + bs[1]["x"] + gen("y")
    assert "reads variable 'x' before it exists" in _err(cross)


def test_branch_must_start_with_text():
    def bare(s):
        with s.parallel(["a", "b"]) as bs:
            bs[0] += "a" + gen("x")
            bs[1] += gen("y")
    assert "branch 'b' must start with text" in _err(bare)


def test_adaptive_gen_inside_a_branch_and_nested_roles():
    def adaptive_in_branch(s):
        with s.parallel(["a", "b"]) as bs:
            bs[0] += "a" + gen("x", adaptive=True)
            bs[1] += "b"
    assert "adaptive gen cannot run inside a parallel block" in _err(adaptive_in_branch)

    def nested_roles(s):
        with s.user():
            with s.assistant():
                s += "x"
    assert "roles cannot be nested" in _err(nested_roles)
