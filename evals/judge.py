"""The optional rubric, graded by a judge model: off unless ``EVAL_JUDGE_MODEL`` is set,
and never needed offline (a case's deterministic checks do not depend on it).

The judge is any OpenAI-compatible Chat Completions server: ``EVAL_JUDGE_BASE_URL``
(default ``OPENAI_BASE_URL``, else OpenAI) with ``EVAL_JUDGE_API_KEY`` (default
``OPENAI_API_KEY``). It answers a JSON object ``{"pass": bool, "reason": str}``; anything
else fails the rubric with what it said.
"""

from __future__ import annotations

import json
import urllib.error
import urllib.request
from typing import Any

PROMPT = (
    "You grade one turn of a conversation with an AI agent against a rubric. Answer only a"
    ' JSON object {"pass": true or false, "reason": "one sentence"}.'
)


class Judge:
    def __init__(self, model: str, base_url: str, api_key: str | None) -> None:
        self.model, self.base_url, self.api_key = model, base_url.rstrip("/"), api_key

    @classmethod
    def from_env(cls, environ: dict[str, str]) -> Judge | None:
        model = environ.get("EVAL_JUDGE_MODEL")
        if not model:
            return None
        base = environ.get("EVAL_JUDGE_BASE_URL") or environ.get("OPENAI_BASE_URL")
        key = environ.get("EVAL_JUDGE_API_KEY") or environ.get("OPENAI_API_KEY")
        return cls(model, base or "https://api.openai.com/v1", key)

    def grade(self, rubric: str, transcript: list[tuple[str, str]]) -> str | None:
        """None when the rubric holds, else why not."""
        shown = "\n".join(f"{who}: {text}" for who, text in transcript)
        body = {
            "model": self.model,
            "temperature": 0,
            "messages": [
                {"role": "system", "content": PROMPT},
                {"role": "user", "content": f"Rubric:\n{rubric}\n\nConversation:\n{shown}"},
            ],
        }
        request = urllib.request.Request(
            f"{self.base_url}/chat/completions",
            data=json.dumps(body).encode(),
            headers={"Content-Type": "application/json"}
            | ({"Authorization": f"Bearer {self.api_key}"} if self.api_key else {}),
        )
        try:
            with urllib.request.urlopen(request, timeout=120) as response:
                answer: Any = json.loads(response.read())
            text = answer["choices"][0]["message"]["content"] or ""
        except (urllib.error.URLError, OSError, ValueError, KeyError, IndexError, TypeError) as exc:
            return f"rubric: the judge {self.model} could not be asked: {exc}"
        verdict = _verdict(text)
        if verdict is None:
            return f"rubric: the judge {self.model} gave no verdict: {text[:160]!r}"
        passed, reason = verdict
        return None if passed else f"rubric: the judge {self.model} failed it: {reason}"


def _verdict(text: str) -> tuple[bool, str] | None:
    start, end = text.find("{"), text.rfind("}")
    try:
        value = json.loads(text[start : end + 1]) if start >= 0 else None
    except ValueError:
        return None
    if not isinstance(value, dict) or not isinstance(value.get("pass"), bool):
        return None
    return value["pass"], str(value.get("reason", ""))
