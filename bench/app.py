"""App benchmarks, side by side in one run (issue 8).

    python bench/app.py [--rounds 2] [--clients 40] [--calls 5] [--json]

1. Start-up: time from launching ``python app.py --preset mini`` to the first answer of
   ``/search_text``, against the time a bare Gradio app (one button, no models) takes from launch
   to its first answer on the same machine; rounds alternate the two, medians are compared.
2. Load: ``--clients`` concurrent gradio_client clients, each sending ``--calls`` mixed calls
   (search_text, search_image, embed_view, generate, caption) to one mini app; counts failures
   and prints p50 / p95 latency per endpoint.
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from demo.process import AppProcess  # noqa: E402

BARE = '''
import os, sys
os.environ.setdefault("GRADIO_ANALYTICS_ENABLED", "False")
import gradio as gr
with gr.Blocks() as demo:
    t = gr.Textbox(); o = gr.Textbox(); b = gr.Button()
    b.click(lambda s: s.upper(), t, o, api_name="echo")
port = int(sys.argv[sys.argv.index("--port") + 1])
demo.queue().launch(server_name="127.0.0.1", server_port=port)
'''


def first_answer(args, script, call) -> dict:
    """Seconds from launch to serving and to the first answer of ``call(client)``."""
    from gradio_client import Client

    with AppProcess(args, script=script) as app:
        client = Client(app.url, verbose=False)
        call(client)
        done = time.perf_counter()
        return {"to_serving": app.ready - app.started, "to_first_answer": done - app.started}


def startup(rounds: int) -> dict:
    bare = Path(tempfile.mkdtemp()) / "bare_app.py"
    bare.write_text(BARE)
    runs = {"bare": [], "app": [], "app_auto": []}

    def search(client):
        client.predict("a child holding a kite on the beach", 10, False, api_name="/search_text")

    for _ in range(rounds):
        runs["bare"].append(first_answer([], bare, lambda c: c.predict("hi", api_name="/echo")))
        runs["app"].append(first_answer(["--preset", "mini"], ROOT / "app.py", search))
        # the README's command: `python app.py` (auto: probes the Hub, falls back to mini offline)
        runs["app_auto"].append(first_answer([], ROOT / "app.py", search))
    med = {k: statistics.median(r["to_first_answer"] for r in v) for k, v in runs.items()}
    return {"bare_first_answer_s": round(med["bare"], 2),
            "app_first_answer_s": round(med["app"], 2),
            "ratio": round(med["app"] / med["bare"], 2), "bar": 3.0,
            "app_auto_first_answer_s": round(med["app_auto"], 2),
            "ratio_auto": round(med["app_auto"] / med["bare"], 2),
            "runs": {k: [{kk: round(vv, 2) for kk, vv in r.items()} for r in v]
                     for k, v in runs.items()}}


def mixed_calls(image: str):
    from gradio_client import handle_file

    return {
        "/search_text": ("a woman holding a knife in the kitchen", 10, False),
        "/search_image": (handle_file(image), 5),
        "/embed_view": ("a dog with a ball in the park", None),
        "/generate": ("a cat with a balloon on the beach", "", 0, 10, 5.0, False),
        "/caption": (handle_file(image), "", 16),
    }


def load(clients: int, calls: int, seed: int = 0) -> dict:
    from gradio_client import Client

    from safeclip.mini.synthetic import SyntheticViSU

    image = str(Path(tempfile.mkdtemp()) / "query.png")
    SyntheticViSU("test")[2]["G"].save(image)
    endpoints = list(mixed_calls(image))
    rng = random.Random(seed)
    plans = [[endpoints[(c + i) % len(endpoints)] for i in range(calls)] for c in range(clients)]
    for p in plans:
        rng.shuffle(p)
    latencies = {e: [] for e in endpoints}
    failures: list[str] = []

    with AppProcess(["--preset", "mini"]) as app:
        warm = Client(app.url, verbose=False)
        for e, a in mixed_calls(image).items():  # load every model once, outside the timing
            warm.predict(*a, api_name=e)

        def run(plan):
            client = Client(app.url, verbose=False)
            args = mixed_calls(image)
            for e in plan:
                t0 = time.perf_counter()
                try:
                    client.predict(*args[e], api_name=e)
                    latencies[e].append(time.perf_counter() - t0)
                except Exception as err:  # noqa: BLE001 - counted, reported
                    failures.append(f"{e}: {type(err).__name__}: {err}")

        t0 = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(run, plans))
        wall = time.perf_counter() - t0
        alive = app.alive()

    def pct(v, q):
        return round(statistics.quantiles(v, n=100)[q - 1], 3) if len(v) > 1 else None

    return {"clients": clients, "calls": clients * calls, "failed": len(failures),
            "failures": failures[:10], "wall_s": round(wall, 1), "app_alive_after": alive,
            "latency_s": {e: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95)}
                          for e, v in latencies.items()}}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--calls", type=int, default=5, help="calls per client")
    p.add_argument("--skip-startup", action="store_true")
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = {}
    if not args.skip_startup:
        result["startup"] = startup(args.rounds)
    if not args.skip_load:
        result["load"] = load(args.clients, args.calls)
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if "startup" in result:
            s = result["startup"]
            print(f"first /search_text answer: app --preset mini {s['app_first_answer_s']} s, "
                  f"bare Gradio {s['bare_first_answer_s']} s -> ratio {s['ratio']} (bar "
                  f"{s['bar']}); plain `python app.py` (auto) {s['app_auto_first_answer_s']} s -> "
                  f"ratio {s['ratio_auto']}")
        if "load" in result:
            r = result["load"]
            print(f"load: {r['clients']} clients, {r['calls']} calls, {r['failed']} failed, "
                  f"{r['wall_s']} s")
            for e, v in r["latency_s"].items():
                print(f"  {e:15s} n={v['n']:3d} p50={v['p50']} s p95={v['p95']} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
