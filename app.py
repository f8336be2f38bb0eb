"""Safe-CLIP Studio: original CLIP and Safe-CLIP side by side.

    python app.py [--preset auto|mini|vit-l-14|vit-l-14-336|vit-h-14] [--gallery DIR]
                  [--gallery-dataset ID] [--host 127.0.0.1] [--port 7860] [--share]

Every flag also reads from the environment (for Hugging Face Spaces): SAFECLIP_PRESET,
SAFECLIP_GALLERY, SAFECLIP_GALLERY_DATASET, GRADIO_SERVER_NAME, GRADIO_SERVER_PORT,
SAFECLIP_SHARE; the models of a world from SAFECLIP_CLIP, SAFECLIP_SAFE_CLIP, ... or
SAFECLIP_MODELS_DIR (see ``safeclip.presets``). It runs from the code as it is: nothing needs to
be installed but requirements.txt. ``demo`` at module level lets ``gradio app.py`` hot-reload.
"""
import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home; works offline

from safeclip.presets import list_presets  # noqa: E402
from safeclip.services import Studio  # noqa: E402  (light: imports neither torch nor gradio)


def parse_args(argv=None):
    env = os.environ.get
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=env("SAFECLIP_PRESET", "auto"),
                   choices=["auto", *list_presets()],
                   help="auto (default): a real world when its weights are reachable, else the "
                        "offline one")
    p.add_argument("--gallery", default=env("SAFECLIP_GALLERY"),
                   help="index built with `safeclip index build` (default: the world's gallery)")
    p.add_argument("--gallery-dataset", default=env("SAFECLIP_GALLERY_DATASET"),
                   help="Hub data set the default gallery of a real world is built from")
    p.add_argument("--host", default=env("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(env("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true", default=env("SAFECLIP_SHARE") == "1")
    args = p.parse_args(argv)
    if args.preset not in ["auto", *list_presets()]:  # argparse does not check defaults (env)
        p.error(f"SAFECLIP_PRESET={args.preset!r} is not a world: "
                f"auto, {', '.join(list_presets())}")
    return args


args = parse_args([] if __name__ != "__main__" else None)
# the world is chosen (Hub probe for `auto`) and retrieval's models load while gradio imports
warm = ("gallery",) if __name__ == "__main__" else ()
pending = Studio.start(args.preset, args.gallery, gallery_dataset=args.gallery_dataset, warm=warm)

from demo.ui import build_ui  # noqa: E402

studio = pending()
demo = build_ui(studio)

if __name__ == "__main__":
    from demo.files import thumbnail_app_kwargs

    demo.queue(default_concurrency_limit=2).launch(server_name=args.host, server_port=args.port,
                                                   share=args.share,
                                                   app_kwargs=thumbnail_app_kwargs())
