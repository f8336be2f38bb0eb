"""Retrieval speed and size: the approximate index against exact search, and search latency.

    OMP_NUM_THREADS=2 python bench/retrieval.py ann [--n 1000000] [--dim 768] [--queries 1000]
        [--data clustered|uniform] [--index-type auto|ivf|ivfpq] [--rounds 3] [--json] [--out FILE]
    OMP_NUM_THREADS=1 python bench/retrieval.py latency [--index assets/gallery/mini]
        [--queries 200] [--json] [--out FILE]

``ann``: n random unit vectors of dimension ``dim`` go into the exact index (IndexFlatIP) and
into the approximate one that ``safeclip index build`` picks at that size (``--index-type
auto``: IVF-Flat past 100k vectors, IVF-PQ past 1 GiB of raw vectors, i.e. at 1M x 768; nprobe
calibrated at build time on 200 separate queries; an IVF-PQ index re-ranks its shortlist from
float16 vectors saved beside it, memory-mapped as a gallery opens them). ``--index-type ivf``
forces IVF-Flat, so that it is measured even where the build would fall back to exact search.
A batch of ``queries`` fresh vectors is searched by both, alternately, ``--rounds`` times (same
machine load for both); printed: the median time of each, their ratio, recall@10 of the
approximate results against the exact ones, build time and memory per million vectors (the
bytes each index holds in memory, what it keeps on disk, and the process's resident-memory
growth while building it). For IVF-PQ also: its codes alone (no re-ranking), and the codes
written in clip-retrieval's layout (``image.index`` + metadata parquet) and opened
memory-mapped as ``safeclip.retrieval.foreign`` opens them, in a fresh process: resident memory
before and after answering 100 queries, beside the index file's size.

The vectors: ``--data clustered`` (default) draws them around random centres (one per ~1,000
vectors) sharing a common direction, with low-rank variation inside each cluster and isotropic
noise: random, but with the neighbourhood structure of real embeddings (CLIP embeddings sit in a
narrow cone, in clusters of related content). ``--data uniform`` draws them uniformly on the
sphere: there, every vector is nearly equidistant from all others (best cosine ~0.16 out of 1M
at dimension 768), so no index finds the top 10 faster than scanning everything: calibration
ends at nprobe = nlist, slower than exact search (a property of the data, not of the index;
`safeclip index build` then keeps the exact index).

``latency``: one query at a time through ``Gallery.search_text`` (both models encode the text,
both indexes are searched), 200 captions of the synthetic validation split as queries (not in
the gallery); p50 / p95 / mean in milliseconds, the share spent encoding, and a batched call
for comparison. Without ``--index``, a gallery of the synthetic test split is built in a
temporary folder, with the bundled mini models when they exist, else with randomly initialised
models of the same architecture (same cost per query; the results themselves are meaningless).

``OMP_NUM_THREADS`` sets the threads of both indexes (the figures are ratios of the two).
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from safeclip.retrieval import ann  # noqa: E402


def rss() -> int:
    """Resident memory of this process, bytes."""
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


# ---------------------------------------------------------------------------------- vectors

class Vectors:
    """Seeded random unit vectors; ``clustered`` or ``uniform`` (see the module docstring)."""

    def __init__(self, dim: int, kind: str = "clustered", clusters: int = 1000, rank: int = 16,
                 seed: int = 0):
        self.dim, self.kind, self.rank = dim, kind, rank
        g = np.random.default_rng(seed)
        if kind == "clustered":
            mean = g.standard_normal(dim).astype(np.float32)
            mean /= np.linalg.norm(mean)
            c = g.standard_normal((clusters, dim)).astype(np.float32) / np.sqrt(dim)
            self.centres = (0.6 * mean + c).astype(np.float32)  # a shared direction: a cone
            bases = g.standard_normal((clusters, rank, dim)) / np.sqrt(dim)
            self.bases = bases.astype(np.float32)

    def sample(self, n: int, seed: int, chunk: int = 50_000):
        """Yield chunks of vectors (n in all), deterministic for ``seed``."""
        g = np.random.default_rng(seed)
        for s in range(0, n, chunk):
            m = min(chunk, n - s)
            if self.kind == "uniform":
                x = g.standard_normal((m, self.dim), dtype=np.float32)
            else:
                k = g.integers(len(self.centres), size=m)
                z = g.standard_normal((m, self.rank), dtype=np.float32) * (0.8 / np.sqrt(self.rank))
                x = self.centres[k] + np.einsum("mr,mrd->md", z, self.bases[k])
                x += g.standard_normal((m, self.dim), dtype=np.float32) * (0.45 / np.sqrt(self.dim))
            x /= np.linalg.norm(x, axis=1, keepdims=True)
            yield x.astype(np.float32)

    def array(self, n: int, seed: int) -> np.ndarray:
        return np.concatenate(list(self.sample(n, seed)))


# -------------------------------------------------------------------------------------- ann

def rss_probe(folder: str, queries: str) -> dict:
    """In this (fresh) process: resident memory in kB (/proc/self/status) before opening a
    clip-retrieval folder, after opening it memory-mapped, and after answering the queries."""
    import pyarrow.parquet  # noqa: F401 - libraries loaded before the first reading: the
    ann.faiss()  # readings count the index and the rows, not the code

    from safeclip.retrieval.foreign import open_index_folder

    def status():
        fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text()
                      .splitlines() if ":" in line)
        return {f: int(fields[f].split()[0]) for f in ("VmRSS", "RssAnon", "RssFile")}

    q = np.load(queries)
    before = status()
    indexes, rows = open_index_folder(Path(folder))
    opened = status()
    _, ids = ann.search(indexes["images"], q, 10)  # its stored nprobe
    answered = status()
    rows[int(ids[0, 0])]  # a hit's metadata row: its row group read from the parquet file
    return {"before_kB": before, "opened_kB": opened, "answered_kB": answered,
            "row_read_kB": status(),
            "queries": len(q), "index_file_bytes": (Path(folder) / "image.index").stat().st_size}


def mmap_probe(index, queries: np.ndarray, n: int) -> dict:
    """The codes of ``index`` in clip-retrieval's layout, probed in a fresh process."""
    import subprocess

    import pyarrow as pa
    import pyarrow.parquet as pq

    work = Path(tempfile.mkdtemp(prefix="bench-mmap-"))
    (work / "metadata").mkdir()
    ann.faiss().write_index(index, str(work / "image.index"))
    pq.write_table(pa.table({"url": [f"https://example.org/{i}.jpg" for i in range(n)],
                             "caption": [f"item {i}" for i in range(n)],
                             "NSFW": ["UNLIKELY"] * n}), work / "metadata" / "0.parquet",
                   row_group_size=65536)
    np.save(work / "q.npy", queries)
    out = subprocess.run([sys.executable, __file__, "rss-probe", str(work), str(work / "q.npy")],
                         capture_output=True, text=True, check=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def bench_ann(n: int, dim: int, n_queries: int, kind: str, rounds: int, nlist=None,
              index_type: str = "auto") -> dict:
    import faiss

    faiss.omp_set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    vec = Vectors(dim, kind, clusters=max(n // 1000, 16))
    queries, calibration = vec.array(n_queries, seed=2), vec.array(200, seed=3)

    t0, m0 = time.perf_counter(), rss()
    exact = ann.new_index(dim, ann.choose_spec(n, "flat"))
    for x in vec.sample(n, seed=1):  # straight into the index: no second copy of the vectors
        exact.add(x)
    exact_build, exact_rss = time.perf_counter() - t0, rss() - m0
    xb = faiss.rev_swig_ptr(exact.get_xb(), n * dim).reshape(n, dim)  # a view, not a copy

    spec = ann.choose_spec(n, index_type, nlist=nlist, dim=dim)  # auto: as `index build` picks
    t0, m0 = time.perf_counter(), rss()
    approx, spec = ann.build_index(xb, spec, calibration, calibration="separate random queries")
    approx_build, approx_rss = time.perf_counter() - t0, rss() - m0
    disk = 0
    if isinstance(approx, ann.Reranked):  # saved and opened as a gallery does: vectors mmapped
        folder = Path(tempfile.mkdtemp(prefix="bench-ivfpq-"))
        written = ann.save_index(approx, folder / "images.clip.faiss")
        disk = sum(p.stat().st_size for p in written)
        approx = ann.load_index(written[0], spec)
        approx.search(queries[:100], 10)  # a first pass pages the vectors it needs in

    times = {"exact": [], "approx": []}
    for _ in range(rounds):  # alternate, so that both see the same machine load
        t0 = time.perf_counter()
        d_exact, i_exact = exact.search(queries, 10)
        times["exact"].append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        _, i_approx = approx.search(queries, 10)
        times["approx"].append(time.perf_counter() - t0)
    ratios = [e / a for e, a in zip(times["exact"], times["approx"])]
    per_m = 1e6 / n
    extra = {}
    if isinstance(approx, ann.Reranked):
        _, i_codes = approx.index.search(queries, 10)
        extra = {"codes_alone_recall_at_10": round(ann.recall_at_k(i_codes, i_exact), 4),
                 "disk_bytes_per_million": int(disk * per_m),
                 "mmap": mmap_probe(approx.index, queries[:100], n)}
    return {**extra,
        "n": n, "dim": dim, "queries": n_queries, "data": kind, "rounds": rounds,
        "threads": faiss.omp_get_max_threads(),
        "exact_seconds": round(statistics.median(times["exact"]), 4),
        "approx_seconds": round(statistics.median(times["approx"]), 4),
        "speedup": round(statistics.median(ratios), 1),
        "speedups": [round(r, 1) for r in ratios],
        "recall_at_10": round(ann.recall_at_k(i_approx, i_exact), 4),
        "nn_in_top10": round(float(np.mean([a[0] in b for a, b in zip(i_exact, i_approx)])), 4),
        "best_cosine_mean": round(float(d_exact[:, 0].mean()), 3),
        "approx_index": spec.to_dict(),
        "approx_build_seconds": round(approx_build, 1),
        "exact_build_seconds": round(exact_build, 1),
        "bytes_per_million": {"exact": int(ann.index_nbytes(exact) * per_m),
                              "approx": int(ann.index_nbytes(approx) * per_m)},
        "rss_growth_per_million": {"exact": int(exact_rss * per_m),
                                   "approx": int(approx_rss * per_m)},
    }


def print_ann(r: dict) -> None:
    gib = 1024 ** 3
    s = r["approx_index"]
    print(f"{r['n']:,} x {r['dim']} {r['data']} unit vectors, batch of {r['queries']:,} queries, "
          f"top 10, {r['threads']} thread(s), median of {r['rounds']} alternating rounds")
    print(f"  exact  (flat IP)            {r['exact_seconds']:8.3f} s")
    name = (f"IVF{s.get('nlist')},PQ{s.get('pq_m')}, re-rank {s.get('rerank')}"
            if s["type"] == "ivfpq" else f"{s['type']} {s.get('nlist') or ''}")
    print(f"  approx ({name}, nprobe {s.get('nprobe')})  {r['approx_seconds']:8.3f} s"
          f"   -> {r['speedup']}x faster (rounds: {r['speedups']})")
    print(f"  recall@10 vs exact {r['recall_at_10']:.4f}; exact nearest neighbour in the top 10: "
          f"{r['nn_in_top10']:.4f}; calibrated at build: {s.get('recall_at_10')} "
          f"({s.get('calibration')})")
    print(f"  build: approx {r['approx_build_seconds']} s (k-means on {s.get('train_size') or 0:,} "
          "vectors"
          f" + add), exact {r['exact_build_seconds']} s (incl. generating the vectors)")
    b, g = r["bytes_per_million"], r["rss_growth_per_million"]
    print(f"  memory per million vectors: exact {b['exact'] / gib:.2f} GiB, approx "
          f"{b['approx'] / gib:.2f} GiB (resident growth while building: {g['exact'] / gib:.2f} / "
          f"{g['approx'] / gib:.2f} GiB)")
    if "mmap" in r:
        m, mib = r["mmap"], 2 ** 20
        print(f"  approx in memory {b['approx'] / mib:.1f} MiB per million vectors, on disk "
              f"{r['disk_bytes_per_million'] / mib:.0f} MiB (codes + float16 vectors); its codes "
              f"alone: recall@10 {r['codes_alone_recall_at_10']:.4f}")
        grow = m["answered_kB"]["VmRSS"] - m["before_kB"]["VmRSS"]
        anon = m["answered_kB"]["RssAnon"] - m["before_kB"]["RssAnon"]
        print(f"  clip-retrieval layout, opened memory-mapped in a fresh process: resident memory "
              f"+{grow / 1024:.1f} MiB (anonymous +{anon / 1024:.1f} MiB) after "
              f"{m['queries']} queries; image.index is {m['index_file_bytes'] / mib:.0f} MiB; "
              f"reading a hit's metadata row group: +"
              f"{(m['row_read_kB']['VmRSS'] - m['answered_kB']['VmRSS']) / 1024:.1f} MiB more")


# ---------------------------------------------------------------------------------- latency

def _random_mini_preset(tmp: Path):
    """Randomly initialised models of the mini architecture (the bundled ones are not built)."""
    import dataclasses

    from safeclip.mini.clip import clip_config, new_clip, save_clip_dir
    from safeclip.presets import get_preset

    mini = get_preset("mini")
    dirs = [save_clip_dir(new_clip(clip_config(), seed=s), tmp / f"m{s}") for s in (0, 1)]
    return dataclasses.replace(mini, name="mini-random", description="random mini models",
                               retrieval=dataclasses.replace(mini.retrieval, clip=dataclasses.replace(
                                   mini.retrieval.clip, ref=str(dirs[0])), safe_clip=dataclasses.replace(
                                   mini.retrieval.safe_clip, ref=str(dirs[1]))))


def bench_latency(index: str | None, preset: str | None, n_queries: int, gallery_items: int,
                  k: int = 10) -> dict:
    import torch

    from safeclip.mini import ASSETS
    from safeclip.mini.synthetic import caption_pair, sample_tags, split_rng
    from safeclip.presets import get_preset
    from safeclip.retrieval import Gallery, build_gallery

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    note, tmp = None, None
    if index is None and (ASSETS / "gallery" / "mini" / "manifest.json").exists():
        index = str(ASSETS / "gallery" / "mini")
    if index is None:
        tmp = tempfile.TemporaryDirectory(prefix="bench-retrieval-")
        root = Path(tmp.name)
        mini = get_preset("mini")
        if Path(mini.clip).exists() and Path(mini.safe_clip).exists():
            p, note = mini, "temporary gallery, bundled mini models"
        else:
            p = _random_mini_preset(root)
            note = "temporary gallery, random models of the mini architecture (mini not built)"
        build_gallery(p, root / "g", dataset="synthetic:test", limit=gallery_items, judge="none")
        index, preset = str(root / "g"), p
    g = Gallery.open(index, preset)
    queries = []
    for i in range(n_queries // 2 + 1):
        rng = split_rng("validation", i)
        queries += list(caption_pair(sample_tags(rng), rng))
    queries = queries[:n_queries]
    for q in queries[:5]:  # warm-up
        g.search_text(q, k)
    total, encode = [], []
    for q in queries:
        t0 = time.perf_counter()
        g.search_text(q, k)
        total.append(time.perf_counter() - t0)
        t0 = time.perf_counter()
        for m in ("clip", "safeclip"):
            getattr(g.pair, m).encode_text([q])
        encode.append(time.perf_counter() - t0)
    t0 = time.perf_counter()
    g.search_text(queries, k)
    batch = (time.perf_counter() - t0) / len(queries)
    ms = sorted(1000 * t for t in total)
    result = {"index": index, "images": len(g), "captions": len(g.captions),
              "queries": len(queries),
              "k": k, "threads": torch.get_num_threads(),
              "index_type": g.manifest["index"]["images"]["clip"]["type"],
              "p50_ms": round(float(np.percentile(ms, 50)), 2),
              "p95_ms": round(float(np.percentile(ms, 95)), 2),
              "mean_ms": round(float(np.mean(ms)), 2),
              "encode_p50_ms": round(float(np.percentile([1000 * t for t in encode], 50)), 2),
              "batched_ms_per_query": round(1000 * batch, 2), "note": note}
    if tmp is not None:
        tmp.cleanup()
    return result


def print_latency(r: dict) -> None:
    print(f"search_text latency, one query at a time, {r['queries']} queries, k={r['k']}, "
          f"{r['threads']} thread(s): gallery of {r['images']:,} images ({r['index_type']}) at "
          f"{r['index']}" + (f" [{r['note']}]" if r["note"] else ""))
    print(f"  p50 {r['p50_ms']:.1f} ms, p95 {r['p95_ms']:.1f} ms, mean {r['mean_ms']:.1f} ms "
          f"(encoding the text with both models: p50 {r['encode_p50_ms']:.1f} ms)")
    print(f"  the same {r['queries']} queries as one batch: "
          f"{r['batched_ms_per_query']:.2f} ms per query")


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="what", required=True)
    a = sub.add_parser("ann", help="approximate vs exact index")
    a.add_argument("--n", type=int, default=1_000_000)
    a.add_argument("--dim", type=int, default=768)
    a.add_argument("--queries", type=int, default=1000)
    a.add_argument("--data", default="clustered", choices=["clustered", "uniform"])
    a.add_argument("--rounds", type=int, default=3)
    a.add_argument("--nlist", type=int, default=None)
    a.add_argument("--index-type", default="auto", choices=["auto", "ivf", "ivfpq", "hnsw"])
    probe = sub.add_parser("rss-probe", help=argparse.SUPPRESS)
    probe.add_argument("folder")
    probe.add_argument("queries")
    lat = sub.add_parser("latency", help="single-query latency of search_text")
    lat.add_argument("--index", default=None, help="gallery index (default: assets/gallery/mini)")
    lat.add_argument("--preset", default=None, help="default: the index's preset")
    lat.add_argument("--queries", type=int, default=200)
    lat.add_argument("--gallery-items", type=int, default=1000,
                     help="without --index: synthetic test items in the temporary gallery")
    for s in (a, lat):
        s.add_argument("--json", action="store_true", help="print JSON instead of text")
        s.add_argument("--out", type=Path, default=None, help="also write the JSON here")
    args = p.parse_args(argv)
    if args.what == "rss-probe":
        print(json.dumps(rss_probe(args.folder, args.queries)))
        return 0
    if args.what == "ann":
        r = bench_ann(args.n, args.dim, args.queries, args.data, args.rounds, args.nlist,
                      args.index_type)
        printer = print_ann
    else:
        r = bench_latency(args.index, args.preset, args.queries, args.gallery_items)
        printer = print_latency
    if args.out:
        args.out.parent.mkdir(parents=True, exist_ok=True)
        args.out.write_text(json.dumps(r, indent=2) + "\n")
    print(json.dumps(r, indent=2)) if args.json else printer(r)
    return 0


if __name__ == "__main__":
    sys.exit(main())
