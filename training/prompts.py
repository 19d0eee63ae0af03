"""Training prompts: the shared seed instructions plus synthesised ones, deduplicated against every
benchmark the project ships, split into train and a held-out evaluation set.

Each prompt is labelled `listlike` (its natural answer is a set of independent parts: tips, steps,
pros and cons, ideas, reasons, features, comparisons) or `other` (arithmetic, one-line facts, code,
single-paragraph explanations, rewriting). Synthesised prompts carry the label of their template;
seed prompts are labelled by their wording. Pure Python, deterministic for a seed.
"""

from __future__ import annotations

import itertools
import json
import random
import re
from dataclasses import asdict, dataclass
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SHARED = ROOT.parent / "shared" / "data"
BENCHMARKS = [ROOT / "bench" / "data" / "vicuna80" / "question.jsonl"]


@dataclass(frozen=True)
class Prompt:
    id: str
    text: str
    kind: str  # "listlike" | "other"
    source: str  # "seed" | "template:<name>"


# ----------------------------------------------------------------- synthesis

ACTIVITIES = ["learning to play the guitar", "starting a vegetable garden", "training a puppy",
              "running a first marathon",
              "writing a cover letter", "planning a road trip", "learning to swim as an adult", "baking bread at home",
              "keeping a houseplant alive", "preparing for a job interview", "moving to a new city",
              "hosting a dinner party",
              "learning a second language", "saving for a house", "starting a small online shop",
              "taking better photos",
              "organising a closet", "studying for a math exam", "camping in the rain", "cycling to work",
              "learning to draw", "reducing food waste", "writing a short story", "keeping a journal",
              "teaching a child to read", "caring for an elderly parent", "choosing a laptop", "painting a room",
              "making friends after college", "public speaking", "birdwatching", "brewing coffee at home",
              "planning a wedding on a budget", "learning chess", "volunteering locally", "decluttering a garage",
              "building a bookshelf", "hiking in the mountains", "managing a small team", "starting a podcast",
              "learning to knit", "fixing a flat bicycle tyre", "raising chickens", "running a book club",
              "learning to code in Python", "making pottery", "training for a triathlon", "writing a wedding speech",
              "learning to ski", "growing tomatoes on a balcony", "renovating a kitchen", "learning to juggle",
              "packing for a long flight", "starting a running club", "keeping bees", "learning sign language",
              "sewing a simple dress", "planning a museum visit with kids", "learning to sail", "writing a blog"]
THINGS = ["cycling", "reading fiction", "learning music", "owning a cat", "drinking tea", "meditation", "swimming",
          "composting", "public libraries", "electric cars", "solar panels", "yoga", "gardening", "board games",
          "walking meetings", "open-source software", "journaling", "cold showers", "city parks", "carpooling",
          "learning history", "museums", "a standing desk", "bilingual education", "community gardens",
          "rock climbing", "baking with kids", "learning to cook", "camping", "playing in a band", "pen pals",
          "learning to dance", "a morning routine", "hiking clubs", "reading poetry", "second-hand clothes",
          "a vegetable box subscription", "learning a craft", "chess clubs", "long walks"]
CHOICES = ["renting an apartment", "buying a used car", "working part-time", "living in a small town",
           "studying abroad", "freelancing", "homeschooling", "owning a dog", "taking a gap year",
           "a four-day work week",
           "online classes", "shared offices", "nuclear power", "tiny houses", "self-driving buses"]
PAIRS = [("tea", "coffee"), ("trains", "planes"), ("e-books", "paper books"), ("cats", "dogs"), ("running", "cycling"),
         ("renting", "buying a home"), ("city life", "country life"), ("laptops", "desktop computers"),
         ("summer", "winter holidays"), ("walking", "driving to work"), ("chess", "checkers"), ("piano", "violin"),
         ("Linux", "Windows"), ("SQL databases", "spreadsheets"), ("wool", "cotton")]
EVENTS = ["a child's birthday party", "a rainy weekend", "a team-building day", "a school science fair",
          "a small wedding", "a charity fundraiser", "a family reunion", "a book club meeting", "a picnic",
          "a retirement party", "a neighbourhood clean-up", "a board game night", "a first date", "a holiday market"]
PRODUCTS = ["a good pair of running shoes", "a reliable bicycle", "a kitchen knife", "a backpack for travel",
            "a desk chair", "a smartphone for a grandparent", "a tent", "a coffee grinder", "a winter coat",
            "a beginner's telescope", "a rice cooker", "a reading lamp"]
