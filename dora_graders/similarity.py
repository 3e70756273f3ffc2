"""text_similarity's metrics, each from a maintained library (none written here).

fuzzy_match: rapidfuzz's `fuzz.ratio` (normalised Indel similarity) / 100. bleu: sacrebleu's
`sentence_bleu` (its 13a tokenizer, exp smoothing) / 100. gleu: NLTK's `sentence_gleu` on
whitespace tokens. rouge_1..5 and rouge_l: Google's `rouge-score` F-measure (no stemming).
meteor: NLTK's `meteor_score`, which needs the WordNet corpus; no pip package ships it, so it is
available only where the operator installed it (`python -m nltk.downloader wordnet`, or the corpus
copied into an NLTK data folder), and refused with a 400 saying so otherwise. All return [0, 1].
"""

from __future__ import annotations

from collections.abc import Callable
from functools import cache

from dora_contract.graders import ROUGE_METRICS
from dora_graders.errors import GraderSpecError

METEOR_MISSING = ("'meteor' needs NLTK's WordNet corpus, which is not installed on this server; the operator "
                  "installs it with `python -m nltk.downloader wordnet` (or copies the corpus into an NLTK data "
                  "folder); use fuzzy_match, bleu, gleu or a rouge metric meanwhile")


def fuzzy_match(output: str, reference: str) -> float:
    from rapidfuzz import fuzz

    return fuzz.ratio(output, reference) / 100.0


def bleu(output: str, reference: str) -> float:
    import sacrebleu

    return sacrebleu.sentence_bleu(output, [reference]).score / 100.0


def gleu(output: str, reference: str) -> float:
    from nltk.translate.gleu_score import sentence_gleu

    return float(sentence_gleu([reference.split()], output.split()))


def meteor(output: str, reference: str) -> float:
    from nltk.translate.meteor_score import meteor_score

    return float(meteor_score([reference.split()], output.split()))


@cache
def _rouge_scorer(key: str):
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer([key], use_stemmer=False)


def rouge(metric: str) -> Callable[[str, str], float]:
    key = "rougeL" if metric == "rouge_l" else f"rouge{metric[-1]}"  # rouge-score's names

    def score(output: str, reference: str) -> float:
        return float(_rouge_scorer(key).score(reference, output)[key].fmeasure)

    return score


def wordnet_installed() -> bool:
    import nltk

    for name in ("corpora/wordnet", "corpora/wordnet.zip"):
        try:
            nltk.data.find(name)
            return True
        except LookupError:
            continue
    return False


METRICS: dict[str, Callable[[str, str], float]] = {
    "fuzzy_match": fuzzy_match, "bleu": bleu, "gleu": gleu, "meteor": meteor,
    **{metric: rouge(metric) for metric in ROUGE_METRICS},
}


def check_metric(metric: str) -> None:
    """GraderSpecError when this server cannot compute `metric`."""
    if metric == "meteor" and not wordnet_installed():
        raise GraderSpecError("evaluation_metric", METEOR_MISSING)
    if metric not in METRICS:
        raise GraderSpecError("evaluation_metric", f"'{metric}' is not supported here")
