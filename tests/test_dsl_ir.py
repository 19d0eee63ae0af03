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
    # every gen shows its cap and temperature (greedy here, unlike sgl.gen) and what else it sets
    assert "gen('tip1', max_tokens=48, stop=('\\n',), temperature=0.0)" in p.pretty()


def test_ir_json_round_trip():
    p = tips.ir()
    again = ir.Program.model_validate_json(p.model_dump_json())
    assert again == p
    assert json.loads(p.model_dump_json())["body"][1]["body"][1]["kind"] == "parallel"


def _err(fn) -> str:
    with pytest.raises(ir.ProgramError) as e:
        program(fn).ir()
    return str(e.value)


def _one_line(fn) -> str:
    msg = _err(fn)
    assert "\n" not in msg and msg.startswith(f"program {fn.__name__!r}"), msg
    return msg


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
    assert "select('pick')" in _err(sel) and "at least 2 choices, got 0" in _err(sel)


def test_a_one_choice_select_says_to_write_text():
    def one(s):
        s += "x" + select("pick", ["only"])
    assert "select needs at least 2 choices, got 1 (a fixed string is text: s += ...)" in _one_line(one)

    def string(s):
        s += "x" + select("pick", "ab")
    assert "choices must be a list of strings, got the string 'ab'" in _one_line(string)


def test_stop_that_is_not_a_string_or_is_empty():
    def number(s):
        s += "x" + gen("y", stop=10)
    assert "gen('y')" in _one_line(number) and "stop must be a string or a list of strings, got 10" in _one_line(number)

    def empty(s):
        s += "x" + gen("y", stop=["", "\n"])
    assert "a stop string is empty (it would match at once): drop it" in _one_line(empty)


def test_duplicate_titles():
    def dup(s):
        with s.parallel(["a", "b", "a"]) as bs:
            for i, b in enumerate(bs):
                b += "go" + gen(f"x{i}")
    assert "branch title 'a' appears 2 times: titles name the branches, make them distinct" in _one_line(dup)


def test_writing_to_the_parent_inside_a_parallel_block():
    def inside(s):
        s += "list:"
        with s.parallel(["a", "b"]) as bs:
            bs[0] += "one" + gen("x")
            s += "oops"
            bs[1] += "two" + gen("y")
    msg = _one_line(inside)
    assert "`s += ...` on the parent inside the parallel block opened at test_dsl_ir.py:" in msg
    assert f"test_dsl_ir.py:{inside.__code__.co_firstlineno + 4}:" in msg and "write to a branch (b += ...)" in msg


def test_constrained_gen_is_in_the_ir():
    from pydantic import BaseModel

    class City(BaseModel):
        name: str

    def typed(s):
        s += "n=" + gen("n", regex="[0-9]+") + " c=" + gen("c", json_schema=City)
    p = program(typed).ir()
    n, c = p.body[1], p.body[3]
    assert n.regex == "[0-9]+" and json.loads(c.json_schema)["properties"]["name"]["type"] == "string"

    def both(s):
        s += "n=" + gen("n", regex="[0-9]+", json_schema="{}")
    assert "give at most one of regex and json_schema" in _one_line(both)

    def pick(s):
        s += "c=" + gen("c", choices=["a.b", "c"])
    assert program(pick).ir().body[1].regex == r"(a\.b|c)"  # each choice literally

    def bad_choices(s):
        s += "c=" + gen("c", choices="ab")
    assert "choices must be a list of non-empty strings, got 'ab'" in _one_line(bad_choices)

    def choices_and_regex(s):
        s += "c=" + gen("c", choices=["a", "b"], regex="a")
    assert "give one of regex, json_schema and choices" in _one_line(choices_and_regex)


def test_a_list_argument_shapes_the_trace():
    def cities(s, names):
        with s.parallel(names) as bs:
            for i, b in enumerate(bs):
                b += b.title + gen(f"x{i}")
        s += select("best", names)
    prog = program(cities)
    p = prog.ir(names=["Lima", "Oslo", "Rome"])
    assert [b.title for b in p.body[0].branches] == ["Lima", "Oslo", "Rome"]
    assert p.body[1].choices == ("Lima", "Oslo", "Rome")
    with pytest.raises(ir.ProgramError, match="uses an argument as data .*give its value, cities.ir\\(names=...\\)"):
        prog.ir()
    with pytest.raises(ir.ProgramError, match="missing \\['names'\\]"):
        prog.ir(other=1)


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
    assert ("reads variable 'x' of sibling branch 'a': branches run in parallel and cannot see each other; "
            "read it after the block") in _one_line(cross)


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