CONCEPTS = ["inflation", "photosynthesis", "a leap year", "gravity", "a haiku", "compound interest", "an eclipse",
            "a volcano", "recycling", "a democracy", "an ecosystem", "a vaccine", "a metaphor", "a prime number",
            "the water cycle", "a rainbow", "an earthquake", "a hash table", "a noun", "friction", "erosion",
            "a comet", "evaporation", "a tariff", "a glacier", "a simile", "a virus", "an atom", "a budget",
            "a fossil", "a thermometer", "a tide", "a habitat", "an orbit", "a palindrome", "a fraction",
            "a pulley", "a lens", "magnetism", "a fable"]
COUNTRIES = ["France", "Japan", "Kenya", "Brazil", "Canada", "Egypt", "Norway", "India", "Mexico", "Australia", "Peru",
             "Italy", "Vietnam", "Ghana", "Chile", "Poland", "Spain", "Thailand", "Greece", "Ireland"]
SENTENCES = ["The cat chased the mouse across the kitchen.", "We will finish the report tomorrow.",
             "The old bridge was closed after the storm.", "She plays the piano every evening.",
             "The children planted three trees in the park.", "Our team won the final game.",
             "He forgot his umbrella at the station.", "The museum opens at nine.",
             "They painted the fence blue.", "I have never seen such a tall building.",
             "The baker sold all the bread before noon.", "My brother fixed the broken chair.",
             "The students wrote a letter to the mayor.", "The river flooded the small village.",
             "A strong wind knocked over the sign.", "The chef tasted the soup twice.",
             "Our neighbours adopted a kitten.", "The train arrived ten minutes late.",
             "The artist finished the mural in a week.", "The committee approved the new plan."]
ANIMALS = ["spider", "horse", "octopus", "ant", "penguin", "crab", "snake", "kangaroo", "bee", "starfish",
           "frog", "owl", "dolphin", "camel", "butterfly", "lobster", "bat", "goat", "eagle", "squid"]
CODE = ["reverses a string", "returns the largest number in a list", "checks whether a word is a palindrome",
        "counts the vowels in a string", "converts Celsius to Fahrenheit", "returns the sum of a list of numbers",
        "removes duplicates from a list while keeping the order", "returns the factorial of n",
        "checks whether a year is a leap year", "returns the average of a list", "capitalises every word in a sentence",
        "returns the second smallest number in a list", "counts how often each word appears in a text"]

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
}


def synthesise(rng: random.Random) -> list[Prompt]:
    out = []
    for kind, table in (("listlike", LISTLIKE), ("other", OTHER)):
        for name, (templates, slots) in table.items():
            for k, (tpl, fill) in enumerate(itertools.product(templates, _fillers(name, slots, rng))):
                out.append(Prompt(f"{name}-{k}", tpl.format(n=rng.choice(["three", "four", "five"]), **fill), kind,
                                  f"template:{name}"))
    return out


def _fillers(name: str, slots: dict, rng: random.Random) -> list[dict]:
    if name == "arith":
        return [{"i": rng.randint(2, 99), "j": rng.randint(2, 99)} for _ in range(70)]
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


def build(seed: int = 0, eval_per_kind: int = 100) -> dict:
    """All prompts, deduplicated, split: `eval` holds eval_per_kind of each kind, `train` the rest."""
    rng = random.Random(seed)
    prompts, n_bench, n_dup = dedup(seeds() + synthesise(rng), benchmark_questions())
    rng.shuffle(prompts)
    evals = []
    for kind in ("listlike", "other"):
        evals += [p for p in prompts if p.kind == kind][:eval_per_kind]
    held = {p.id for p in evals}
    train = [p for p in prompts if p.id not in held]
    return {"train": train, "eval": evals, "dropped_benchmark": n_bench, "dropped_duplicate": n_dup}


def write(out: Path, seed: int = 0) -> dict:
    split = build(seed)
    out.mkdir(parents=True, exist_ok=True)
    for name in ("train", "eval"):
        with open(out / f"prompts_{name}.jsonl", "w") as f:
            for p in split[name]:
                f.write(json.dumps(asdict(p)) + "\n")
    return {k: (len(v) if isinstance(v, list) else v) for k, v in split.items()}


def read(path: Path) -> list[Prompt]:
    return [Prompt(**json.loads(line)) for line in path.read_text().splitlines() if line.strip()]
