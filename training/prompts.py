"""Training prompts: the shared seed instructions plus synthesised ones, deduplicated against every
benchmark the project ships, split into train and a held-out evaluation set.

Each prompt is labelled `listlike` (its natural answer is a set of independent parts: tips, steps,
pros and cons, ideas, reasons, features, comparisons, how-it-works, causes and effects, advice, signs,
role-play, what-ifs, sectioned writing) or `other` (arithmetic and word problems, Fermi estimates,
one-line facts, code, single-paragraph explanations, rewriting). Synthesised prompts carry the label of
their template; seed prompts are labelled by their wording. The filler word lists live in
`prompt_words`. Pure Python, deterministic for a seed.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

from .prompt_words import (
    ACTIVITIES,
    ANIMALS,
    BLOG_TOPICS,
    CAUSES,
    CHOICES,
    CODE,
    CONCEPTS,
    COUNTERFACTUALS,
    COUNTRIES,
    EFFECTS,
    EVENTS,
    FACTORS,
    FACTS,
    FERMI,
    GOALS,
    GROUPS,
    MATTERS,
    MECHANISMS,
    NEWS,
    PAIRS,
    PRODUCTS,
    ROLES,
    SENTENCES,
    SIGNS,
    THINGS,
)

ROOT = Path(__file__).resolve().parents[1]
DATA = ROOT / "data" / "aspd"  # the training data: prompts, answers, the dataset (`aspd data`)
SHARED = ROOT.parent / "shared" / "data"
BENCHMARKS = [ROOT / "bench" / "data" / "vicuna80" / "question.jsonl"]


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    kind: str  # "listlike" | "other"
    source: str  # "seed" | "template:<name>"


# ----------------------------------------------------------------- synthesis

LISTLIKE = {
    "tips": (["Give {n} tips for {a}.", "What are some tips for {a}?", "How can I get better at {a}? Give a few tips.",
              "What advice would you give someone who is {a}?"], {"a": ACTIVITIES}),
    "steps": (["What steps should I follow when {a}?", "Walk me through the main steps of {a}.",
               "Give me a checklist for {a}."], {"a": ACTIVITIES}),
    "mistakes": (["What are common mistakes people make when {a}?", "What should a beginner avoid when {a}?"],
                 {"a": ACTIVITIES}),
    "benefits": (["What are the benefits of {t}?", "List {n} reasons to try {t}.", "What are the downsides of {t}?",
                  "Why do people enjoy {t}? Give several reasons."], {"t": THINGS}),
    "proscons": (["What are the pros and cons of {c}?", "Give the advantages and disadvantages of {c}.",
                  "Should I consider {c}? List the arguments for and against."], {"c": CHOICES}),
    "compare": (["Compare {x} and {y}.", "What are the main differences between {x} and {y}?",
                 "How are {x} and {y} alike, and how do they differ?"], {"p": PAIRS}),
    "ideas": (["Suggest {n} ideas for {e}.", "What could I do for {e}? Give some ideas.",
               "Plan the activities for {e}."], {"e": EVENTS}),
    "features": (["What features should I look for in {p}?", "Describe the key things to check before buying {p}.",
                  "How do I choose {p}? List what matters."], {"p": PRODUCTS}),
    "explain": (["How does {x} work?", "Give a simple explanation of how {x} works.",
                 "What are the key ideas behind how {x} works?"], {"x": MECHANISMS}),
    "factors": (["What factors affect {x}?", "What determines {x}?",
                 "Why does {x} vary so much? List the main factors."],
                {"x": FACTORS}),
    "matters": (["Why is {x} important?", "Why does {x} matter? Give a few reasons.",
                 "Explain why {x} is worth caring about."], {"x": MATTERS}),
    "causes": (["What are the main causes of {x}?", "What leads to {x}? Explain the main causes.",
                "What can be done to tackle {x}?"], {"x": CAUSES}),
    "effects": (["How does {x} affect people?", "What are the effects of {x} on everyday life?",
                 "What are the short-term and long-term effects of {x}?"], {"x": EFFECTS}),
    "advice": (["How can I {g}?", "What are some practical ways to {g}?", "I want to {g}. Where should I start?"],
               {"g": GOALS}),
    "signs": (["How can you tell whether {x}?", "What are the signs that {x}?", "How do I know if {x}?"],
              {"x": SIGNS}),
    "roleplay": (["You are {r}. Describe a typical day at work.",
                  "Pretend you are {r} and give advice to someone new to the job.",
                  "As {r}, what do you love most about your work?"], {"r": ROLES}),
    "counterfactual": (["What would happen if {cf}?", "How would daily life be different if {cf}?",
                        "If {cf}, what would change? Describe a few of the effects."], {"cf": COUNTERFACTUALS}),
    "blog": (["Write a short blog post about {t}.",
              "Write an informal blog post on {t}, split into a few short sections.",
              "Outline a blog post about {t}, with a heading for each section."], {"t": BLOG_TOPICS}),
    "welcome": (["Write a welcome guide for new members of {g}.",
                 "Write a short welcome message for new members of {g}, covering the key things they should know."],
                {"g": GROUPS}),
    "newsletter": (["Write a newsletter announcing {e}.",
                    "Write a short newsletter item announcing {e}, with the details readers need."], {"e": NEWS}),
}
OTHER = {
    "arith": (["What is {i} times {j}?", "What is {i} plus {j}?", "What is {i} minus {j}?",
               "Convert {i} kilometres to miles.", "What is {i} percent of {j}00?"], {}),
    "capital": (["What is the capital of {c}?", "Which continent is {c} in?", "What language is mostly spoken in {c}?"],
                {"c": COUNTRIES}),
    "define": (["Explain in one short paragraph what {k} is.", "In two sentences, what is {k}?",
                "Give a one-sentence definition of {k}.", "Explain {k} to a ten-year-old in one paragraph."],
               {"k": CONCEPTS}),
    "animal": (["How many legs does a {x} have?", "Is a {x} a mammal? Answer in one sentence.",
                "Where does a {x} usually live? Answer briefly."], {"x": ANIMALS}),
    "code": (["Write a Python function that {f}.", "Write a short JavaScript function that {f}.",
              "Write a one-line Python expression that {f}."], {"f": CODE}),
    "rewrite": (["Rewrite this sentence in the passive voice: {s}", "Translate into French: {s}",
                 "Make this sentence more formal: {s}", "Correct the grammar if needed: {s}",
                 "Rewrite this sentence in the past tense: {s}"], {"s": SENTENCES}),
    "wordproblem": (["A baker makes {i} loaves a day. How many loaves does she make in {j} days?",
                     "Tom has {i} marbles and gives {j} of them to a friend. How many marbles does he have left?",
                     "A car travels at {i} kilometres per hour. How far does it go in {j} hours?",
                     "Concert tickets cost {j} pounds each. How much do {i} tickets cost?",
                     "A garden is {i} metres long and {j} metres wide. What is its area?",
                     "A book has {i}0 pages. If I read {j} pages a day, how many days will it take me to finish it?",
                     "{i} sweets are shared equally among {j} children. How many does each child get, and how many "
                     "are left over?",
                     "A jacket costs {i} dollars and is reduced by {j} percent in a sale. What is the sale price?"],
                    {}),
    "fermi": (["Estimate the number of {x}. Explain your estimate step by step.",
               "Give a rough estimate of the number of {x}, showing each step of your reasoning."], {"x": FERMI}),
    "fact": (["{q}"], {"q": FACTS}),
}


# Added for adapter v4: role-play in character, what-ifs and free writing (emails, speeches, reviews,
# scripts), the kinds of chat request the first tables covered least, and one more Fermi wording (the
# kind must stay serial). Drawn from their own generator and kept out of the held-out and calibration
# splits, so the first tables' prompts, ids and splits stay exactly as before (answers already
# generated stay valid, and held-out figures stay comparable across adapters).
LISTLIKE_V2 = {
    "persona": (["As {r}, how would you introduce yourself to a room full of strangers?",
                 "Imagine you are {r}. What would you tell a group of students visiting your workplace?",
                 "You are {r}. Describe the most memorable moment of your career.",
                 "As {r}, what would you say to motivate a new apprentice on their first day?"], {"r": ROLES}),
    "whatif": (["What if {cf}?", "Imagine a world where {cf}. What would it be like?",
                "Suppose {cf}. How would society be different?"], {"cf": COUNTERFACTUALS}),
    "speech": (["Write an email to your neighbours about {e}.", "Write a short speech announcing {e}."], {"e": NEWS}),
    "essay": (["Write a persuasive essay on {t}.", "Write a podcast script about {t}."], {"t": BLOG_TOPICS}),
    "review": (["Write a short review of {p} you bought recently."], {"p": PRODUCTS}),
    "letter": (["Write a letter to the members of {g} about the plans for next year."], {"g": GROUPS}),
}
OTHER_V2 = {
    "estimate": (["Roughly how many {x}? Walk me through your reasoning."], {"x": FERMI}),
}
# Templates of LISTLIKE_V2 whose right answer is prose (a letter, an email, a speech, a review, a
# character's monologue): forcing a list start on them writes lists of invented names and repeated
# "**Your Name**" items, so they are never steered (`steering.steered`); they stay list-like, so
# their answers' runs of paragraphs still become parallel blocks (prose branches).
PROSE_FORM = frozenset({"persona", "speech", "review", "letter"})


def synthesise(rng: random.Random, tables: tuple = (("listlike", LISTLIKE), ("other", OTHER))) -> list[Prompt]:
    out = []
    for kind, table in tables:
        for name, (templates, slots) in table.items():
            for k, (tpl, fill) in enumerate(itertools.product(templates, _fillers(name, slots, rng))):
                out.append(Prompt(f"{name}-{k}", tpl.format(n=rng.choice(["three", "four", "five"]), **fill), kind,
                                  f"template:{name}"))
    return out


def _fillers(name: str, slots: dict, rng: random.Random) -> list[dict]:
    if name == "arith":
        return [{"i": rng.randint(2, 99), "j": rng.randint(2, 99)} for _ in range(70)]
    if name == "wordproblem":  # i > j, so subtractions and shares stay positive
        return [{"i": rng.randint(20, 99), "j": rng.randint(2, 19)} for _ in range(15)]
    if name == "compare":
        return [{"x": x, "y": y} for x, y in slots["p"]]
    (key, values), = slots.items()
    return [{key: v} for v in values]


# ----------------------------------------------------------------- seeds

_LIST_WORDS = re.compile(r"\b(tips|ways|steps|ideas|list|reasons|benefits|advantages|disadvantages|pros|cons|"
                         r"examples|suggest\w*|features|recommend\w*|compare|differences|several|some|things|"
                         r"items|options|methods|strategies)\b", re.I)


def seeds() -> list[Prompt]:
    out = []
    for fname in ("self_instruct_seed_tasks.jsonl", "self_instruct_user_oriented.jsonl"):
        for i, line in enumerate((SHARED / "prompts" / fname).read_text().splitlines()):
            row = json.loads(line)
            inst = row["instruction"].strip()
            inp = (row.get("instances") or [{}])[0].get("input", "").strip()
            text = f"{inst}\n\n{inp}" if inp else inst
            kind = "listlike" if _LIST_WORDS.search(inst) else "other"
            out.append(Prompt(f"{fname.split('_')[2]}-{i}", text, kind, "seed"))
    return out


# ----------------------------------------------------------------- dedup and split

_STOP = set("a an the of to in on for and or is are be what how can i my you your do does with about from this "
            "that it some most main give me please which".split())


def _words(text: str) -> frozenset[str]:
    return frozenset(w for w in re.findall(r"[a-z0-9]+", text.lower()) if w not in _STOP)


def near_duplicate(a: frozenset[str], b: frozenset[str], threshold: float = 0.5) -> bool:
    """Content-word Jaccard similarity at or over the threshold (catches near-verbatim paraphrases)."""
    if not a or not b:
        return a == b
    return len(a & b) / len(a | b) >= threshold


def benchmark_questions() -> list[str]:
    qs = []
    for path in BENCHMARKS:
        for line in path.read_text().splitlines():
            if line.strip():
                qs.extend(json.loads(line)["turns"])
    return qs


def dedup(prompts: list[Prompt], banned: list[str]) -> tuple[list[Prompt], int, int]:
    """Drop prompts close to a benchmark question, then exact duplicates. Returns (kept, dropped
    as benchmark-like, dropped as duplicates)."""
    bench = [_words(q) for q in banned]
    kept, seen, n_bench, n_dup = [], set(), 0, 0
    for p in prompts:
        w = _words(p.text)
        if any(near_duplicate(w, b) for b in bench):
            n_bench += 1
            continue
        key = " ".join(sorted(w))
        if key in seen:
            n_dup += 1
            continue
        seen.add(key)
        kept.append(p)
    return kept, n_bench, n_dup


def build(seed: int = 0, eval_per_kind: int = 100, calib_per_kind: int = 60) -> dict:
    """All prompts, deduplicated, split: `eval` holds eval_per_kind of each kind (the held-out test),
    `calib` calib_per_kind of each (the fork threshold's fit: never trained on), `train` the rest."""
    rng = random.Random(seed)
    prompts, n_bench, n_dup = dedup(seeds() + synthesise(rng), benchmark_questions())
    rng.shuffle(prompts)
    evals, calib = [], []
    for kind in ("listlike", "other"):
        mine = [p for p in prompts if p.kind == kind]
        evals += mine[:eval_per_kind]
        calib += mine[eval_per_kind:eval_per_kind + calib_per_kind]
    held = {p.id for p in evals + calib}
    train = [p for p in prompts if p.id not in held]
    extra = synthesise(random.Random(seed + 1), (("listlike", LISTLIKE_V2), ("other", OTHER_V2)))
    extra, n_bench2, n_dup2 = dedup(prompts + extra, benchmark_questions())  # the first set wins a tie
    train += extra[len(prompts):]
    n_bench, n_dup = n_bench + n_bench2, n_dup + n_dup2
    return {"train": train, "calib": calib, "eval": evals, "dropped_benchmark": n_bench, "dropped_duplicate": n_dup}


def write(out: Path, seed: int = 0) -> dict:
    split = build(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "calib", "eval"):
        with open(out / f"prompts_{name}.jsonl", "w") as f:
            for p in split[name]:
                f.write(json.dumps(asdict(p)) + "\n")
    return {k: (len(v) if isinstance(v, list) else v) for k, v in split.items()}


def read(path: Path) -> list[Prompt]:
    return [Prompt(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
