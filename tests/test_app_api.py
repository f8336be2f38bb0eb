"""End to end through ``gradio_client``: every endpoint of the launched app (mini world), its
answers checked, and bad input answered with a readable message while the app keeps serving."""
from __future__ import annotations

import re

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow
UNSAFE_QUERY = "a man holding a knife in the kitchen"


@pytest.fixture(scope="module")
def client(app_server):
    from gradio_client import Client

    return Client(app_server.url, verbose=False)


def counts(summary: str) -> tuple[int, int, int]:
    """Unsafe counts of the CLIP, Safe-CLIP and cross columns from the summary line."""
    m = re.search(r"Unsafe in top (\d+): CLIP \*\*(\d+)\*\* · Safe-CLIP \*\*(\d+)\*\* · "
                  r"Safe-CLIP query over the CLIP index \*\*(\d+)\*\*", summary)
    assert m, summary
    return int(m.group(2)), int(m.group(3)), int(m.group(4))


def sharpness(path: str) -> float:
    a = np.asarray(Image.open(path).convert("L"), dtype=np.float32)
    return float(np.abs(np.diff(a, axis=1)).mean())


def test_endpoints_are_named(client):
    names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
    assert {"/search_text", "/search_image", "/generate", "/caption", "/embed_view"} <= names


def test_search_text_fills_three_columns_and_blurs_flagged_images(client):
    clip, safe, cross, summary = client.predict(UNSAFE_QUERY, 10, False, 1.0, 0.0,
                                                api_name="/search_text")
    assert len(clip) == len(safe) == len(cross) == 10
    assert all(item["caption"].startswith(f"#{i + 1} · ") for i, item in enumerate(clip))
    n_clip, n_safe, n_cross = counts(summary)
    assert n_clip == sum("unsafe" in it["caption"] for it in clip) and n_clip >= 8
    assert n_safe == sum("unsafe" in it["caption"] for it in safe)
    assert n_cross == sum("unsafe" in it["caption"] for it in cross) and n_cross <= 2
    flagged = [it for it in clip if "unsafe" in it["caption"]]
    assert all("blurred" in it["caption"] for it in flagged)
    revealed, _, _, _ = client.predict(UNSAFE_QUERY, 10, True, 1.0, 0.0, api_name="/search_text")
    assert not any("blurred" in it["caption"] for it in revealed)
    # the same flagged hit, blurred then revealed: the blurred one has lost its edges
    first = next(i for i, it in enumerate(clip) if "unsafe" in it["caption"])
    assert sharpness(clip[first]["image"]) < 0.5 * sharpness(revealed[first]["image"])


def test_search_image_returns_captions_for_both_models(client, tmp_path):
    from gradio_client import handle_file

    from safeclip.mini.synthetic import SyntheticViSU

    path = tmp_path / "g.png"
    SyntheticViSU("test")[3]["G"].save(path)
    t_clip, t_safe, t_cross, summary = client.predict(handle_file(str(path)), 5, 1.0, 0.0,
                                                      api_name="/search_image")
    for table in (t_clip, t_safe, t_cross):
        assert table["headers"] == ["rank", "score", "caption", "flag"]
        assert [r[0] for r in table["data"]] == [1, 2, 3, 4, 5]
        scores = [r[1] for r in table["data"]]
        assert scores == sorted(scores, reverse=True)
    assert counts(summary)[0] >= 3  # the original reads the glyph: unsafe captions first


def test_embed_view_places_the_query_for_each_configuration(client):
    clip, safe, cross, summary = client.predict(UNSAFE_QUERY, None, 1.0, api_name="/embed_view")
    for plot in (clip, safe, cross):
        rows = plot["value"]["data"] if "value" in plot else plot["data"]
        groups = {r[2] for r in rows}
        assert {"safe image", "unsafe image", "safe text", "unsafe text", "query"} <= groups
        assert sum(r[2] == "query" for r in rows) == 1
    assert summary.count("of the 10 items it retrieves are unsafe") == 3


def test_generate_returns_both_images_with_verdicts(client):
    img_c, img_s, ver_c, ver_s, notes = client.predict(
        "a dog with a ball in the park", "", 0, 8, 5.0, False, api_name="/generate")
    for img in (img_c, img_s):
        assert Image.open(img).size[0] >= 64
    for v in (ver_c, ver_s):
        assert "judged" in v


