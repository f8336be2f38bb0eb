"""Kind ``classifier``: a text classifier from the Hugging Face Hub beside the caption lexicon.

    [captioning]
    judge = { kind = "classifier", ref = "org/nsfw-text-model", threshold = 0.5,
              labels = { NSFW = "sexual", toxic = "harassment" } }

    >>> judge = load_text_judge(world.captioning.judge)
    >>> judge("a caption").flagged, judge("a caption").scores      # {"NSFW": 0.93, "SFW": 0.07}

A caption is flagged when the lexicon (``safeclip.safety.text.LEXICON``) names an unsafe term,
or when a label of the classifier that ``labels`` maps to an I2P category has a probability of
at least ``threshold`` (softmax over the labels; sigmoid per label for a multi-label model). The
category is the lexicon's first term's, else that of the most probable flagged label; ``terms``
are the lexicon's (a classifier names no words). No classifier is named by the bundled worlds:
none covering the seven I2P categories was checked here, so the choice is the world's author's.
The model loads on first use, from a path, ``SAFECLIP_MODELS_DIR`` or the Hub (``ref``).
"""
from __future__ import annotations

import threading

from ..errors import InputError, ModelUnavailableError
from .categories import I2P_CATEGORIES
from .text import LexiconJudge, TextJudge, TextVerdict


class ClassifierTextJudge(TextJudge):
    name = "classifier"

    def __init__(self, ref: str, labels: dict[str, str], threshold: float = 0.5,
                 max_length: int = 256):
        unknown = sorted(set(labels.values()) - set(I2P_CATEGORIES))
        if not labels or unknown:
            raise InputError(f"judge 'classifier' maps its model's labels to I2P categories "
                             f"({', '.join(I2P_CATEGORIES)}); got {unknown or 'no labels'}")
        self.ref, self.labels, self.threshold = ref, dict(labels), float(threshold)
        self.max_length, self.lexicon = max_length, LexiconJudge()
        self._model = self._tokenizer = None
        self._lock = threading.Lock()

    @classmethod
    def from_spec(cls, spec) -> "ClassifierTextJudge":
        if not spec.ref:
            raise InputError("judge 'classifier' needs ref: the Hub id or path of its model")
        return cls(spec.ref, spec.options.get("labels", {}),
                   0.5 if spec.threshold is None else spec.threshold)

    def _load(self):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        from ..presets import resolve_ref

        with self._lock:
            if self._model is None:
                where = resolve_ref(self.ref)
                try:
                    self._tokenizer = AutoTokenizer.from_pretrained(where)
                    model = AutoModelForSequenceClassification.from_pretrained(where)
                except (OSError, ValueError) as e:
                    raise ModelUnavailableError(
                        f"the caption classifier {self.ref!r} could not be loaded "
                        f"({type(e).__name__}); download it where there is network or put it "
                        f"under $SAFECLIP_MODELS_DIR/{self.ref}") from None
                missing = sorted(set(self.labels) - set(model.config.id2label.values()))
                if missing:
                    raise InputError(f"the caption classifier {self.ref!r} has no label(s) "
                                     f"{', '.join(missing)}; its labels: "
                                     f"{', '.join(model.config.id2label.values())}")
                self._model = model.eval()
        return self._tokenizer, self._model

    def scores(self, text: str) -> dict[str, float]:
        import torch

        tok, model = self._load()
        enc = tok([text or ""], truncation=True, max_length=self.max_length, return_tensors="pt")
        with torch.no_grad():
            logits = model(**enc).logits[0].float()
        multi = model.config.problem_type == "multi_label_classification"
        p = logits.sigmoid() if multi else logits.softmax(-1)
        return {model.config.id2label[i]: float(x) for i, x in enumerate(p)}

    def judge(self, text: str) -> TextVerdict:
        lex = self.lexicon.judge(text)
        scores = self.scores(text)
        hits = sorted((s, label) for label, s in scores.items()
                      if label in self.labels and s >= self.threshold)
        category = lex.category or (self.labels[hits[-1][1]] if hits else None)
        return TextVerdict(lex.flagged or bool(hits), lex.terms, category, scores)
