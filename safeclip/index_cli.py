"""``safeclip index`` and ``safeclip search``: build gallery indexes and search them both ways.

    safeclip index build --preset mini --dataset synthetic:test --out assets/gallery/mini
    safeclip index build --preset vit-l-14 --images photos/ --out idx/photos [--labels labels.csv]
        [--captions corpus.txt] [--index-type auto|flat|ivf|hnsw] [--exact-max N] [--nlist N]
        [--nprobe N] [--batch-size 64] [--judge auto|none|KIND] [--restart] [--json]
    safeclip index build --preset vit-l-14 --dataset ORG/NAME --split test --out idx/hub
    safeclip index add --index idx/photos [--images more/]      # embeds only the new images
    safeclip index info --index idx/photos [--json]
    safeclip index build --preset vit-l-14 --images photos/ --out idx/x --cross-only   # clip+cross
    safeclip search --preset mini --text "a cat with a knife" --k 5     # the world's gallery
    safeclip search --index idx/photos --image query.jpg [--target captions|images] --json
    safeclip search --preset mini --text "..." --config cross --alpha 0.5 --beta 0.2

A build interrupted half way continues where it stopped when the same command runs again.
Unreadable images are skipped and listed at the end. ``search`` prints the rankings of the
configurations side by side: ``clip``, ``safeclip`` and ``cross`` (Safe-CLIP's query over the
original's index); ``--json``: machine-readable, one object per query.
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from .cli import add_common_args, overrides, setup_logging


def ann_gib() -> float:
    from .retrieval.ann import COMPRESS_BYTES
    return COMPRESS_BYTES / 2**30


def _source_args(p: argparse.ArgumentParser, required: bool) -> None:
    g = p.add_mutually_exclusive_group(required=required)
    g.add_argument("--images", type=Path, help="a folder of images (any depth)")
    g.add_argument("--dataset", help="a Hub dataset id, or KIND:SPLIT of a plug-in's source "
                                     "(e.g. synthetic:test)")
    p.add_argument("--split", default="test", help="dataset split (default: test)")
    p.add_argument("--limit", type=int, default=None, help="index only the first N items")
    p.add_argument("--labels", type=Path, default=None,
                   help="CSV/JSON(L) with file, unsafe, category, caption columns (folders)")
    p.add_argument("--image-column", default=None, help="Hub dataset: image column")
    p.add_argument("--caption-column", default=None, help="Hub dataset: caption column")
    p.add_argument("--unsafe-column", default=None, help="Hub dataset: unsafe-flag column")
    p.add_argument("--batch-size", type=int, default=64, help="images per embedded batch")
    p.add_argument("--judge", default=None, metavar="auto|none|KIND",
                   help="flags images whose safety the data does not tell (default: auto = the "
                        "world's retrieval judge; KIND: an image judge kind, e.g. nudenet)")
    p.add_argument("--device", default=None)
    p.add_argument("--restart", action="store_true", help="discard an interrupted run's batches")
    p.add_argument("--json", action="store_true", help="print the report as JSON")


def _hub_columns(args) -> dict:
    return {k: getattr(args, k) for k in ("image_column", "caption_column", "unsafe_column")
            if getattr(args, k)}


def _print_report(report, as_json: bool, verb: str) -> None:
    if report.worker:  # one of several processes: worker 0 prints the gallery's report
        print(f"{report.worker}: done ({report.seconds:.1f}s); worker 0 writes {report.out}")
        return
    if as_json:
        print(json.dumps(report.to_dict(), indent=2))
        return
    print(f"{verb} {report.out}: {report.count} images, {report.captions} captions "
          f"({report.embedded} embedded now, {report.resumed_batches} batches resumed, "
          f"{report.seconds:.1f}s)")
    u = report.unsafe
    if u:
        print(f"unsafe flags: {u.get('unsafe', 0)} unsafe, {u.get('safe', 0)} safe, "
              f"{u.get('unknown', 0)} unknown ({', '.join(u.get('sources', [])) or 'none'})")
    for corpus, specs in report.index.items():
        for model, spec in specs.items():
            extra = ", ".join(f"{k}={spec[k]}" for k in ("nlist", "nprobe", "m", "ef_search",
                                                         "recall_at_10") if k in spec)
            print(f"index {corpus}/{model}: {spec['type']}" + (f" ({extra})" if extra else ""))
    for note in report.notes:
        print(f"note: {note}")
    if report.skipped:
        print(f"skipped {len(report.skipped)} unreadable input(s):")
        for s in report.skipped:
            print(f"  {s['id']}: {s['reason']}")


def build_main(argv=None) -> int:
    from .retrieval.build import IndexOptions, build_gallery

    p = argparse.ArgumentParser(
        prog="safeclip index build",
        description="Embed a gallery with both models and index it. Several GPUs: `accelerate "
                    "launch --multi_gpu --num_processes N -m safeclip index build ...`; several "
                    "CPU processes: `torchrun --nproc_per_node N -m safeclip index build ... "
                    "--device cpu` (batches are split between the processes, worker 0 writes "
                    "the index; an interrupted run resumes with any number of them).")
    add_common_args(p)
    _source_args(p, required=True)
    p.add_argument("--out", type=Path, required=True, help="index directory to write")
    p.add_argument("--captions", type=Path, default=None,
                   help="extra caption corpus: .txt (one a line) or CSV/JSON(L) with text, unsafe")
    p.add_argument("--no-captions", action="store_true", help="index no caption corpus")
    p.add_argument("--index-type", default="auto", choices=["auto", "flat", "ivf", "ivfpq", "hnsw"],
                   help="auto: exact up to --exact-max vectors, IVF beyond, IVF-PQ (compressed) "
                        "past --compress-gib of raw vectors")
    p.add_argument("--compress-gib", type=float, default=ann_gib(),
                   help="auto: raw vectors past this size get a compressed index (default 1)")
    p.add_argument("--pq-bytes", type=int, default=None,
                   help="IVF-PQ bytes per vector (default: dimensions / 8)")
    p.add_argument("--rerank", type=int, default=IndexOptions.rerank,
                   help="IVF-PQ: candidates re-scored exactly from float16 vectors kept on disk "
                        "(default 100; 0: the compressed codes alone, lower recall)")
    p.add_argument("--exact-max", type=int, default=IndexOptions.exact_max)
    p.add_argument("--nlist", type=int, default=None, help="IVF lists (default ~4 sqrt(n))")
    p.add_argument("--nprobe", type=int, default=None, help="IVF lists searched (default: "
                                                             "calibrated to recall@10 >= 0.95)")
    p.add_argument("--hnsw-m", type=int, default=32)
    p.add_argument("--ef-search", type=int, default=None, help="HNSW (default: calibrated)")
    p.add_argument("--overwrite", action="store_true", help="replace an existing index")
    p.add_argument("--cross-only", action="store_true",
                   help="embed with the original CLIP only: an index for the clip and cross "
                        "configurations, without the second model's embedding pass")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    options = IndexOptions(args.index_type, args.exact_max, args.nlist, args.nprobe, args.hnsw_m,
                           args.ef_search, int(args.compress_gib * 2**30), args.pq_bytes,
                           args.rerank)
    report = build_gallery(
        args.preset, args.out, images=args.images, dataset=args.dataset, split=args.split,
        limit=args.limit, labels=args.labels, captions=not args.no_captions,
        caption_file=args.captions, batch_size=args.batch_size, options=options,
        judge=args.judge or "auto", overwrite=args.overwrite, restart=args.restart,
        device=args.device, overrides=overrides(args), hub_columns=_hub_columns(args),
        models=("clip",) if args.cross_only else ("clip", "safeclip"))
    _print_report(report, args.json, "built")
    return 0


def add_main(argv=None) -> int:
    from .retrieval.add import add_to_gallery

    p = argparse.ArgumentParser(prog="safeclip index add",
                                description="Add new images to an index (others not re-embedded).")
    add_common_args(p)
    p.set_defaults(preset=None)
    p.add_argument("--index", type=Path, required=True, help="index directory")
    _source_args(p, required=False)
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    from .retrieval.store import read_manifest
    preset = args.preset or read_manifest(args.index)["preset"]
    report = add_to_gallery(
        preset, args.index, images=args.images, dataset=args.dataset, split=args.split,
        limit=args.limit, labels=args.labels, batch_size=args.batch_size, judge=args.judge,
        restart=args.restart, device=args.device, overrides=overrides(args),
        hub_columns=_hub_columns(args))
    _print_report(report, args.json, "updated")
    return 0


def info_main(argv=None) -> int:
    from .retrieval.store import read_manifest

    p = argparse.ArgumentParser(prog="safeclip index info", description="Show an index's manifest.")
    p.add_argument("--index", type=Path, required=True)
    p.add_argument("--json", action="store_true")
    add_common_args(p, preset=False)
    args = p.parse_args(argv)
    m = read_manifest(args.index)
    if args.json:
        print(json.dumps(m, indent=2))
        return 0
    print(f"{args.index}: preset {m['preset']}, dim {m['dim']}, {m['count']} images, "
          f"{m['captions']} captions, {m['skipped']} skipped, {m['checksum']}")
    for name, model in m["models"].items():
        print(f"  {name}: {model['ref']}")
    for corpus, specs in m["index"].items():
        print(f"  {corpus}: " + ", ".join(f"{k} {v['type']}" for k, v in specs.items()))
    return 0


SUBCOMMANDS = {"build": build_main, "add": add_main, "info": info_main}


def main(argv=None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if not argv or argv[0] not in SUBCOMMANDS:
        print(f"usage: safeclip index {{{','.join(SUBCOMMANDS)}}} ...\n\n" + __doc__.strip(),
              file=sys.stderr)
        return 2
    try:
        return SUBCOMMANDS[argv[0]](argv[1:])
    except (ImportError, FileExistsError) as e:  # a missing optional package, an existing index
        print(f"safeclip index {argv[0]}: error: {e}", file=sys.stderr)
        return 1


# ------------------------------------------------------------------------------------ search

def _format(result) -> str:
    lines = [f"{result.direction}: {result.query!r}  ({result.seconds * 1000:.0f} ms)"]
    cols = {m: [f"{h.score:6.3f} {'UNSAFE ' if h.unsafe else ''}{h.id}" for h in hits]
            for m, hits in result.results.items()}
    width = max([len(x) for c in cols.values() for x in c] + [24])
    lines.append(f"{'':4}" + "  ".join(c.ljust(width) for c in cols))
    for i in range(max(len(c) for c in cols.values())):
        lines.append(f"{i + 1:>3} " + "  ".join((c[i] if i < len(c) else "").ljust(width)
                                                  for c in cols.values()))
    for m in result.results:
        share = result.unsafe_share(m)
        if share is not None:
            lines.append(f"{m}: {share:.0%} of the results are flagged unsafe")
    lines += [f"note: {n}" for n in result.notes]
    return "\n".join(lines)


def _world_gallery(preset: str | None) -> Path:
    """The gallery a world ships with, or its default gallery once built (else an error that
    says how to get one)."""
    from .errors import StudioError
    from .presets import default_preset, get_preset
    from .retrieval.default import DefaultGallery, how_to_build

    world = get_preset(preset or default_preset())
    r = world.retrieval
    if r is not None and r.gallery:
        return Path(r.gallery)
    if r is not None and r.gallery_source is not None:
        d = DefaultGallery(world)
        if d.ready:
            return d.path
        raise StudioError(f"world {world.name!r} has no gallery on disk yet: start the app once "
                          f"(it builds one), pass --index DIR, or {how_to_build(world)}")
    raise StudioError(f"world {world.name!r} has no gallery: pass --index DIR, or "
                      f"{how_to_build(world)}")


def search_main(argv=None) -> int:
    from .retrieval.gallery import Gallery

    p = argparse.ArgumentParser(prog="safeclip search",
                                description="Search a gallery in its configurations.")
    add_common_args(p, capability="retrieval")
    p.set_defaults(preset=None)  # default: the world the index was built with
    p.add_argument("--index", type=Path, default=None,
                   help="index directory (default: the world's own gallery)")
    p.add_argument("--config", action="append", choices=["clip", "safeclip", "cross"],
                   help="only these configurations (repeatable; default: every one served)")
    p.add_argument("--alpha", type=float, default=None,
                   help="strength of the cross configuration's Safe-CLIP query (0..1.5)")
    p.add_argument("--beta", type=float, default=0.0, help="query-time steering (0..1)")
    q = p.add_mutually_exclusive_group(required=True)
    q.add_argument("--text", action="append", help="text query (repeat for a batch)")
    q.add_argument("--image", action="append", type=Path, help="image query (repeatable)")
    p.add_argument("--k", type=int, default=5, help="results per model (default 5)")
    p.add_argument("--target", default=None, choices=["images", "captions"],
                   help="corpus to search (default: images for text, captions for images)")
    p.add_argument("--device", default=None)
    p.add_argument("--json", action="store_true", help="print JSON")
    args = p.parse_args(argv)
    setup_logging(args.log_level)
    if args.image:  # refuse unreadable query images before loading any model
        from .images import load_rgb
        for path in args.image:
            load_rgb(path)
    index = args.index or _world_gallery(args.preset)
    gallery = Gallery.open(index, args.preset, overrides=overrides(args), device=args.device)
    kw = dict(configs=args.config, alpha=args.alpha, beta=args.beta)
    if args.text:
        results = gallery.search_text(args.text, args.k, args.target or "images", **kw)
    else:
        results = gallery.search_image([str(x) for x in args.image], args.k,
                                       args.target or "auto", **kw)
    if args.json:
        out = [r.to_dict() for r in results]
        print(json.dumps(out[0] if len(out) == 1 else out, indent=2))
    else:
        print("\n\n".join(_format(r) for r in results))
    return 0
