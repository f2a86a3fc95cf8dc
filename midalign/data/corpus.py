"""The one interface every parallel-text reader returns."""

from __future__ import annotations

from dataclasses import dataclass, field
from itertools import permutations


@dataclass
class ParallelCorpus:
    """Aligned sentences, grouped by *side*, and the ordered side pairs to score.

    A side is one list of sentences in one language. In a multiway corpus (FLoRes, SIB-200,
    UDHR, plain line-aligned files) there is one side per language and every ordered pair of
    languages is scored. Tatoeba is not multiway: each language has its own English side
    (``"eng_Latn@jav_Latn"``), and only the pairs that exist are scored, in both directions.
    Sentence i of a source side translates sentence i of its target side.
    """

    texts: dict[str, list[str]]  # side -> sentences
    lang: dict[str, str]  # side -> FLoRes-style language code, e.g. "deu_Latn"
    pairs: list[tuple[str, str]]  # ordered (source side, target side)
    source: str = ""  # where the text came from, for results.json
    ids: dict[str, list[str]] = field(default_factory=dict)  # side -> segment ids, if known
    # side -> the file it was read from, one sentence a line (its ids are then line numbers)
    files: dict[str, str] = field(default_factory=dict)

    @classmethod
    def multiway(
        cls,
        texts: dict[str, list[str]],
        source: str = "",
        ids: list[str] | None = None,
        files: dict[str, str] | None = None,
    ) -> ParallelCorpus:
        """One side per language, all M·(M−1) ordered pairs."""
        sides = list(texts)
        return cls(
            texts=texts,
            lang={s: s for s in sides},
            pairs=list(permutations(sides, 2)),
            source=source,
            ids={s: list(ids) for s in sides} if ids is not None else {},
            files=dict(files or {}),
        )

    def where(self, side: str, i: int) -> str:
        """Where sentence ``i`` of ``side`` came from, for an error message: ``file:line``, or
        the data set, side and segment id."""
        ids = self.ids.get(side) or [str(n) for n in range(1, len(self.texts[side]) + 1)]
        if side in self.files:
            return f"{self.files[side]}:{ids[i]}"
        return f"{self.source}: {side} sentence {ids[i]}"

    @property
    def languages(self) -> list[str]:
        """Distinct languages, in first-seen order."""
        return list(dict.fromkeys(self.lang.values()))

    def first_repeat(self) -> tuple[str, str, str, str] | None:
        """(side, id of the repeat, id of the first occurrence, sentence) of the first sentence
        that occurs twice on one side, or None. Ids are the segment ids, else 1-based lines."""
        for side, texts in self.texts.items():
            ids = self.ids.get(side) or [str(i) for i in range(1, len(texts) + 1)]
            seen: dict[str, int] = {}
            for i, text in enumerate(texts):
                if text in seen:
                    return side, ids[i], ids[seen[text]], text
                seen[text] = i
        return None

    def same_text(self) -> tuple[str, str] | None:
        """The first two sides of different languages holding exactly the same sentences (one
        file given for two languages), or None."""
        first: dict[tuple[str, ...], str] = {}
        for side, texts in self.texts.items():
            other = first.setdefault(tuple(texts), side)
            if self.lang[other] != self.lang[side]:
                return other, side
        return None

    def truncate(self, max_sentences: int | None) -> ParallelCorpus:
        """Keep the first ``max_sentences`` sentences of every side (order is kept)."""
        if max_sentences is None:
            return self
        return ParallelCorpus(
            texts={s: t[:max_sentences] for s, t in self.texts.items()},
            lang=dict(self.lang),
            pairs=list(self.pairs),
            source=self.source,
            ids={s: i[:max_sentences] for s, i in self.ids.items()},
            files=dict(self.files),
        )
