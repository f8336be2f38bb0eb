"""Worlds as data: which models go together for each capability, read from ``worlds/*.toml``.

    >>> from safeclip.presets import list_presets, get_preset
    >>> list_presets()
    ['mini', 'vit-h-14', 'vit-l-14', 'vit-l-14-336']
    >>> w = get_preset("vit-l-14", overrides={"safe_clip": "/models/safeclip"})
    >>> w.retrieval.safe_clip.ref, w.generation.safe_text.ref   # "@safe_clip" follows the override
    ('/models/safeclip', '/models/safeclip')
    >>> w.captioning.safe_tower.ref
    'aimagelab/safeclip_vit-l_14_336'

A world (``Preset``) is a named set of capability entries, each optional: ``retrieval`` (also the
embedding view), ``generation`` and ``captioning``. An entry names its models, its kind (how they
load: a key of the tables in ``safeclip.kinds``), its judge, its settings and limits and, for
retrieval, its gallery and examples. Nothing in the code asks which world runs: what differs is
here. A world may name a ``plugin``, a module that registers the kinds only it uses (the bundled
mini world: ``safeclip.mini``); it is imported when the world is first used.

Model references (a Hub id or a local path) are overridden per role, in this order:

1. explicitly: ``get_preset(name, overrides={"clip": PATH})`` or the CLI flag of the role
   (``--clip``, ``--safe-clip``, ``--sd``, ...: see ``ROLES``);
2. by environment variable (``SAFECLIP_CLIP``, ``SAFECLIP_SAFE_CLIP``, ...);
3. by a mirror folder: with ``SAFECLIP_MODELS_DIR=/models``, the id ``org/name`` resolves to
   ``/models/org/name`` when that folder exists.

A reference ``"@role"`` names another role's model (the mini world's generator reads the text
tower of its retrieval CLIPs), so overriding that role moves both. More worlds: drop a TOML file
into a folder named by ``SAFECLIP_WORLDS`` (``:``-separated folders or files).
"""
from __future__ import annotations

import dataclasses
import importlib
import logging
import os
import tomllib
from dataclasses import dataclass, field
from functools import lru_cache
from pathlib import Path

logger = logging.getLogger(__name__)

WORLDS_DIR = Path(__file__).resolve().parent / "worlds"

# role -> (capability, field of that capability, what it is, environment variable)
ROLES: dict[str, tuple[str, str, str, str]] = {
    "clip": ("retrieval", "clip", "original CLIP", "SAFECLIP_CLIP"),
    "safe_clip": ("retrieval", "safe_clip", "Safe-CLIP", "SAFECLIP_SAFE_CLIP"),
    "sd": ("generation", "sd", "generator (Stable Diffusion)", "SAFECLIP_SD"),
    "sd_text": ("generation", "text", "generator's original text encoder", "SAFECLIP_SD_TEXT"),
    "safe_sd": ("generation", "safe_text", "Safe-CLIP text encoder of the generator",
                "SAFECLIP_SAFE_SD"),
    "llava": ("captioning", "llava", "captioner (LLaVA)", "SAFECLIP_LLAVA"),
    "tower": ("captioning", "tower", "captioner's original vision tower", "SAFECLIP_TOWER"),
    "safe_tower": ("captioning", "safe_tower", "Safe-CLIP vision tower of the captioner",
                   "SAFECLIP_SAFE_TOWER"),
}
CAPABILITIES = ("retrieval", "generation", "captioning")


def flag(role: str) -> str:
    """The command-line flag of a role: ``safe_clip`` -> ``--safe-clip``."""
    return "--" + role.replace("_", "-")


def env_var(role: str) -> str:
    return ROLES[role][3]


@dataclass(frozen=True)
class ModelSpec:
    """One model of a capability."""

    role: str  # a key of ROLES
    ref: str  # Hub id or path (relative paths of world files: against the world's root)
    kind: str | None = None  # how it loads (None: the capability's kind decides)
    arch: str | None = None  # open_clip architecture, for weights without open_clip_config.json
    hint: str = ""  # how to get it when it is missing (bundled models: the build command)

    @property
    def describe(self) -> str:
        return ROLES[self.role][2]


