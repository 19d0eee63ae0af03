"""Multi-document summarisation: one branch per document, then a synthesis over all summaries.

Every branch sees the shared instructions plus its own document only (siblings are invisible to
each other), so each summary is exactly what it would be alone; the synthesis after the join sees
all of them through the spliced branch KV.

    aspd run programs/multi_doc_summary.py --arg doc1="..." --arg doc2="..." --arg doc3="..."
"""

import json
from pathlib import Path

from aspd_lang import gen, program

_DOCS = json.loads((Path(__file__).parent / "data" / "documents.json").read_text())
ARGS = {f"doc{i}": d for i, d in enumerate(_DOCS, start=1)}


@program
def main(s, doc1, doc2, doc3):
    with s.user():
        s += "Summarise each document in one sentence, then say what they have in common."
    with s.assistant():
        with s.parallel(["Document 1", "Document 2", "Document 3"]) as br:
            for i, (b, doc) in enumerate(zip(br, (doc1, doc2, doc3)), start=1):
                b += f"Document {i}: {doc}\nSummary {i}:" + gen(f"summary{i}", max_tokens=40, stop="\n") + "\n"
        s += "In common:" + gen("common", max_tokens=40, stop="\n")
