"""faiss indexes over L2-normalised embeddings: exact, IVF, compressed IVF-PQ or HNSW by size.

    >>> from safeclip.retrieval.ann import choose_spec, build_index, search
    >>> spec = choose_spec(len(x), dim=768)   # flat, then IVF, then IVF-PQ past COMPRESS_BYTES
    >>> index, spec = build_index(x, spec, calibration_queries=q)   # nprobe tuned to recall@10
    >>> scores, ids = search(index, queries, k=10)  # batched; ids are -1 past the end

Inner product on normalised vectors is cosine similarity. The exact index is ``IndexFlatIP``.
Beyond ``EXACT_MAX`` vectors an ``IndexIVFFlat`` is trained (spherical k-means on a sample) and
its ``nprobe`` is *calibrated* at build time: the smallest power of two whose recall@10 against
exact search reaches ``TARGET_RECALL`` on calibration queries (the other modality's embeddings
when there are any, since text searches images). When that takes more than 1/8 of the lists
(data without neighbourhood structure, such as uniformly random vectors), an automatically chosen
IVF gives way to exact search, which is then faster. Past ``COMPRESS_BYTES`` of raw vectors
(where a flat or IVF-Flat index's memory hurts: 1 GiB, about 350,000 vectors of 768 floats) an
``IndexIVFPQ`` stores each vector in ``pq_m`` bytes (product quantisation, 8 bits per
sub-vector: 96 bytes for 768 dimensions, some 100 MB per million vectors with the ids), trained
on a sample. Codes that small cannot order a query's close neighbours (recall@10 0.67 alone at
1M x 768 clustered vectors, ``bench/retrieval.py ann``), so the index shortlists ``rerank``
candidates (100) and re-scores them exactly from the vectors stored as float16 on disk beside
it and memory-mapped (``Reranked``): resident memory stays the codes', the disk holds 2 bytes
per dimension, and ``nprobe`` is calibrated on the re-ranked results (the shortlist doubling
while it is what caps the recall).
HNSW (``IndexHNSWFlat``) is there for forced use, with ``efSearch`` calibrated the same way.
The chosen type, its parameters and the measured recall travel in an ``IndexSpec`` that the
gallery manifest records.
"""
from __future__ import annotations

import dataclasses
import logging
import math
import os
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from ..errors import InputError

logger = logging.getLogger(__name__)

EXACT_MAX = 100_000  # vectors: up to this many, exact search (IndexFlatIP) by default
COMPRESS_BYTES = 2**30  # raw vectors past this size: a compressed index (IVF-PQ) by default
TARGET_RECALL = 0.95  # recall@10 against exact search that calibration aims for
PQ_TARGET_RECALL = 0.90  # the same for IVF-PQ, whose codes cap what nprobe can reach
RERANK_DEPTH = 100  # IVF-PQ: candidates re-scored exactly from the stored float16 vectors
PQ_MIN_VECTORS = 1024  # fewer: exact search (PQ codebooks need 256 training points at least)
RERANK_MAX = 3200  # calibration doubles the shortlist up to this when it caps the recall
KINDS = ("auto", "flat", "ivf", "ivfpq", "hnsw")
TRAIN_POINTS_PER_LIST = 40  # k-means sample size per IVF list (faiss warns under 39)
ADD_CHUNK = 65_536  # vectors per add() call (bounded temporary memory)


def faiss():
    """The faiss module, with a readable error when it is missing."""
    try:
        import faiss as _faiss
    except ImportError:  # pragma: no cover - pinned dependency
        raise ImportError("retrieval needs faiss: pip install faiss-cpu") from None
    return _faiss


@dataclass
class IndexSpec:
    """Which faiss index a corpus uses, and how it was tuned (recorded in the manifest)."""

    type: str  # "flat" (exact inner product), "ivf" (IVF-Flat), "ivfpq" or "hnsw" (HNSW-Flat)
    metric: str = "inner_product"  # cosine on normalised vectors
    forced: bool = False  # True: chosen by a flag, not by the corpus size
    nlist: int | None = None  # ivf: number of k-means lists
    nprobe: int | None = None  # ivf: lists visited per query
    m: int | None = None  # hnsw: neighbours per node
    pq_m: int | None = None  # ivfpq: bytes per vector (sub-quantisers of 8 bits)
    rerank: int | None = None  # ivfpq: shortlist re-scored exactly (float16 vectors on disk)
    ef_construction: int | None = None  # hnsw: candidate list size while building
    ef_search: int | None = None  # hnsw: candidate list size while searching
    train_size: int | None = None  # ivf: vectors the k-means saw
    recall_at_10: float | None = None  # measured against exact search at build time
    calibration: str | None = None  # what the recall was measured on

    def to_dict(self) -> dict:
        return {k: v for k, v in dataclasses.asdict(self).items() if v is not None}

    @classmethod
    def from_dict(cls, d: dict) -> "IndexSpec":
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in d.items() if k in names})


