"""Constrained generation benchmark: every output matches its regex or validates against its schema,
serially and inside parallel branches, and what the grammar's mask costs in tokens/s.

    .venv/bin/python bench/constrained.py       # writes bench/results/constrained.json

Each case is a prompt and a grammar (`regex` or `json_schema`). Serial: the case's answer decoded
with its grammar and, on the same prompt and sampling, without (tokens/s compared). Branches: the
cases in groups of `--branches`, each group one plain parallel block over a shared prompt, each
branch its own case's grammar (`Engine.decode_branches`). Every constrained output must match
(regex: `re.fullmatch`) or parse and validate (JSON: `schema_ok`); the run fails otherwise.
"""

from __future__ import annotations

import json
import re
import sys
import time
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from bench import common  # noqa: E402

OUT = Path(__file__).resolve().parent / "results" / "constrained.json"


@dataclass(frozen=True)
class Case:
    name: str
    prompt: str
    regex: str | None = None
    schema: dict | None = None

    @property
    def grammar(self) -> dict:
        """The case's grammar as SamplingParams fields."""
        return {"regex": self.regex} if self.regex is not None else {"json_schema": json.dumps(self.schema)}

    def ok(self, text: str) -> bool:
        if self.regex is not None:
            return re.fullmatch(self.regex, text) is not None
        try:
            value = json.loads(text)
        except json.JSONDecodeError:
            return False
        return schema_ok(value, self.schema)


def _obj(props: dict, required: list[str] | None = None) -> dict:
    return {"type": "object", "properties": props, "required": required or list(props),
            "additionalProperties": False}


NAME = {"type": "string", "minLength": 1, "maxLength": 24}
CASES = [
    Case("date", "Today's date, as YYYY-MM-DD:", regex=r"\d{4}-(0[1-9]|1[0-2])-(0[1-9]|[12]\d|3[01])"),
    Case("time", "The time of the meeting (24-hour HH:MM):", regex=r"([01]\d|2[0-3]):[0-5]\d"),
    Case("us phone", "A US phone number:", regex=r"\(\d{3}\) \d{3}-\d{4}"),
    Case("intl phone", "An international phone number:", regex=r"\+\d{1,3} \d{2,4} \d{3,4} \d{3,4}"),
    Case("email", "An email address for support:", regex=r"[a-z][a-z0-9.]{1,15}@[a-z]{2,12}\.(com|org|net)"),
    Case("yes/no", "Is the Earth round? Answer yes or no.", regex=r"(yes|no)"),
    Case("sentiment", "The sentiment of 'I loved this film':", regex=r"(positive|negative|neutral)"),
    Case("integer", "How many legs does a spider have?", regex=r"-?\d{1,4}"),
    Case("decimal", "Pi to two decimals:", regex=r"\d{1,3}\.\d{2}"),
    Case("hex colour", "A hex colour code for blue:", regex=r"#[0-9a-fA-F]{6}"),
    Case("ipv4", "An example IPv4 address:", regex=r"((25[0-5]|2[0-4]\d|1?\d?\d)\.){3}(25[0-5]|2[0-4]\d|1?\d?\d)"),
    Case("zip", "A US ZIP code:", regex=r"\d{5}(-\d{4})?"),
    Case("semver", "A semantic version number:", regex=r"\d{1,2}\.\d{1,2}\.\d{1,3}"),
    Case("title case", "A three-word book title:", regex=r"[A-Z][a-z]{1,11}( [A-Z][a-z]{1,11}){2}"),
    Case("list of 3", "Three fruits, comma-separated:", regex=r"[a-z]{3,12}(, [a-z]{3,12}){2}"),
    Case("money", "The price of a coffee:", regex=r"\$\d{1,3}\.\d{2}"),
    Case("person", "Describe a person as JSON.", schema=_obj(
        {"name": NAME, "age": {"type": "integer", "minimum": 0, "maximum": 120}, "email": NAME})),
    Case("enum", "The weather today as JSON.", schema=_obj(
        {"sky": {"enum": ["sunny", "cloudy", "rainy", "snowy"]}, "temp_c": {"type": "integer", "minimum": -50,
                                                                              "maximum": 50}})),
    Case("array of ints", "Five prime numbers as a JSON array.", schema={
        "type": "array", "items": {"type": "integer", "minimum": 0, "maximum": 1000}, "minItems": 5, "maxItems": 5}),
    Case("array of strings", "Three colours as a JSON array.", schema={
        "type": "array", "items": NAME, "minItems": 3, "maxItems": 3}),
    Case("boolean object", "Is water wet? JSON with a field 'answer'.", schema=_obj({"answer": {"type": "boolean"}})),
    Case("nested", "A book as JSON: title, author (name, born) and year.", schema=_obj(
        {"title": NAME, "author": _obj({"name": NAME, "born": {"type": "integer", "minimum": 1000, "maximum": 2025}}),
         "year": {"type": "integer", "minimum": 1000, "maximum": 2025}})),
    Case("optional field", "A product as JSON (name, price, optional tag).", schema=_obj(
        {"name": NAME, "price": {"type": "number", "minimum": 0, "maximum": 10000}, "tag": NAME}, ["name", "price"])),
    Case("list of objects", "Two cities and their countries, as JSON.", schema={
        "type": "array", "items": _obj({"city": NAME, "country": NAME}), "minItems": 2, "maxItems": 2}),
    Case("pattern field", "A user record as JSON with a date of birth.", schema=_obj(
        {"user": NAME, "dob": {"type": "string", "pattern": r"^\d{4}-\d{2}-\d{2}$"}})),
    Case("free keys", "A JSON object describing a cat, in a few fields.", schema={
        "type": "object", "additionalProperties": NAME, "minProperties": 1, "maxProperties": 4}),
]


