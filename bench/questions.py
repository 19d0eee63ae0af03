"""Questions in FastChat's `question.jsonl` format: one JSON object per line with `question_id`,
`category` and `turns` (the first turn is asked). Vicuna-80 ships with the project."""

from __future__ import annotations

import json
from pathlib import Path

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from runtime.errors import UserError

VICUNA80 = Path(__file__).resolve().parent / "data" / "vicuna80" / "question.jsonl"


class QuestionsError(UserError, ValueError):
    """A questions file that cannot be used; the message names the file and line."""


class Question(BaseModel):
    model_config = ConfigDict(frozen=True, extra="ignore")

    question_id: int | str
    category: str = "uncategorised"
    turns: list[str] = Field(min_length=1)

    @property
    def text(self) -> str:
        return self.turns[0]

    @property
    def key(self) -> str:
        return str(self.question_id)


def load(path: Path) -> list[Question]:
    """Every question of a file, in order; blank lines are skipped, ids must be unique."""
    path = Path(path)
    if not path.is_file():
        raise QuestionsError(f"no questions file {path}")
    out: list[Question] = []
    seen: set[str] = set()
    for n, line in enumerate(path.read_text(encoding="utf-8").splitlines(), start=1):
        if not line.strip():
            continue
        try:
            q = Question.model_validate(json.loads(line))
        except json.JSONDecodeError as e:
            raise QuestionsError(f"{path}:{n}: not valid JSON ({e.msg})") from None
        except ValidationError as e:
            first = e.errors()[0]
            where = ".".join(map(str, first["loc"])) or "line"
            raise QuestionsError(f"{path}:{n}: {where}: {first['msg']}") from None
        if not q.text.strip():
            raise QuestionsError(f"{path}:{n}: the first turn is empty")
        if q.key in seen:
            raise QuestionsError(f"{path}:{n}: duplicate question_id {q.question_id}")
        seen.add(q.key)
        out.append(q)
    if not out:
        raise QuestionsError(f"{path}: no questions")
    return out
