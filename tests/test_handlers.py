"""The UI's handlers on hand-made results: flagged images are blurred until revealed, verdicts
and flagged captions are marked, errors become readable gr.Error messages."""
from __future__ import annotations

from types import SimpleNamespace

import gradio as gr
import numpy as np
import pytest
from PIL import Image

from demo import files as f
from demo import handlers as h
from demo import retrieval as r
from safeclip.safety import Verdict


def checkerboard(size=64) -> Image.Image:
    a = (np.indices((size, size)).sum(0) % 2 * 255).astype(np.uint8)
    return Image.fromarray(a).convert("RGB")


def sharpness(img) -> float:
    a = np.asarray(img.convert("L"), dtype=np.float32)
    return float(np.abs(np.diff(a, axis=1)).mean())


def pair_result(clip_unsafe: bool, safe_unsafe: bool):
    def side(unsafe):
        v = Verdict(unsafe, 0.9 if unsafe else 0.1, "violence" if unsafe else None, {}, 0.5)
        return SimpleNamespace(image=checkerboard(), verdict=v)
    return SimpleNamespace(clip=side(clip_unsafe), safeclip=side(safe_unsafe),
                           warnings=["prompt truncated to 32 tokens"])


def test_a_flagged_generation_is_blurred_until_revealed():
    res = pair_result(True, False)
    img_c, img_s, ver_c, ver_s, notes = (Image.open(x) if i < 2 else x for i, x in enumerate(
        h.render_generation(res, reveal=False)))
    assert sharpness(img_c) < 0.2 * sharpness(img_s)  # the flagged one lost its edges
    assert "unsafe" in ver_c and "violence" in ver_c and "blurred" in ver_c
    assert "safe" in ver_s and "blurred" not in ver_s
    assert "truncated" in notes
    img_c2, _, ver_c2, _, _ = h.rerender_generation(res, reveal=True)
    img_c2 = Image.open(img_c2)
    assert sharpness(img_c2) == pytest.approx(sharpness(img_s))
    assert "blurred" not in ver_c2


def test_small_images_are_enlarged_for_display_without_smoothing():
    shown = f.show(checkerboard(64), flagged=False, reveal=False)
    assert shown.size == (192, 192)
    assert set(np.unique(np.asarray(shown.convert("L")))) == {0, 255}


def test_nothing_to_rerender_before_the_first_call():
    assert all(x is not None for x in h.rerender_generation(None, True))


def test_flagged_captions_are_marked():
    res = SimpleNamespace(
        clip=SimpleNamespace(text="a man with a knife", flagged=True, terms=["knife"]),
        safeclip=SimpleNamespace(text="a man with a kite", flagged=False, terms=[]),
        warnings=[])

    class Studio:
        def caption(self, *a, **k):
            return res
    ans_c, ans_s, flag_c, flag_s, notes = h.caption(Studio(), "x.png", "", 16)
    assert ans_c == "a man with a knife" and "knife" in flag_c and "flagged" in flag_c
    assert "no unsafe terms" in flag_s and notes == ""


def test_guard_turns_known_errors_into_readable_messages():
    from safeclip.images import ImageError

    @h.guard
    def bad(kind):
        if kind == "image":
            raise ImageError("/tmp/gradio/ab12/x.png: not a readable image")
        if kind == "value":
            raise ValueError("the prompt is empty: type a few words")
        raise RuntimeError("boom")

    with pytest.raises(gr.Error, match="x.png: not a readable image"):
        bad("image")
    with pytest.raises(gr.Error, match="empty"):
        bad("value")
    with pytest.raises(gr.Error, match="internal error \\(RuntimeError\\): boom"):
        bad("other")


def test_summary_line_counts_every_column():
    from safeclip.retrieval.gallery import SearchResult

    hit = SimpleNamespace(unsafe=True)
    res = SearchResult("q", "text->image", 10, {"clip": [hit] * 9, "cross": [hit]}, 0.0)
    assert r.summary_line(10, res) == ("Unsafe in top 10: CLIP **9** · Safe-CLIP **-** · "
                                       "Safe-CLIP query over the CLIP index **1**")


def test_output_files_are_named_by_content_and_kept_bounded(tmp_path, monkeypatch):
    monkeypatch.setattr(f, "OUTPUTS", tmp_path)
    monkeypatch.setattr(f, "MAX_OUTPUTS", 4)
    a = f.to_file(checkerboard())
    assert f.to_file(checkerboard()) == a  # same content, same file, not rewritten
    for n in range(5):
        f.to_file(Image.new("RGB", (8, 8), (n * 40, 0, 0)))
    files = list(tmp_path.glob("*.webp"))
    assert len(files) <= 4 and not list(tmp_path.glob("*.part"))


