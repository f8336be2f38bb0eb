"""Judges of images and captions, behind one interface each, found through the kind a world's
data names (``safeclip.kinds`` tables ``image_judge`` and ``text_judge``).

    >>> from safeclip.safety import load_judge, load_text_judge, blur
    >>> judge = load_judge(world.generation.judge, world)   # NudeNet + Q16 for real worlds
    >>> v = judge.judge([image])[0]                     # Verdict(unsafe, score, category, ...)
    >>> shown = blur(image) if v.unsafe else image
    >>> load_text_judge(world.captioning.judge)("a man with a pistol").terms   # ['pistol']

Modules: ``base`` (Verdict, Judge, NoJudge), ``nudenet``, ``q16`` and ``q16_prompts`` (Q16 and
its prompt file, read without unpickling), ``combined`` (kind ``nudenet+q16``: the SLD protocol),
``text`` (the caption lexicon), ``categories`` (I2P's seven). The bundled mini world's judges
live in its plug-in.
"""
from ..images import blur
from .base import Judge, NoJudge, Verdict, get_judge, load_judge
from .categories import I2P_CATEGORIES
from .text import LEXICON, LexiconJudge, TextJudge, TextVerdict, load_text_judge

__all__ = ["blur", "Judge", "NoJudge", "Verdict", "get_judge", "load_judge", "I2P_CATEGORIES",
           "LEXICON", "LexiconJudge", "TextJudge", "TextVerdict", "load_text_judge"]