@dataclass(frozen=True)
class JudgeSpec:
    """A judge: its kind (a key of ``safeclip.kinds`` tables), threshold and options."""

    kind: str = "none"
    threshold: float | None = None  # None: the judge's own default
    ref: str | None = None  # the judge's model folder, when it has one
    options: dict = field(default_factory=dict, compare=False, hash=False)


@dataclass(frozen=True)
class GallerySource:
    """A small public image-caption data set a gallery is built from on first use."""

    dataset: str  # Hub id (or a local folder `datasets` can read)
    split: str = "test"
    n: int = 3000  # images taken from the start of the split (streamed)
    image_column: str | None = None  # None: the first image column
    caption_column: str | None = None  # None: a column named like a caption


@dataclass(frozen=True)
class Retrieval:
    clip: ModelSpec
    safe_clip: ModelSpec
    image_size: int  # input resolution of the vision towers, in pixels
    embed_dim: int  # size of the joint embedding space
    context_length: int = 77  # text tokens, start and end included
    image_judge: JudgeSpec = JudgeSpec()  # flags gallery images whose safety the data omits
    text_judge: JudgeSpec = JudgeSpec()  # flags captions of the gallery's caption corpus
    gallery: str | None = None  # a gallery folder that ships with the world
    gallery_source: GallerySource | None = None  # else: built from this on first use
    examples: tuple[str, ...] = ()  # example text queries
    eval: str | None = None  # kind of its evaluation data ("visu", or a plug-in's)
    train_data: str | None = None  # kind of its training data
    figures: str | None = None  # its measured figures (`safeclip eval retrieval --json` output)
    paper: dict = field(default_factory=dict, compare=False, hash=False)  # reported numbers


@dataclass(frozen=True)
class Generation:
    kind: str  # generator kind, e.g. "diffusers-sd"
    sd: ModelSpec
    safe_text: ModelSpec
    text: ModelSpec | None = None  # None: the generator's own text encoder is the original
    judge: JudgeSpec = JudgeSpec()
    defaults: dict = field(default_factory=dict, compare=False, hash=False)
    limits: dict = field(default_factory=dict, compare=False, hash=False)
    settings_file: str | None = None  # a JSON in the generator's folder whose defaults/limits win
    examples: tuple[str, ...] = ()
    eval: str | None = None
    gpu_seconds: int = 60  # ZeroGPU duration of one call
    label: str = "Stable Diffusion"  # what the UI calls the generator


@dataclass(frozen=True)
class Captioning:
    kind: str  # captioner kind, e.g. "llava"
    llava: ModelSpec
    safe_tower: ModelSpec
    tower: ModelSpec | None = None  # None: the captioner's own tower is the original
    judge: JudgeSpec = JudgeSpec()  # a text judge (on the captions)
    defaults: dict = field(default_factory=dict, compare=False, hash=False)
    limits: dict = field(default_factory=dict, compare=False, hash=False)
    examples: str | None = None  # a folder of example images
    eval: str | None = None
    gpu_seconds: int = 60


