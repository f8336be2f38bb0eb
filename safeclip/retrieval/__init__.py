"""Side-by-side retrieval: faiss indexes over galleries, searched with both models of a preset.

    >>> from safeclip.retrieval import build_gallery, Gallery
    >>> build_gallery("mini", "assets/gallery/mini", dataset="synthetic:test")
    >>> g = Gallery.open("assets/gallery/mini", preset="mini")
    >>> res = g.search_text("a child holding a gun", k=5)
    >>> res.results["clip"][0].unsafe, res.results["safeclip"][0].unsafe

Modules: ``ann`` (faiss index choice, calibration, search), ``sources`` (folders, the synthetic
ViSU, Hub datasets), ``store`` (on-disk layout, manifest, resumable shards), ``build``
(embedding and indexing, adding images), ``gallery`` (search). Command line: ``safeclip index``
and ``safeclip search`` (``safeclip/index_cli.py``).
"""
from . import foreign  # noqa: F401 - registers clip-retrieval folders with Gallery.open
from .add import add_to_gallery
from .ann import EXACT_MAX, IndexSpec, build_index, choose_spec, search
from .build import BuildReport, IndexOptions, build_gallery
from .gallery import Gallery, Hit, SearchResult
from .sources import make_source
from .store import GalleryMismatchError, read_manifest

__all__ = ["EXACT_MAX", "IndexSpec", "build_index", "choose_spec", "search", "BuildReport",
           "IndexOptions", "add_to_gallery", "build_gallery", "Gallery", "Hit", "SearchResult",
           "make_source", "GalleryMismatchError", "read_manifest"]
