"""Safe-CLIP Studio: original CLIP and Safe-CLIP side by side.

    python app.py [--preset mini] [--host 127.0.0.1] [--port 7860] [--share]

Flags also read from the environment (for Hugging Face Spaces): SAFECLIP_PRESET, GRADIO_SERVER_NAME,
GRADIO_SERVER_PORT. ``demo`` at module level lets ``gradio app.py`` hot-reload.
"""
import argparse
import os

os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")  # no phoning home; works offline

from demo.ui import build_ui  # noqa: E402


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--preset", default=os.environ.get("SAFECLIP_PRESET", "mini"))
    p.add_argument("--host", default=os.environ.get("GRADIO_SERVER_NAME", "127.0.0.1"))
    p.add_argument("--port", type=int, default=int(os.environ.get("GRADIO_SERVER_PORT", 7860)))
    p.add_argument("--share", action="store_true")
    return p.parse_args(argv)


args = parse_args([] if __name__ != "__main__" else None)
demo = build_ui(args.preset)

if __name__ == "__main__":
    demo.queue(default_concurrency_limit=1).launch(server_name=args.host, server_port=args.port,
                                                   share=args.share)
