"""The `aspd` command's wiring, without loading a model: the parser, the one set of model flags,
serve's defaults, the one error handler, the version."""

from __future__ import annotations

import dataclasses
import importlib.metadata

import pytest

from aspd_cli import serve
from aspd_cli.main import main, parser
from runtime.serving import ServeConfig

COMMANDS = ("generate", "demo", "run", "data", "train", "calibrate", "bench", "serve")


def test_every_command_parses_and_dispatches():
    ap = parser()
    argv = {"generate": ["hi"], "run": ["programs/tips.py"], "data": ["all"]}
    for cmd in COMMANDS:
        args = ap.parse_args([cmd, *argv.get(cmd, [])])
        assert callable(args.func) and args.model is None, cmd


def test_demo_keeps_its_own_token_budget():
    assert parser().parse_args(["demo"]).max_new_tokens == 512
    assert parser().parse_args(["generate", "hi"]).max_new_tokens == 256


def test_serve_limits_default_to_serve_config():
    assert serve.serve_config(parser().parse_args(["serve"])) == ServeConfig()
    c = serve.serve_config(parser().parse_args(["serve", "--max-queue", "0", "--prefill-share", "1"]))
    assert dataclasses.replace(ServeConfig(), max_waiting=0, prefill_share=1.0) == c


def test_the_structure_flags_reach_sampling_params_and_the_reports():
    from aspd_cli.common import sampling_from
    from runtime.sampling import SamplingParams, describe_structure, structure_from

    assert sampling_from(parser().parse_args(["generate", "hi"])) == SamplingParams(max_new_tokens=256)
    p = sampling_from(parser().parse_args(["run", "programs/tips.py", "--max-branches", "4", "--intro-first"]))
    assert (p.max_branches, p.intro_first) == (4, True)
    for cmd in ("bench", "serve"):  # bench's aspd system; serve's default for requests that set none
        assert structure_from(parser().parse_args([cmd, "--intro-first"])) == {"intro_first": True}
    assert describe_structure(p.model_dump(exclude_defaults=True)) == (
        ", at most 4 branches a block, a chat answer's first line serial")
    assert describe_structure(SamplingParams().model_dump()) == ""  # the defaults: said nowhere


@pytest.mark.parametrize("argv,msg", [
    (["demo", "--titles", "one"], "at least two"),
    (["serve", "--max-running", "0"], "--max-running and --prefill-chunk must be >= 1"),
    (["run", "programs/missing.py"], "no program file"),
    (["run", "programs/tips.py", "--arg", "topic"], "--arg needs K=V"),
    (["generate", "hi", "--top-p", "0"], "invalid sampling parameter top_p"),
    (["demo", "--max-branches", "1"], "invalid sampling parameter max_branches"),
    (["serve", "--max-branches", "1"], "invalid sampling parameter max_branches"),  # before the model loads
    (["data", "responses", "--prompts", "no/such/folder"], "no no/such/folder/prompts_train.jsonl"),
    (["train", "--anchor-branches", "2"], "--anchor and --anchor-branches are shares of the loss"),
    (["train", "--anchor-blind"], "--anchor-blind needs --anchor-branches W > 0"),
    (["data", "blind"], "blind needs --source DIR"),
    (["data", "blind", "--source", "data/aspd_v3", "--out", "/tmp/aspd_v4_test", "--first-draw", "0"],
     "--first-draw N: the size of a training draw"),
])
def test_user_errors_are_one_line_and_exit_2(argv, msg, capsys):
    assert main(argv) == 2
    out = " ".join(capsys.readouterr().err.split())
    assert out.startswith("error:") and msg in out and "Traceback" not in out


def test_the_version_is_defined_once():
    import aspd_lang
    import runtime

    assert aspd_lang.__version__ == runtime.__version__ == importlib.metadata.version("aspd-lang")