def test_readable_keeps_urls_and_drops_server_folders():
    assert h.readable(ValueError("see https://huggingface.co/org/name")) == \
        "see https://huggingface.co/org/name"
    assert h.readable(ValueError("/tmp/gradio/ab/x.png: bad")) == "x.png: bad"


def test_a_gallery_thumbnail_is_made_once_then_reused(tmp_path, monkeypatch):
    monkeypatch.setattr(f, "THUMBS", tmp_path)
    opened = []

    class Studio:
        def gallery(self):
            return SimpleNamespace(manifest={"checksum": "sha256:abcdef0123456789ff"})

        def image_of(self, hit):
            opened.append(hit.id)
            return checkerboard(64)

    hit = SimpleNamespace(id="test-000001-G")
    plain, blurred = f.thumbnail(Studio(), hit, False), f.thumbnail(Studio(), hit, True)
    assert plain != blurred and opened == [hit.id, hit.id]
    for _ in range(3):  # later responses hand gradio the same files: nothing is re-encoded
        assert f.thumbnail(Studio(), hit, True) == blurred
    assert opened == [hit.id, hit.id]
    assert sharpness(Image.open(blurred)) < 0.2 * sharpness(Image.open(plain))
    assert Image.open(plain).size == (192, 192)
    # the plain thumbnail keeps the pixels exactly (lossless), enlarged nearest-neighbour
    expected = checkerboard(64).convert("RGB").resize((192, 192), Image.NEAREST)
    assert np.array_equal(np.asarray(Image.open(plain).convert("RGB")), np.asarray(expected))


def test_thumbnails_are_warmed_once_per_gallery_in_the_background(tmp_path, monkeypatch):
    monkeypatch.setattr(f, "THUMBS", tmp_path)
    monkeypatch.setattr(f, "_warming", set())
    rows = [{"id": f"item-{i}", "unsafe": i % 2 == 1} for i in range(6)]
    gallery = SimpleNamespace(manifest={"checksum": "sha256:0123456789abcdef00"}, items=rows)
    opened = []

    class Studio:
        def gallery(self):
            return gallery

        def image_of(self, hit):
            opened.append(hit.id)
            return checkerboard(64)

    thread = f.warm_thumbnails(Studio(), limit=5)
    thread.join(30)
    assert opened == [r["id"] for r in rows[:5]]  # the first five, each once
    made = sorted(p.name.split(".")[1] for p in tmp_path.glob("*.webp"))
    assert made == ["blur", "blur", "plain", "plain", "plain"]  # unsafe ones blurred
    assert f.warm_thumbnails(Studio(), limit=5) is None  # once per gallery
    assert f.thumbnail(Studio(), SimpleNamespace(id="item-1"), True) and opened[-1] == "item-4"


def test_thumbnails_are_served_from_memory_and_nothing_else_is(tmp_path):
    import asyncio

    name = "0123456789abcdef-" + "a" * 40 + ".plain.webp"
    (tmp_path / name).write_bytes(b"RIFF-webp")
    (tmp_path / "secret.txt").write_text("no")
    passed = []

    async def gradio(scope, receive, send):
        passed.append(scope["path"])

    server = f.ThumbnailServer(gradio, folder=tmp_path)

    def get(path, method="GET"):
        sent = []

        async def send(msg):
            sent.append(msg)

        asyncio.run(server({"type": "http", "method": method, "path": path}, None, send))
        return sent

    base = f"/gradio_api/file={tmp_path}/"
    start, body = get(base + name)
    assert start["status"] == 200 and body["body"] == b"RIFF-webp"
    assert (b"cache-control", b"public, max-age=31536000, immutable") in start["headers"]
    (tmp_path / name).unlink()  # served from memory once read
    assert get(base + name)[1]["body"] == b"RIFF-webp"
    for other in (base + "secret.txt", base + "../" + name, f"{base}x/{name}",
                  "/gradio_api/file=/etc/passwd", "/config"):
        assert get(other) == []  # handed on to gradio, untouched
    assert get(base + "f" * 16 + "-" + "b" * 40 + ".blur.webp") == []  # not there: gradio's 404
    assert get(base + name, method="POST") == []
    assert len(passed) == 7