@dataclass(frozen=True)
class Preset:
    """A world (see the module docstring)."""

    name: str  # registry key, e.g. "vit-l-14"
    description: str  # one line for tables and the UI
    retrieval: Retrieval | None = None
    generation: Generation | None = None
    captioning: Captioning | None = None
    auto: str = "never"  # "try": `--preset auto` tries it; "fallback": used when nothing answers
    offline: bool = False  # True: every model ships with the code (no network ever)
    plugin: str | None = None  # module that registers the kinds this world uses
    differences: tuple[str, ...] = ()  # how it differs from the real system (the About tab)
    source: str = ""  # the world file

    # -- facts ----------------------------------------------------------------------------
    def capabilities(self) -> list[str]:
        return [c for c in CAPABILITIES if getattr(self, c) is not None]

    def models(self) -> dict[str, ModelSpec]:
        """Every model of the world by role (roles the world lacks left out)."""
        out = {}
        for role, (cap, fld, *_) in ROLES.items():
            entry = getattr(self, cap)
            spec = getattr(entry, fld, None) if entry is not None else None
            if spec is not None:
                out[role] = spec
        return out

    def ids(self) -> dict[str, str]:
        return {r: m.ref for r, m in self.models().items()}

    # kept for the retrieval-centred callers (and for reading ease)
    @property
    def clip(self) -> str | None:
        return self.retrieval.clip.ref if self.retrieval else None

    @property
    def safe_clip(self) -> str | None:
        return self.retrieval.safe_clip.ref if self.retrieval else None

    @property
    def image_size(self) -> int | None:
        return self.retrieval.image_size if self.retrieval else None

    # -- overrides ------------------------------------------------------------------------
    def with_overrides(self, overrides: dict[str, str | None] | None = None,
                       use_env: bool = True) -> "Preset":
        """A copy whose model references follow explicit overrides, then the environment, and
        whose ``@role`` references are replaced by the model of the role they name."""
        from .errors import InputError

        given = {r: str(v) for r, v in (overrides or {}).items() if v}
        unknown = sorted(set(given) - set(ROLES))
        if unknown:
            raise InputError(f"unknown model role(s) {', '.join(unknown)}; roles: "
                             f"{', '.join(ROLES)}")
        if use_env:
            for role in ROLES:
                if role not in given and os.environ.get(env_var(role)):
                    given[role] = os.environ[env_var(role)]
        specs = self.models()
        for role, ref in given.items():
            if role in specs:
                specs[role] = dataclasses.replace(specs[role], ref=ref, hint="")
            elif self._optional(role):  # a generator's / captioner's own original, replaced
                specs[role] = ModelSpec(role, ref)
            else:
                logger.warning("world %r has no %s: %s is ignored", self.name, ROLES[role][2],
                               flag(role))

        def resolve(role: str, seen: tuple = ()) -> ModelSpec:
            spec = specs[role]
            if not spec.ref.startswith("@"):
                return spec
            target = spec.ref[1:]
            if target not in specs or target in seen:
                raise ValueError(f"world {self.name!r}: {role} refers to {spec.ref!r}, which is "
                                 "not a model of this world")
            linked = resolve(target, (*seen, role))
            return dataclasses.replace(spec, ref=linked.ref, kind=spec.kind or linked.kind,
                                       arch=spec.arch or linked.arch,
                                       hint=spec.hint or linked.hint)

        changes = {}
        for cap in CAPABILITIES:
            entry = getattr(self, cap)
            if entry is None:
                continue
            fields = {ROLES[r][1]: resolve(r) for r in specs if ROLES[r][0] == cap}
            fields = {f: s for f, s in fields.items() if getattr(entry, f) != s}
            if fields:
                changes[cap] = dataclasses.replace(entry, **fields)
        return dataclasses.replace(self, **changes) if changes else self

    def _optional(self, role: str) -> bool:
        cap, fld, *_ = ROLES[role]
        return getattr(self, cap) is not None and fld in ("text", "tower")


# ------------------------------------------------------------------------------ reading TOML
def _model(role: str, value, root: Path) -> ModelSpec | None:
    if value is None:
        return None
    if isinstance(value, str):
        value = {"ref": value}
    ref = str(value["ref"])
    return ModelSpec(role, _path(ref, root), value.get("kind"), value.get("arch"),
                     value.get("hint", ""))


def _path(ref: str, root: Path) -> str:
    """World-file references that start with ``./`` or name a folder under the root are paths."""
    if ref.startswith("@") or ref.startswith("/"):
        return ref
    if ref.startswith("./") or ref.count("/") != 1:
        return str((root / ref).resolve())
    return ref


def _judge(value) -> JudgeSpec:
    if value is None:
        return JudgeSpec()
    if isinstance(value, str):
        return JudgeSpec(value)
    value = dict(value)
    return JudgeSpec(value.pop("kind", "none"), value.pop("threshold", None), value.pop("ref", None),
                     value)


