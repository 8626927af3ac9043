"""Helpers for the offline lm-eval task definitions in this folder (referenced by `!function`).

They turn the local copies of the datasets into the fields lm-eval's built-in tasks use, and
reproduce those tasks' prompts, so offline numbers are computed the same way as online ones.
"""

from __future__ import annotations

import datasets


def _normalize(text: str) -> str:
    # The EleutherAI/logiqa loader applies this to the original text ("area.It" -> "area. It").
    return text.replace(".", ". ").strip()


def logiqa_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """Lines of the original LogiQA file -> rows {label, context, question, options}.

    Examples are blocks of 7 non-blank lines (answer letter, context, question, 4 options
    written "A.xxx") separated by blank lines.
    """
    blocks, current = [], []
    for line in [*dataset["text"], ""]:
        if line.strip():
            current.append(line)
        elif current:
            blocks.append(current)
            current = []
    rows = []
    for i, block in enumerate(blocks):
        if len(block) != 7:
            raise ValueError(f"LogiQA example {i} has {len(block)} non-blank lines, expected 7 (answer, context, question, 4 options)")
        rows.append({
            "label": block[0].strip(),
            "context": _normalize(block[1]),
            "question": _normalize(block[2]),
            "options": [_normalize(opt[2:]) for opt in block[3:]],
        })
    return datasets.Dataset.from_list(rows)


def logiqa_doc_to_text(doc) -> str:
    """lm-eval's logiqa prompt: Passage / Question / Choices A-D / Answer:."""
    prompt = "Passage: " + doc["context"] + "\n"
    prompt += "Question: " + doc["question"] + "\nChoices:\n"
    for letter, option in zip("ABCD", doc["options"], strict=True):
        prompt += f"{letter}. {option}\n"
    return prompt + "Answer:"


def logiqa_doc_to_target(doc) -> int:
    return "abcd".index(doc["label"].strip().lower())


def wsc_docs(dataset: datasets.Dataset) -> datasets.Dataset:
    """jiant's SuperGLUE WSC rows -> {text, span1_index, span2_index, span1_text, span2_text, label}."""

    def flatten(row):
        t = row["target"]
        return {
            "text": row["text"],
            "span1_index": t["span1_index"], "span2_index": t["span2_index"],
            "span1_text": t["span1_text"], "span2_text": t["span2_text"],
            "label": int(bool(row["label"])),
        }

    return datasets.Dataset.from_list([flatten(row) for row in dataset])  # label becomes 0/1, not bool


def wsc_doc_to_text(doc) -> str:
    """lm-eval's wsc prompt: the pronoun marked with *...* and a yes/no question."""
    from lm_eval.utils import general_detokenize

    raw = doc["text"]
    pre = " ".join(raw.split()[: doc["span2_index"]])  # span indices count words
    post = raw[len(pre) + len(doc["span2_text"]) + 1 :]
    passage = general_detokenize(pre + " *{}*".format(doc["span2_text"]) + post)
    return (
        f"Passage: {passage}\n"
        f'Question: In the passage above, does the pronoun "*{doc["span2_text"]}*" refer to "*{doc["span1_text"]}*"?\n'
        "Answer:"
    )