def schema_ok(value, schema: dict) -> bool:
    """`value` valid under `schema`: `jsonschema` where installed, else the subset these cases use
    (type, enum, const, properties, required, additionalProperties, items, min/maxItems,
    min/maxLength, pattern, minimum/maximum, min/maxProperties)."""
    try:
        import jsonschema
    except ImportError:
        return _subset_ok(value, schema)
    return jsonschema.Draft202012Validator(schema).is_valid(value)


_TYPES = {"object": dict, "array": list, "string": str, "boolean": bool, "null": type(None)}


def _type_ok(value, t: str) -> bool:
    if t in ("integer", "number"):
        return isinstance(value, int | float) and not isinstance(value, bool) and (
            t == "number" or float(value).is_integer())
    return isinstance(value, _TYPES[t])


def _subset_ok(v, s: dict) -> bool:
    types = s.get("type")
    if types is not None and not any(_type_ok(v, t) for t in ([types] if isinstance(types, str) else types)):
        return False
    if "enum" in s and v not in s["enum"] or "const" in s and v != s["const"]:
        return False
    if isinstance(v, dict):
        props, extra = s.get("properties", {}), s.get("additionalProperties", {})
        if any(k not in v for k in s.get("required", ())):
            return False
        if not s.get("minProperties", 0) <= len(v) <= s.get("maxProperties", len(v)):
            return False
        if extra is False and any(k not in props for k in v):
            return False
        return all(_subset_ok(x, props.get(k, extra if isinstance(extra, dict) else {})) for k, x in v.items())
    if isinstance(v, list):
        if not s.get("minItems", 0) <= len(v) <= s.get("maxItems", len(v)):
            return False
        return all(_subset_ok(x, s["items"]) for x in v) if "items" in s else True
    if isinstance(v, str):
        return (s.get("minLength", 0) <= len(v) <= s.get("maxLength", len(v))
                and ("pattern" not in s or re.search(s["pattern"], v) is not None))
    if isinstance(v, int | float) and not isinstance(v, bool):
        return s.get("minimum", v) <= v <= s.get("maximum", v)
    return True


def serial(eng, cases: list[Case], seeds: list[int], **sampling) -> list[dict]:
    """Each case and seed: the constrained answer and the unconstrained one on the same prompt."""
    from runtime.sampling import SamplingParams

    rows = []
    warm = SamplingParams(max_new_tokens=2, regex="a+")  # builds llguidance's tokenizer outside the clock
    eng.generate(eng.new_sequence("warm up"), warm, "ar")
    for case in cases:
        prompt = eng.chat_prompt(case.prompt)
        for seed in seeds:
            got = {}
            for label, grammar in (("constrained", case.grammar), ("free", {})):
                out = eng.generate(eng.new_sequence(prompt), SamplingParams(seed=seed, **sampling, **grammar), "ar")
                got[label] = out
            c, f = got["constrained"], got["free"]
            rows.append({"case": case.name, "seed": seed, "text": c.text, "ok": case.ok(c.text),
                         "finish": c.finish_reason, "tokens": c.completion_tokens, "s": c.total_s,
                         "ttft_s": c.ttft_s, "free_tokens": f.completion_tokens, "free_s": f.total_s,
                         "free_ttft_s": f.ttft_s})
    return rows


