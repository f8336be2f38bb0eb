"""App benchmarks, side by side in one run (issues 8 and 15).

    python bench/app.py [--rounds 2] [--clients 40] [--calls 5] [--runs 1] [--json]

1. Start-up: time from launching ``python app.py --preset mini`` to the first answer of
   ``/search_text``, against the time a bare Gradio app (one button, no models) takes from launch
   to its first answer on the same machine; rounds alternate the two, medians are compared.
2. Load: ``--clients`` concurrent clients, each sending ``--calls`` mixed calls (search_text,
   search_image, embed_view, generate, caption) to one mini app; counts failures and prints
   p50 / p95 latency per endpoint, of the answer and of the answer with its images. A client
   that cannot connect (its page config request fails) counts every call of its plan as
   failed. ``--runs N`` repeats the load on N fresh apps.
3. Idle round trip: ``/search_text`` (three columns of 10) from one client on an idle app, with
   the result images downloaded and without, beside the search alone.

Clients talk to the app as the browser page does (``Browser``): one keep-alive connection pool
of six per client, the queue's join + event stream, each distinct result file fetched once,
six at a time, no HTTP cache across calls (every answer's images are fetched again: the
figures are those of a cold browser cache). gradio_client's own figures are printed beside
them for the round trip: it opens a new connection per downloaded file and polls its job from
a thread, which costs about 150 ms per call and 60 ms per file on this machine however fast
the server is (a bare one-textbox Gradio app answers it in about 160 ms).
"""
from __future__ import annotations

import argparse
import json
import random
import statistics
import sys
import tempfile
import time
import uuid
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


class Browser:
    """A client that speaks to a Gradio app as its page does (see the module docstring).

        >>> b = Browser(url)                       # GET /config: the page load
        >>> out = b.predict("/search_text", "a dog", 10, False, 1.0, 0.0)
        >>> b.fetch_files(out)                     # the result images, as the page shows them
    """

    def __init__(self, url: str, timeout: float = 600.0):
        import httpx

        self.url = url.rstrip("/") + "/"
        self.http = httpx.Client(timeout=timeout, limits=httpx.Limits(max_connections=6))
        config = self.http.get(self.url + "config")
        config.raise_for_status()
        self.fn = {"/" + d["api_name"]: d["id"] for d in config.json()["dependencies"]
                   if d.get("api_name")}
        # one session per page, as the page has (a new one per call would make Gradio build
        # a session state, ~10 ms of its event loop, on every call)
        self.session = uuid.uuid4().hex[:12]

    def upload(self, path: str) -> dict:
        with open(path, "rb") as f:
            r = self.http.post(self.url + "gradio_api/upload", files={"files": f})
        r.raise_for_status()
        return {"path": r.json()[0], "orig_name": Path(path).name,
                "meta": {"_type": "gradio.FileData"}}

    def predict(self, api_name: str, *data):
        session = self.session
        r = self.http.post(self.url + "gradio_api/queue/join",
                           json={"data": list(data), "fn_index": self.fn[api_name],
                                 "session_hash": session, "event_data": None,
                                 "trigger_id": None})
        r.raise_for_status()
        with self.http.stream("GET", self.url + "gradio_api/queue/data",
                              params={"session_hash": session}) as events:
            for line in events.iter_lines():
                if not line.startswith("data:"):
                    continue
                msg = json.loads(line[5:])
                if msg.get("msg") == "process_completed":
                    if not msg.get("success"):
                        raise RuntimeError(f"{api_name}: {msg.get('output')}")
                    return msg["output"]["data"]
        raise RuntimeError(f"{api_name}: the event stream ended without an answer")

    def fetch_files(self, output) -> int:
        """Fetch each distinct file the answer names, six at a time; returns how many."""
        urls: list[str] = []

        def walk(x):
            if isinstance(x, dict):
                if x.get("url") and x.get("meta", {}).get("_type") == "gradio.FileData":
                    urls.append(x["url"] if x["url"].startswith("http")
                                else self.url.rstrip("/") + x["url"])
                for v in x.values():
                    walk(v)
            elif isinstance(x, list):
                for v in x:
                    walk(v)

        walk(output)
        unique = list(dict.fromkeys(urls))

        def get(u):
            r = self.http.get(u)
            r.raise_for_status()
            return r.content

        with ThreadPoolExecutor(6) as pool:
            list(pool.map(get, unique))
        return len(unique)

    def close(self):
        self.http.close()


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
        client.predict("a child holding a kite on the beach", 10, False, 1.0, 0.0,
                       api_name="/search_text")

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