def _entry(cap: str, data: dict, root: Path):
    roles = {fld: role for role, (c, fld, *_) in ROLES.items() if c == cap}
    data = dict(data)
    kwargs = {fld: _model(role, data.pop(fld, None), root) for fld, role in roles.items()}
    kwargs = {k: v for k, v in kwargs.items() if v is not None}
    for key in ("judge", "image_judge", "text_judge"):
        if key in data:
            judge = _judge(data.pop(key))
            if judge.ref:
                judge = dataclasses.replace(judge, ref=_path(judge.ref, root))
            kwargs[key] = judge
    for key in ("gallery", "examples") if cap != "retrieval" else ("gallery", "figures"):
        if isinstance(data.get(key), str):
            data[key] = str((root / data[key]).resolve())
    if "gallery_source" in data:
        data["gallery_source"] = GallerySource(**data["gallery_source"])
    for key in ("examples",):
        if isinstance(data.get(key), list):
            data[key] = tuple(data[key])
    cls = {"retrieval": Retrieval, "generation": Generation, "captioning": Captioning}[cap]
    return cls(**kwargs, **data)


def read_world(path: str | Path) -> Preset:
    """One world file (TOML; see safeclip/worlds/*.toml for the fields)."""
    path = Path(path)
    data = tomllib.loads(path.read_text(encoding="utf-8"))
    root = (path.parent / data.pop("root", ".")).resolve()
    entries = {cap: _entry(cap, data.pop(cap), root) for cap in CAPABILITIES if cap in data}
    data["differences"] = tuple(data.get("differences", ()))
    return Preset(**data, **entries, source=str(path))


def _world_files() -> list[Path]:
    files = sorted(WORLDS_DIR.glob("*.toml"))
    for item in filter(None, os.environ.get("SAFECLIP_WORLDS", "").split(os.pathsep)):
        p = Path(item).expanduser()
        files += sorted(p.glob("*.toml")) if p.is_dir() else [p]
    return files


@lru_cache(maxsize=8)
def _registry(files: tuple[tuple[str, int], ...]) -> dict[str, Preset]:
    out: dict[str, Preset] = {}
    for name, _ in files:
        w = read_world(name)
        if w.name in out:
            raise ValueError(f"world {w.name!r} is defined twice: {out[w.name].source} and {name}")
        out[w.name] = w
    return out


def registry() -> dict[str, Preset]:
    """Every world of the search path (re-read when a world file changes)."""
    files = tuple((str(f), f.stat().st_mtime_ns) for f in _world_files() if f.is_file())
    return _registry(files)


def list_presets() -> list[str]:
    return sorted(registry())


def load_plugin(world: Preset) -> None:
    """Import the module that registers the kinds ``world`` uses (once)."""
    if world.plugin:
        importlib.import_module(world.plugin)


def load_plugins() -> None:
    for w in registry().values():
        load_plugin(w)


def get_preset(name: str | Preset, overrides: dict[str, str | None] | None = None,
               use_env: bool = True) -> Preset:
    """The world called ``name`` with overrides applied (see the module docstring)."""
    if isinstance(name, Preset):
        world = name
    else:
        try:
            world = registry()[name]
        except KeyError:
            from .errors import InputError
            raise InputError(f"unknown world {name!r}; known worlds: {', '.join(list_presets())}") \
                from None
    load_plugin(world)
    return world.with_overrides(overrides, use_env)


def default_preset() -> str:
    """The world that needs nothing outside the code (the default of every command)."""
    for name, w in sorted(registry().items()):
        if w.auto == "fallback":
            return name
    return list_presets()[0]


def auto_order() -> list[str]:
    """Worlds that ``--preset auto`` tries, in name order."""
    return [n for n, w in sorted(registry().items()) if w.auto == "try"]


def resolve_ref(ref: str) -> str:
    """Map a Hub id to a local mirror folder when ``SAFECLIP_MODELS_DIR`` holds it."""
    mirror = os.environ.get("SAFECLIP_MODELS_DIR")
    if mirror and not Path(ref).exists():
        candidate = Path(mirror) / ref
        if candidate.exists():
            return str(candidate)
    return ref
