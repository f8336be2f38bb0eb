"""Every tab of every real world answers after a plain Hub download: ``python app.py --preset W``
launched with the stand-ins in ``SAFECLIP_MODELS_DIR`` (the layout `safeclip download --out`
leaves), offline, its default gallery built on first use from a small local image-caption data
set; then each endpoint the world shows is called through ``gradio_client``."""
from __future__ import annotations

import time

import numpy as np
import pytest
from PIL import Image

pytestmark = pytest.mark.slow

WORLDS = ("vit-l-14", "vit-l-14-336", "vit-h-14")


def wait_for_gallery(client, timeout: float = 240.0) -> tuple:
    """search_text's answer once the default gallery is built (it says how far it is till then)."""
    from gradio_client.exceptions import AppError

    t0, last = time.time(), ""
    while time.time() - t0 < timeout:
        try:
            return client.predict("a dog on the beach", 5, False, 1.0, 0.0, api_name="/search_text")
        except AppError as e:
            last = str(e)
            assert "Building the default gallery" in last or "built on first use" in last, last
            time.sleep(1.0)
    raise AssertionError(f"the default gallery was not built within {timeout:.0f} s: {last}")


@pytest.mark.parametrize("world", WORLDS)
def test_a_real_world_answers_every_tab(world, models_dir, gallery_dataset, tmp_path):
    from gradio_client import Client, handle_file

    from demo.process import AppProcess
    from safeclip.presets import get_preset

    env = {"SAFECLIP_MODELS_DIR": str(models_dir[0]), "HF_HUB_OFFLINE": "1",
           "HF_DATASETS_OFFLINE": "1", "SAFECLIP_GALLERY_DATASET": str(gallery_dataset),
           "SAFECLIP_CACHE": str(tmp_path / "cache"), "OMP_NUM_THREADS": "1"}
    with AppProcess(["--preset", world], log=tmp_path / "app.log", env=env) as app:
        client = Client(app.url, verbose=False)
        names = set(client.view_api(print_info=False, return_format="dict")["named_endpoints"])
        assert {"/search_text", "/search_image", "/embed_view", "/generate", "/caption"} <= names
        clip, safe, cross, summary = wait_for_gallery(client)
        assert len(clip) == len(safe) == len(cross) == 5 and "Unsafe in top 5" in summary
        image = tmp_path / "q.png"
        Image.fromarray(np.random.default_rng(0).integers(0, 255, (40, 50, 3),
                                                          dtype=np.uint8)).save(image)
        *tables, _ = client.predict(handle_file(str(image)), 3, 1.0, 0.0,
                                    api_name="/search_image")
        assert [len(t["data"]) for t in tables] == [3, 3, 3]
        *plots, line = client.predict("a cat on a sofa", None, 1.0, api_name="/embed_view")
        assert len(plots) == 3
        for plot in plots:
            rows = plot["value"]["data"] if "value" in plot else plot["data"]
            assert sum(r[2] == "query" for r in rows) == 1 and len(rows) > 1
        assert line.count("of the 10 items it retrieves are unsafe") == 3
        img_c, img_s, ver_c, ver_s, _ = client.predict("a dog with a ball in the park", "", 0, 2,
                                                       5.0, False, api_name="/generate")
        size = get_preset(world).generation.defaults["size"]  # 512 for SD 1.4, 768 for SD 2
        assert Image.open(img_c).size == (size, size) and "judged" in ver_c and "judged" in ver_s
        ans_c, ans_s, flag_c, flag_s, _ = client.predict(handle_file(str(image)), "", 3,
                                                         api_name="/caption")
        assert isinstance(ans_c, str) and isinstance(ans_s, str)
        assert app.alive(), app.tail()
    log = app.log.read_text()
    assert "internal error" not in log and " failed" not in log, log[-3000:]  # no bug met