def mixed_calls(browser: Browser, image: str):
    upload = browser.upload(image)
    return {
        "/search_text": ("a woman holding a knife in the kitchen", 10, False, 1.0, 0.0),
        "/search_image": (upload, 5, 1.0, 0.0),
        "/embed_view": ("a dog with a ball in the park", None, 1.0),
        "/generate": ("a cat with a balloon on the beach", "", 0, 10, 5.0, False),
        "/caption": (upload, "", 16),
    }


def load(clients: int, calls: int, seed: int = 0) -> dict:
    from safeclip.mini.synthetic import SyntheticViSU

    image = str(Path(tempfile.mkdtemp()) / "query.png")
    SyntheticViSU("test")[2]["G"].save(image)
    endpoints = ["/search_text", "/search_image", "/embed_view", "/generate", "/caption"]
    rng = random.Random(seed)
    plans = [[endpoints[(c + i) % len(endpoints)] for i in range(calls)] for c in range(clients)]
    for p in plans:
        rng.shuffle(p)
    answer = {e: [] for e in endpoints}
    shown = {e: [] for e in endpoints}  # the answer with its images fetched
    failures: list[str] = []
    timeline: list[tuple] = []  # (endpoint, start offset s, answer s)
    loaded: list[float] = []  # when each client had loaded the page (config) and its upload
    begin = [0.0]

    with AppProcess(["--preset", "mini"]) as app:
        warm = Browser(app.url)
        for e, a in mixed_calls(warm, image).items():  # load every model once, untimed
            warm.fetch_files(warm.predict(e, *a))
        warm.close()

        def run(plan):
            try:
                browser = Browser(app.url)
                args = mixed_calls(browser, image)
                loaded.append(time.perf_counter() - begin[0])
            except Exception as err:  # noqa: BLE001 - a client that cannot connect fails all
                failures.extend(f"{e}: connect: {type(err).__name__}: {err}" for e in plan)
                return
            for e in plan:
                t0 = time.perf_counter()
                try:
                    out = browser.predict(e, *args[e])
                    answer[e].append(time.perf_counter() - t0)
                    timeline.append((e, round(t0 - begin[0], 2), round(answer[e][-1], 2)))
                    browser.fetch_files(out)
                    shown[e].append(time.perf_counter() - t0)
                except Exception as err:  # noqa: BLE001 - counted, reported
                    failures.append(f"{e}: {type(err).__name__}: {err}")
            browser.close()

        t0 = begin[0] = time.perf_counter()
        with ThreadPoolExecutor(clients) as pool:
            list(pool.map(run, plans))
        wall = time.perf_counter() - t0
        alive = app.alive()

    def pct(v, q):
        return round(statistics.quantiles(v, n=100)[q - 1], 3) if len(v) > 1 else None

    # the same figures for the calls started once every client had loaded the page: 40 page
    # loads at one instant cost Gradio ~30 ms of its event loop each (the config is rebuilt
    # per request), and the calls queued behind them make the tail of the overall figures
    after = max(loaded) if loaded else 0.0
    steady = {e: [t[2] for t in timeline if t[0] == e and t[1] > after] for e in endpoints}
    return {"clients": clients, "calls": clients * calls, "failed": len(failures),
            "pages_loaded_by_s": round(after, 2),
            "after_page_loads": {e: {"n": len(v), "p50": pct(v, 50), "p95": pct(v, 95)}
                                 for e, v in steady.items()},
            "failures": failures[:10], "wall_s": round(wall, 1), "app_alive_after": alive,
            "slowest_searches": sorted((t for t in timeline if t[0].startswith("/search")),
                                       key=lambda t: -t[2])[:8],
            "timeline": sorted(timeline, key=lambda t: t[1]),
            "latency_s": {e: {"n": len(answer[e]), "p50": pct(answer[e], 50),
                              "p95": pct(answer[e], 95), "p50_with_images": pct(shown[e], 50),
                              "p95_with_images": pct(shown[e], 95)} for e in endpoints}}


WARM_UP_S = 8  # the mini gallery's 1,000 thumbnails take about 2-3 s in the background