def default_nlist(n: int) -> int:
    """A power of two near 4 sqrt(n), with at least 39 vectors per list to train on."""
    if n < 2 * 39:
        return 1
    target = 2 ** round(math.log2(max(4 * math.sqrt(n), 1)))
    return int(max(1, min(target, 2 ** int(math.log2(n // 39)))))


def default_pq_m(dim: int) -> int:
    """Bytes per vector of IVF-PQ: an eighth of the dimensions (8-dim sub-vectors), a divisor."""
    for m in (dim // 8, 96, 64, 48, 32, 16, 8):
        if m and dim % m == 0 and m <= dim:
            return m
    return 1


def choose_spec(n: int, kind: str = "auto", exact_max: int = EXACT_MAX, nlist: int | None = None,
                nprobe: int | None = None, m: int = 32, ef_search: int | None = None,
                ef_construction: int = 80, dim: int | None = None,
                compress_bytes: int = COMPRESS_BYTES, pq_m: int | None = None,
                rerank: int | None = RERANK_DEPTH) -> IndexSpec:
    """The index for ``n`` vectors: exact up to ``exact_max``, IVF beyond, IVF-PQ past
    ``compress_bytes`` of raw vectors (when ``dim`` is known), or ``kind`` forced."""
    if kind not in KINDS:
        raise InputError(f"index type {kind!r}: one of {', '.join(KINDS)}")
    forced = kind != "auto"
    if kind == "auto":
        kind = "flat" if n <= exact_max else "ivf"
        if kind == "ivf" and dim and n * dim * 4 > compress_bytes:
            kind = "ivfpq"
    if kind == "flat":
        return IndexSpec("flat", forced=forced)
    if kind in ("ivf", "ivfpq"):
        nl = int(nlist or default_nlist(n))
        if n and nl > n:
            raise InputError(f"--nlist {nl} is more than the {n} vectors to index")
        if kind == "ivfpq":
            if not dim:
                raise InputError("an IVF-PQ index needs the vectors' dimension")
            if n < PQ_MIN_VECTORS:  # too few to train 256 codes per sub-quantiser; and small
                logger.warning("%d vectors are too few for IVF-PQ: exact search instead", n)
                return IndexSpec("flat", forced=forced, calibration=f"{n} vectors, fewer than "
                                 f"{PQ_MIN_VECTORS} for IVF-PQ: exact search instead")
            return IndexSpec("ivfpq", forced=forced, nlist=nl, nprobe=nprobe,
                             pq_m=int(pq_m or default_pq_m(dim)), rerank=rerank or None)
        return IndexSpec("ivf", forced=forced, nlist=nl, nprobe=nprobe)
    return IndexSpec("hnsw", forced=forced, m=int(m), ef_construction=int(ef_construction),
                     ef_search=ef_search)


def new_index(dim: int, spec: IndexSpec):
    """An empty faiss index for ``spec`` (IVF still untrained)."""
    f = faiss()
    if spec.type == "flat":
        return f.IndexFlatIP(dim)
    if spec.type == "ivf":
        # (faiss's Python wrapper keeps the quantizer alive as long as the index)
        index = f.IndexIVFFlat(f.IndexFlatIP(dim), dim, int(spec.nlist), f.METRIC_INNER_PRODUCT)
        return index
    if spec.type == "ivfpq":
        if dim % int(spec.pq_m):
            raise InputError(f"IVF-PQ: {spec.pq_m} bytes per vector do not divide {dim} dims")
        return f.IndexIVFPQ(f.IndexFlatIP(dim), dim, int(spec.nlist), int(spec.pq_m), 8,
                            f.METRIC_INNER_PRODUCT)
    if spec.type == "hnsw":
        index = f.IndexHNSWFlat(dim, int(spec.m), f.METRIC_INNER_PRODUCT)
        index.hnsw.efConstruction = int(spec.ef_construction or 80)
        return index
    raise ValueError(f"unknown index type {spec.type!r}")


class Reranked:
    """A compressed index whose shortlist of ``depth`` candidates is re-scored exactly from the
    stored vectors (float16, usually a memory-mapped file): searches like a faiss index."""

    def __init__(self, index, vectors: np.ndarray, depth: int = RERANK_DEPTH):
        if len(vectors) != index.ntotal or vectors.shape[1] != index.d:
            raise ValueError(f"{vectors.shape} vectors for an index of {index.ntotal} x {index.d}")
        self.index, self.vectors, self.depth = index, vectors, int(depth)

    @property
    def ntotal(self) -> int:
        return self.index.ntotal

    @property
    def d(self) -> int:
        return self.index.d

    def search(self, q: np.ndarray, k: int):
        _, cand = self.index.search(q, max(int(k), self.depth))
        scores = np.full((len(q), k), -np.inf, np.float32)
        ids = np.full((len(q), k), -1, np.int64)
        for i, row in enumerate(cand):
            row = row[row >= 0]
            if not len(row):
                continue
            order = np.argsort(row)  # ascending rows: fewer, sequential page reads
            s = np.asarray(self.vectors[row[order]], np.float32) @ q[i]
            top = np.argsort(-s)[:k]
            scores[i, :len(top)], ids[i, :len(top)] = s[top], row[order][top]
        return scores, ids

    def add(self, x: np.ndarray) -> None:
        self.index.add(x)
        self.vectors = np.concatenate([np.asarray(self.vectors), x.astype(np.float16)])

    def reconstruct_n(self, start: int, n: int) -> np.ndarray:
        return np.asarray(self.vectors[start:start + n], np.float32)


def vectors_path(index_path: str | Path) -> Path:
    """Where a re-ranked index keeps its float16 vectors: beside it, ``NAME.f16.npy``."""
    index_path = Path(index_path)
    return index_path.with_name(index_path.name.removesuffix(".faiss") + ".f16.npy")


def apply_search_params(index, spec: IndexSpec) -> None:
    f = faiss()
    if isinstance(index, Reranked):
        index.depth = int(spec.rerank or index.depth)
        index = index.index
    if spec.type in ("ivf", "ivfpq") and spec.nprobe:
        f.extract_index_ivf(index).nprobe = int(spec.nprobe)
    elif spec.type == "hnsw" and spec.ef_search:
        index.hnsw.efSearch = int(spec.ef_search)


def _f32(x) -> np.ndarray:
    x = x.numpy() if hasattr(x, "numpy") else np.asarray(x)
    return np.ascontiguousarray(x, dtype=np.float32)


def add_vectors(index, x: np.ndarray, desc: str = "add") -> None:
    """index.add in chunks (bounded temporary memory, a progress bar for big corpora)."""
    from tqdm.auto import tqdm

    starts = range(0, len(x), ADD_CHUNK)
    for s in tqdm(starts, desc=desc, unit="chunk", disable=len(starts) < 4, leave=False):
        index.add(_f32(x[s:s + ADD_CHUNK]))


def train_index(index, x: np.ndarray, spec: IndexSpec, seed: int = 0) -> None:
    """Train an IVF index on a seeded sample of ``x`` (no-op for flat and HNSW)."""
    if spec.type not in ("ivf", "ivfpq") or index.is_trained:
        return
    n = len(x)
    size = min(n, max(TRAIN_POINTS_PER_LIST * int(spec.nlist),
                      256 * 40 if spec.type == "ivfpq" else 0))  # PQ: 256 centroids each
    rows = slice(None)
    if size < n:
        rows = np.sort(np.random.default_rng(seed).choice(n, size, replace=False))
    logger.info("training IVF%d on %d of %d vectors", spec.nlist, size, n)
    index.train(_f32(x[rows]))
    spec.train_size = int(size)


def exact_search(x: np.ndarray, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
    """Brute-force inner-product top-k (what IndexFlatIP computes), without building an index."""
    f = faiss()
    k = min(k, len(x))
    return f.knn(_f32(queries), _f32(x), k, metric=f.METRIC_INNER_PRODUCT)


def recall_at_k(found: np.ndarray, truth: np.ndarray) -> float:
    """Mean share of each row of ``truth`` (exact top-k ids) that ``found`` also returned."""
    k = truth.shape[1]
    hits = [len(set(a[a >= 0].tolist()) & set(b.tolist())) for a, b in zip(found, truth)]
    return float(np.mean(hits) / k) if len(hits) else 1.0


def calibrate(index, x: np.ndarray, queries: np.ndarray, spec: IndexSpec,
              target: float = TARGET_RECALL, k: int = 10, what: str = "queries") -> IndexSpec:
    """Set nprobe (IVF) / efSearch (HNSW) to the smallest power of two reaching ``target``
    recall@k against exact search on ``queries``; a value given by the user is only measured."""
    if spec.type == "flat" or len(queries) == 0:
        return spec
    k = min(k, len(x))
    truth = exact_search(x, queries, k)[1]
    q = _f32(queries)
    if spec.type in ("ivf", "ivfpq"):
        field, top = "nprobe", int(spec.nlist)
        powers = [2 ** i for i in range(int(math.log2(top)) + 1)] + [top]
        candidates = [spec.nprobe] if spec.nprobe else powers
    else:
        field, top = "ef_search", 4096
        candidates = [spec.ef_search] if spec.ef_search else [max(k, 2 ** i) for i in range(4, 13)]
    recall = 0.0
    # a re-ranked index: when the shortlist caps recall below target at any nprobe, it doubles
    depths = ([spec.rerank * 2 ** i for i in range(6) if spec.rerank * 2 ** i <= RERANK_MAX]
              if isinstance(index, Reranked) and spec.rerank else [None])
    for depth in depths:
        if depth:
            spec.rerank = depth
        last = -1.0
        for value in dict.fromkeys(min(int(c), top) for c in candidates):
            setattr(spec, field, value)
            apply_search_params(index, spec)
            recall = recall_at_k(index.search(q, k)[1], truth)
            logger.debug("%s=%d%s: recall@%d %.4f", field, value,
                         f" rerank={depth}" if depth else "", k, recall)
            if recall >= target or (depth and recall < last + 0.002):
                break  # reached, or the shortlist is what limits it
            last = recall
        if recall >= target:
            break
    spec.recall_at_10 = round(recall, 4)
    spec.calibration = f"{len(queries)} {what}, target {target}"
    if recall < target:
        logger.warning("%s index: recall@%d only %.3f at %s=%s", spec.type, k, recall, field,
                       getattr(spec, field))
    logger.info("%s index: %s=%s gives recall@%d %.3f on %s", spec.type, field,
                getattr(spec, field), k, recall, spec.calibration)
    return spec


def build_index(x: np.ndarray, spec: IndexSpec, calibration_queries: np.ndarray | None = None,
                calibration: str = "queries", seed: int = 0):
    """A filled index for the rows of ``x`` and its spec (trained, calibrated when approximate).

    Calibration queries are topped up to 200 with the index's own vectors (each is then its
    own easy first hit, so recall comes out a little optimistic) when fewer are given.
    """
    x = _f32(x)
    if len(x) == 0:
        raise InputError("nothing to index: the corpus is empty")
    spec = dataclasses.replace(spec)
    index = new_index(x.shape[1], spec)
    train_index(index, x, spec, seed)
    add_vectors(index, x, desc=f"add {spec.type}")
    if spec.type == "ivfpq" and spec.rerank:
        index = Reranked(index, x.astype(np.float16), spec.rerank)
    if spec.type != "flat":
        q = np.zeros((0, x.shape[1]), np.float32)
        if calibration_queries is not None:
            q = _f32(calibration_queries)
        if len(q) < 200:
            rows = np.random.default_rng(seed + 1).choice(len(x), min(200 - len(q), len(x)),
                                                          replace=False)
            calibration = f"{calibration} + own vectors" if len(q) else "own vectors"
            q = np.concatenate([q, x[rows]])
        if len(q) > 1000:
            q = q[np.sort(np.random.default_rng(seed + 2).choice(len(q), 1000, replace=False))]
        calibrate(index, x, q, spec, target=PQ_TARGET_RECALL if spec.type == "ivfpq"
                  else TARGET_RECALL, what=calibration)
        if spec.type == "ivf" and not spec.forced and spec.nprobe > max(1, spec.nlist // 8):
            # no neighbourhood structure to exploit (e.g. uniformly random vectors): scanning
            # that many lists is slower than one exact matrix product
            logger.warning("IVF%d needs nprobe=%d for recall@10 >= %.2f on this data: using exact "
                           "search instead", spec.nlist, spec.nprobe, TARGET_RECALL)
            note = f"IVF{spec.nlist} needed nprobe {spec.nprobe}: exact search instead"
            spec = IndexSpec("flat", calibration=note)
            index = new_index(x.shape[1], spec)
            add_vectors(index, x, desc="add flat")
    apply_search_params(index, spec)
    return index, spec


def search(index, queries, k: int, batch: int = 4096) -> tuple[np.ndarray, np.ndarray]:
    """(scores, ids) of the top ``k`` per query, in batches; missing results have id -1."""
    q = _f32(queries)
    if q.ndim == 1:
        q = q[None]
    k = max(1, min(int(k), max(index.ntotal, 1)))
    if index.ntotal == 0 or len(q) == 0:
        return np.zeros((len(q), 0), np.float32), np.zeros((len(q), 0), np.int64)
    out = [index.search(q[s:s + batch], k) for s in range(0, len(q), batch)]
    return np.concatenate([o[0] for o in out]), np.concatenate([o[1] for o in out])


def reconstruct_all(index) -> np.ndarray:
    """Every stored vector, in id order (IVF gets a direct map first)."""
    f = faiss()
    if index.ntotal == 0:
        return np.zeros((0, index.d), np.float32)
    if isinstance(index, Reranked):  # the stored vectors, not the lossy codes
        return index.reconstruct_n(0, index.ntotal)
    ivf = f.try_extract_index_ivf(index)
    if ivf is not None:
        ivf.make_direct_map()
    return index.reconstruct_n(0, index.ntotal)


def index_nbytes(index) -> int:
    """Memory the index holds: vectors, ids, lists, graph links and the IVF quantizer (a
    re-ranked index: its codes; its float16 vectors are on disk, see ``disk_nbytes``)."""
    f = faiss()
    if isinstance(index, Reranked):
        return index_nbytes(index.index)
    ivf = f.try_extract_index_ivf(index)
    if ivf is not None:
        lists = ivf.invlists
        entries = sum(lists.list_size(i) for i in range(lists.nlist))
        pq = getattr(f.downcast_index(ivf), "pq", None)  # IVF-PQ: its codebooks
        tables = pq.M * pq.ksub * pq.dsub * 4 if pq is not None else 0
        return int(entries * (lists.code_size + 8) + index_nbytes(ivf.quantizer) + tables)
    if isinstance(index, f.IndexHNSW):
        storage = f.downcast_index(index.storage)
        h = index.hnsw
        return int(index_nbytes(storage) + h.neighbors.size() * 4 + h.offsets.size() * 8
                   + h.levels.size() * 4)
    return int(index.ntotal * index.d * 4)


def disk_nbytes(index) -> int:
    """Bytes a re-ranked index keeps on disk beside its codes (0 for the others)."""
    return int(index.vectors.nbytes) if isinstance(index, Reranked) else 0


def save_index(index, path: str | Path) -> list[Path]:
    """Write atomically (temp file, then rename): a crash never leaves half an index. Returns
    the files written (a re-ranked index: the faiss file and its float16 vectors)."""
    path = Path(path)
    written = []
    if isinstance(index, Reranked):
        vec = vectors_path(path)
        tmp = vec.with_name(vec.name + ".tmp.npy")
        np.save(tmp, np.ascontiguousarray(index.vectors, np.float16))
        os.replace(tmp, vec)
        written.append(vec)
        index = index.index
    tmp = path.with_name(path.name + ".tmp")
    faiss().write_index(index, str(tmp))
    os.replace(tmp, path)
    return [path, *written]


def load_index(path: str | Path, spec: IndexSpec | None = None):
    """Read an index (a re-ranked one with its float16 vectors memory-mapped, read-only)."""
    index = faiss().read_index(str(path))
    if spec is not None and spec.type == "ivfpq" and spec.rerank:
        vec = vectors_path(path)
        if not vec.is_file():
            raise InputError(f"{path} is re-ranked from {vec.name}, which is missing: rebuild "
                             "the index")
        index = Reranked(index, np.load(vec, mmap_mode="r", allow_pickle=False), spec.rerank)
    if spec is not None:
        apply_search_params(index, spec)
    return index