def test_caption_returns_both_answers(client, tmp_path):
    from gradio_client import handle_file

    from safeclip.mini.synthetic import SyntheticViSU

    path = tmp_path / "v.png"
    SyntheticViSU("test")[5]["V"].save(path)
    ans_c, ans_s, flag_c, flag_s, notes = client.predict(handle_file(str(path)), "", 16,
                                                         api_name="/caption")
    assert ans_c.strip() and ans_s.strip()
    assert flag_c and flag_s


def odd_images(tmp_path) -> dict[str, str]:
    """Valid images in awkward formats, which must be answered normally."""
    from safeclip.mini.synthetic import SyntheticViSU

    base = SyntheticViSU("test")[1]["V"]
    paths = {}
    frames = [base.convert("P"), base.rotate(90).convert("P")]
    paths["gif"] = tmp_path / "anim.gif"
    frames[0].save(paths["gif"], save_all=True, append_images=frames[1:], duration=100)
    paths["cmyk"] = tmp_path / "cmyk.jpg"
    base.convert("CMYK").save(paths["cmyk"])
    paths["png16"] = tmp_path / "deep.png"
    Image.fromarray((np.asarray(base.convert("L"), dtype=np.uint16) * 257)).save(paths["png16"])
    return {k: str(v) for k, v in paths.items()}


def bad_images(tmp_path) -> dict[str, str]:
    corrupt = tmp_path / "corrupt.png"
    corrupt.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    bomb = tmp_path / "bomb.png"
    Image.new("1", (20_000, 20_000)).save(bomb)  # 400 Mpixels, a few hundred KB on disk
    return {"corrupt": str(corrupt), "bomb": str(bomb)}


def test_bad_input_gets_a_readable_error_and_the_app_keeps_serving(client, tmp_path):
    from gradio_client import handle_file
    from gradio_client.exceptions import AppError

    imgs = bad_images(tmp_path)
    cases = [
        ("/search_text", ("", 10, False, 1.0, 0.0), "empty"),
        ("/search_text", ("x" * 10_000, 10, False, 1.0, 0.0), "10,000 characters"),
        ("/search_text", (UNSAFE_QUERY, 1000, False, 1.0, 0.0), "top k must be"),
        ("/search_text", (UNSAFE_QUERY, 10, False, 2.0, 0.0),
         "strength alpha must be a number from 0 to 1.5, not 2"),
        ("/search_text", (UNSAFE_QUERY, 10, False, 1.0, -0.5), "steering beta must be"),
        ("/search_image", (handle_file(imgs["corrupt"]), 5, 1.0, 0.0), "not a readable image"),
        ("/search_image", (handle_file(imgs["bomb"]), 5, 1.0, 0.0), "pixels"),
        ("/caption", (handle_file(imgs["bomb"]), "", 16), "pixels"),
        ("/caption", (handle_file(imgs["corrupt"]), "", 16), "not a readable image"),
        ("/caption", (None, "", 16), "no image"),
        ("/embed_view", ("", None, 1.0), None),  # nothing to place: answered, no error
        ("/generate", ("", "", 0, 8, 5.0, False), "empty"),
        ("/generate", ("a dog", "", 0, 1000, 5.0, False), "steps"),
        ("/generate", ("a dog", "", 0, 8, -3.0, False), "guidance"),
        ("/generate", ("a dog", "", -1, 8, 5.0, False), "seed"),
        ("/generate", ("a dog", "", 2**40, 8, 5.0, False), "seed"),
    ]
    for endpoint, args, message in cases:
        if message is None:
            client.predict(*args, api_name=endpoint)
            continue
        with pytest.raises(AppError) as e:
            client.predict(*args, api_name=endpoint)
        assert message in str(e.value), (endpoint, str(e.value))
    # still serving, and non-ASCII text is just text
    _, safe, _, summary = client.predict("un chien 🐕 sur la plage, naïve café", 5, False, 1.0,
                                         0.0, api_name="/search_text")
    assert len(safe) == 5


def test_odd_image_modes_are_answered(client, tmp_path):
    from gradio_client import handle_file

    for kind, path in odd_images(tmp_path).items():
        t_clip, t_safe, _, summary = client.predict(handle_file(path), 3, 1.0, 0.0,
                                                    api_name="/search_image")
        assert len(t_clip["data"]) == 3, kind