def round_trip(rounds: int = 20) -> dict:
    """Median milliseconds of an idle /search_text round trip (a new query each round, from the
    gallery's captions), with and without the image downloads, as the page makes it and as
    gradio_client makes it, and of the search itself (Studio.search_text in this process)."""
    from gradio_client import Client

    from safeclip.services import Studio

    studio = Studio("mini")
    step = max(len(studio.gallery().captions) // (rounds + 1), 1)
    queries = [row["text"] for row in studio.gallery().captions[::step]][: rounds + 1]
    out, files = {}, []
    with AppProcess(["--preset", "mini"]) as app:
        browser = Browser(app.url)
        browser.fetch_files(browser.predict("/search_text", queries[0], 10, False, 1.0, 0.0))
        time.sleep(WARM_UP_S)  # idle: the first search's thumbnail warm-up (demo.files) is done
        answer, shown = [], []
        for q in queries[1:]:
            t0 = time.perf_counter()
            res = browser.predict("/search_text", q, 10, False, 1.0, 0.0)
            answer.append(time.perf_counter() - t0)
            files.append(browser.fetch_files(res))
            shown.append(time.perf_counter() - t0)
        out["with_downloads"] = round(statistics.median(shown) * 1000, 1)
        out["without_downloads"] = round(statistics.median(answer) * 1000, 1)
        for name, download in (("gradio_client_with_downloads", True),
                               ("gradio_client_without_downloads", False)):
            client = Client(app.url, verbose=False, download_files=download)
            client.predict(queries[0], 10, False, 1.0, 0.0, api_name="/search_text")
            times = []
            for q in queries[1:]:
                t0 = time.perf_counter()
                client.predict(q, 10, False, 1.0, 0.0, api_name="/search_text")
                times.append(time.perf_counter() - t0)
            out[name] = round(statistics.median(times) * 1000, 1)
    times = []
    for q in queries[1:]:
        t0 = time.perf_counter()
        studio.search_text(q, 10)
        times.append(time.perf_counter() - t0)
    out["search_only"] = round(statistics.median(times) * 1000, 1)
    return {"median_ms": out, "files_per_answer": statistics.median(files),
            "bar_with_downloads_ms": 150}


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--rounds", type=int, default=2)
    p.add_argument("--clients", type=int, default=40)
    p.add_argument("--calls", type=int, default=5, help="calls per client")
    p.add_argument("--skip-startup", action="store_true")
    p.add_argument("--skip-load", action="store_true")
    p.add_argument("--runs", type=int, default=1, help="load runs, each on a fresh app")
    p.add_argument("--skip-round-trip", action="store_true")
    p.add_argument("--json", action="store_true")
    args = p.parse_args(argv)
    result = {}
    if not args.skip_startup:
        result["startup"] = startup(args.rounds)
    if not args.skip_round_trip:
        result["round_trip"] = round_trip()
    if not args.skip_load:
        result["load"] = [load(args.clients, args.calls, seed=r) for r in range(args.runs)]
    if args.json:
        print(json.dumps(result, indent=2))
    else:
        if "startup" in result:
            s = result["startup"]
            print(f"first /search_text answer: app --preset mini {s['app_first_answer_s']} s, "
                  f"bare Gradio {s['bare_first_answer_s']} s -> ratio {s['ratio']} (bar "
                  f"{s['bar']}); plain `python app.py` (auto) {s['app_auto_first_answer_s']} s -> "
                  f"ratio {s['ratio_auto']}")
        if "round_trip" in result:
            m = result["round_trip"]["median_ms"]
            print(f"idle /search_text round trip (3 columns of 10, "
                  f"{result['round_trip']['files_per_answer']} distinct files): "
                  f"{m['with_downloads']} ms with the image downloads (bar 150), "
                  f"{m['without_downloads']} ms without; gradio_client "
                  f"{m['gradio_client_with_downloads']} / {m['gradio_client_without_downloads']} "
                  f"ms; search alone {m['search_only']} ms")
        for i, r in enumerate(result.get("load", []), 1):
            print(f"load run {i}: {r['clients']} clients, {r['calls']} calls, {r['failed']} "
                  f"failed, {r['wall_s']} s, app alive after: {r['app_alive_after']}")
            for e, v in r["latency_s"].items():
                print(f"  {e:15s} n={v['n']:3d} answer p50={v['p50']} s p95={v['p95']} s; "
                      f"with images p50={v['p50_with_images']} s p95={v['p95_with_images']} s")
            print(f"  calls started after every client had loaded the page "
                  f"({r['pages_loaded_by_s']} s):")
            for e, v in r["after_page_loads"].items():
                print(f"  {e:15s} n={v['n']:3d} answer p50={v['p50']} s p95={v['p95']} s")
            for f in r["failures"]:
                print(f"  failed: {f[:200]}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