def branches(eng, cases: list[Case], seeds: list[int], width: int, **sampling) -> list[dict]:
    """The cases `width` at a time as the branches of one plain block, each branch its own grammar."""
    from runtime.sampling import SamplingParams

    rows = []
    for i in range(0, len(cases), width):
        group = cases[i:i + width]
        for seed in seeds:
            seq = eng.new_sequence(eng.chat_prompt("Answer each item on its own line."))
            eng.open_block(seq)
            for case in group:
                eng.add_branch(seq, "\n" + case.prompt + " ")
            reqs = {j: SamplingParams(seed=seed + j, **sampling, **case.grammar) for j, case in enumerate(group)}
            out = eng.decode_branches(seq, reqs)
            eng.release(seq)
            for case, br in zip(group, out.response.blocks[0].branches):
                rows.append({"case": case.name, "seed": seed, "text": br.body, "ok": case.ok(br.body)})
    return rows


def summary(serial_rows: list[dict], branch_rows: list[dict]) -> dict:
    """Validity, and decode tokens/s (after the first token: the prompt's prefill is the same work
    either way, and constrained answers are shorter) with and without the grammar."""
    tok = sum(max(r["tokens"] - 1, 0) for r in serial_rows)
    s = sum(r["s"] - r["ttft_s"] for r in serial_rows)
    free_tok = sum(max(r["free_tokens"] - 1, 0) for r in serial_rows)
    free_s = sum(r["free_s"] - r["free_ttft_s"] for r in serial_rows)
    every = serial_rows + branch_rows
    return {"outputs": len(every), "valid": sum(r["ok"] for r in every),
            "valid_rate": round(sum(r["ok"] for r in every) / max(len(every), 1), 4),
            "serial_valid": sum(r["ok"] for r in serial_rows), "branch_valid": sum(r["ok"] for r in branch_rows),
            "constrained_tok_s": round(tok / s, 2) if s else None,
            "unconstrained_tok_s": round(free_tok / free_s, 2) if free_s else None,
            "constrained_vs_unconstrained": round((tok / s) / (free_tok / free_s), 3) if s and free_s else None}


def main() -> None:
    ap = common.parser(OUT, repeats=1)
    ap.add_argument("--adapter", default="none", help="none (default: the base model), auto or a directory")
    ap.add_argument("--seeds", type=int, default=3, help="sampled answers per case")
    ap.add_argument("--temperature", type=float, default=0.7)
    ap.add_argument("--max-new-tokens", type=int, default=256)
    ap.add_argument("--branches", type=int, default=4, help="cases per parallel block")
    ap.add_argument("--cases", default="", help="comma-separated case names (default: all)")
    args = ap.parse_args()
    from rich.console import Console

    console = Console()
    cases = [c for c in CASES if not args.cases or c.name in args.cases.split(",")]
    eng = common.engine(args)
    sampling = {"temperature": args.temperature, "max_new_tokens": args.max_new_tokens}
    seeds = list(range(args.seeds))
    t = time.perf_counter()
    ser = serial(eng, cases, seeds, **sampling)
    par = branches(eng, cases, seeds, args.branches, **sampling)
    res = {"model": args.model, "adapter": args.adapter, "summary": summary(ser, par),
           "settings": {"cases": len(cases), "seeds": args.seeds, "branches_per_block": args.branches,
                        **sampling, "library": _library()},
           "wall_s": round(time.perf_counter() - t, 1), "serial": ser, "branches": par, **common.environment()}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(res, indent=2) + "\n")
    for r in ser + par:
        if not r["ok"]:
            console.print(f"[red]INVALID[/red] {r['case']} (seed {r['seed']}): {r['text']!r}")
    console.print(res["summary"])
    console.print(f"wrote {args.out}")
    if res["summary"]["valid"] != res["summary"]["outputs"]:
        sys.exit(1)


def _library() -> str:
    from importlib.metadata import version

    return f"llguidance {version('llguidance')}"


if __name__ == "__main__":
    main()
