"""The kind tables: what loads, judges or reads each kind a world names.

    >>> from safeclip.kinds import resolve, register
    >>> load = resolve("clip", "transformers")        # safeclip.encoders:load_transformers_clip
    >>> register("image_judge", "my-judge", "mypkg.judges:load_my_judge")   # a plug-in's own

A world (``safeclip.presets``) says *which* kind each of its parts is; these tables say *what*
handles a kind, as ``"module:attribute"`` strings imported on first use (so that reading the
tables imports no model code). A plug-in registers its kinds when it is imported; a kind that
is not found yet makes the tables import the plug-ins the world files name, then look again.

Tables and what their targets are called with:

  clip             (spec, world, device, dtype) -> ClipEncoder
  generator        (world, device, offload) -> PairedGenerator;    info: uses_steps
  captioner        (world, device, quantize, offload) -> PairedCaptioner
  image_judge      (JudgeSpec) -> Judge;    info: world (the target takes (JudgeSpec, world))
  text_judge       (JudgeSpec) -> TextJudge
  source           (**options) -> retrieval.sources.Source;        info: prefix of --dataset
  retrieval_eval   (world, split, n, args) -> list of S, U, V, G quadruplets
  generation_eval  (generator, world, args) -> dict of metrics;  info: check ("module:function"
                   (world, args), run before the generator loads)
  captioning_eval  (captioner, world, args) -> dict of metrics
  train_data       (args, tokenizer, processor, context, need) -> (train, validation)
  command          (argv) -> int;                                   info: help
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field

from .errors import StudioError

TABLE_NAMES = ("clip", "generator", "captioner", "image_judge", "text_judge", "source",
               "retrieval_eval", "generation_eval", "captioning_eval", "train_data", "command")


@dataclass(frozen=True)
class Entry:
    target: str  # "module:attribute"
    info: dict = field(default_factory=dict)


TABLES: dict[str, dict[str, Entry]] = {name: {} for name in TABLE_NAMES}


def register(table: str, kind: str, target: str, **info) -> None:
    """Make ``kind`` of ``table`` load ``target`` ("module:attribute"); ``info`` is what callers
    may ask without importing it (e.g. ``uses_steps``)."""
    if table not in TABLES:
        raise ValueError(f"no kind table {table!r}; tables: {', '.join(TABLE_NAMES)}")
    if ":" not in target:
        raise ValueError(f"target {target!r} is not 'module:attribute'")
    TABLES[table][kind] = Entry(target, dict(info))


def entry(table: str, kind: str, world=None) -> Entry:
    found = TABLES[table].get(kind)
    if found is None:
        from .presets import load_plugin, load_plugins
        if world is not None:
            load_plugin(world)
        else:
            load_plugins()
        found = TABLES[table].get(kind)
    if found is None:
        known = ", ".join(sorted(TABLES[table])) or "none"
        where = f" (world {world.name!r}, {world.source})" if world is not None else ""
        raise StudioError(f"no {table.replace('_', ' ')} of kind {kind!r}{where}; known kinds: "
                          f"{known}")
    return found


def kind_info(table: str, kind: str, world=None) -> dict:
    return dict(entry(table, kind, world).info)


def resolve(table: str, kind: str, world=None):
    """The object that handles ``kind`` (its module imported now)."""
    module, _, attr = entry(table, kind, world).target.partition(":")
    obj = importlib.import_module(module)
    for part in attr.split("."):
        obj = getattr(obj, part)
    return obj


def known(table: str) -> list[str]:
    from .presets import load_plugins
    load_plugins()
    return sorted(TABLES[table])


# -- the core's own kinds -----------------------------------------------------------------------
register("clip", "transformers", "safeclip.encoders:load_transformers_clip")
register("clip", "open_clip", "safeclip.encoders:load_open_clip")
register("generator", "diffusers-sd", "safeclip.generation.sd:load_sd_generator", uses_steps=True)
register("captioner", "llava", "safeclip.captioning.llava:load_llava_captioner")
register("image_judge", "none", "safeclip.safety.base:NoJudge.from_spec")
register("image_judge", "nudenet", "safeclip.safety.nudenet:NudeNetJudge.from_spec")
register("image_judge", "q16", "safeclip.safety.q16:Q16Judge.from_spec", world=True)
register("image_judge", "nudenet+q16", "safeclip.safety.combined:CombinedJudge.from_spec",
         world=True)
register("text_judge", "none", "safeclip.safety.text:NoTextJudge.from_spec")
register("text_judge", "lexicon", "safeclip.safety.text:LexiconJudge.from_spec")
register("text_judge", "classifier",
         "safeclip.safety.text_classifier:ClassifierTextJudge.from_spec")
register("source", "folder", "safeclip.retrieval.sources:FolderSource")
register("source", "hub", "safeclip.retrieval.sources:HubSource")
register("retrieval_eval", "visu", "safeclip.eval.visu:visu_quads", io=True)
register("generation_eval", "i2p", "safeclip.eval.i2p_run:evaluate_prompt_file",
         check="safeclip.eval.i2p_run:check_args")
register("train_data", "visu", "safeclip.train.data:visu_sources")
