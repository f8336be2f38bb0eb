"""The Gradio interface: a tab per capability of the running world, each with a CLIP column and
a Safe-CLIP column fed by the same input. UI only: every model call goes through
``safeclip.services.Studio``, and every limit a widget shows is the one its owner checks.

API endpoints (for ``gradio_client``), one per capability the world has: ``/search_text``,
``/search_image``, ``/embed_view`` (retrieval), ``/generate``, ``/caption``.
"""
from __future__ import annotations

import functools
import logging
from pathlib import Path

import gradio as gr

from . import handlers as h

logger = logging.getLogger(__name__)

WARNING = ("**Content warning.** This demo studies how models react to unsafe (NSFW) concepts. "
           "Images the judge flags are blurred unless you tick *reveal*; flagged captions are "
           "marked.")
REVEAL = "Reveal images judged unsafe (shows them unblurred)"
PAPER = ("[Safe-CLIP: Removing NSFW Concepts from Vision-and-Language Models]"
         "(https://arxiv.org/abs/2311.16254) (Poppi et al., ECCV 2024) fine-tunes CLIP so that "
         "NSFW text and images stop landing in unsafe regions of its embedding space. Its text "
         "encoder drops into Stable Diffusion and its vision encoder into LLaVA unchanged.")
KEY_METRICS = ["nsfw_at10", "nsfw_at10_i2t", "u2v_r10", "g2s_r10", "s2v_r10", "v2s_r10"]
GPU_QUEUE = "gpu"  # generation and captioning share one worker: one model on one GPU at a time
COLOURS = {"safe image": "#2b8cbe", "safe text": "#7bccc4", "unsafe image": "#e34a33",
           "unsafe text": "#fdbb84", "query": "#000000"}


class ImageInput(gr.Image):
    """An image upload handed to ``safeclip.images`` as a file, undecoded: that is where corrupt
    files, decompression bombs and odd modes get a readable answer."""

    def get_block_name(self) -> str:
        return "image"

    def preprocess(self, payload):
        if payload is not None and getattr(payload, "path", None):
            return str(payload.path)
        return super().preprocess(payload)


class Raw:
    """Mixin for number widgets: the value goes to the owner of its limit as it came (an API
    client can send anything); the owner checks it once, in one wording. The browser renders
    the gradio base component."""

    def get_block_name(self) -> str:
        base = next(c for c in type(self).__mro__ if c.__module__.startswith("gradio."))
        return base.__name__.lower()

    def preprocess(self, payload):
        return payload


class Slider(Raw, gr.Slider):
    pass


class Number(Raw, gr.Number):
    pass


def slider(limit, value, **kw):
    """A slider over a ``safeclip.limits.Number``."""
    step = kw.pop("step", 1 if limit.integer else 0.5)
    return Slider(limit.lo, limit.hi, value=value, step=step, label=limit.label, **kw)


def _short(ref) -> str:
    """A model reference for display: folders of this checkout relative to it."""
    if not ref:
        return "-"
    root = str(Path(__file__).resolve().parents[1]) + "/"
    return str(ref).removeprefix(root)


def models_table(world) -> list[list[str]]:
    from safeclip.presets import ROLES

    return [[ROLES[r][0], ROLES[r][2], _short(m.ref), m.kind or "-"]
            for r, m in world.models().items()]


def metrics_table(metrics: dict) -> list[list]:
    """Rows of retrieval metrics: key, original, Safe-CLIP (from the models' metrics.json)."""
    a, b = metrics.get("clip", {}), metrics.get("safe_clip", {})
    keys = [k for k in {**a, **b} if k != "n"
            and (isinstance(a.get(k), (int, float)) or isinstance(b.get(k), (int, float)))]
    keys.sort(key=lambda k: (KEY_METRICS.index(k) if k in KEY_METRICS else len(KEY_METRICS)))
    return [[k, a.get(k), b.get(k)] for k in keys]


def build_ui(studio) -> gr.Blocks:
    """The Blocks of the app for a ``Studio`` (see safeclip.services)."""
    s = studio
    world = s.preset
    with gr.Blocks(title="Safe-CLIP Studio") as demo:
        gr.Markdown("# Safe-CLIP Studio\nOriginal CLIP and Safe-CLIP, side by side.")
        gr.Markdown(s.world.banner, elem_id="world-banner")
        gr.Markdown(WARNING, elem_id="content-warning")
        if s.has("retrieval"):
            _retrieval_tab(s, world)
        if s.has("generation"):
            _generation_tab(s, world)
        if s.has("captioning"):
            _captioning_tab(s)
        if s.has("retrieval"):
            _embedding_tab(s, world)
        _about_tab(s, world)
    return demo


def _status(s, elem_id: str):
    """The gallery's status line, refreshed while the default gallery builds."""
    line = gr.Markdown(s.gallery_status() or "", elem_id=elem_id)
    if s.gallery_status() is not None:
        timer = gr.Timer(2.0)
        timer.tick(functools.partial(h.gallery_status, s), None, [line, timer],
                   api_visibility="private", queue=False)
    return line


def _retrieval_tab(s, world) -> None:
    bind = functools.partial
    with gr.Tab("Retrieval", id="retrieval"):
        _status(s, "retrieval-status")
        with gr.Row():
            query = gr.Textbox(label="Text query", placeholder="a child holding a kite",
                               scale=4, elem_id="retrieval-query")
            k = slider(s.limits["k"], 10, scale=1)
        with gr.Row():
            go_text = gr.Button("Search images with text", variant="primary",
                                elem_id="retrieval-go")
            reveal_r = gr.Checkbox(False, label=REVEAL, elem_id="retrieval-reveal")
        if world.retrieval.examples:
            gr.Examples(list(world.retrieval.examples), [query])
        summary_r = gr.Markdown(elem_id="retrieval-summary")
        with gr.Row():
            with gr.Column():
                gal_c = gr.Gallery(label="CLIP", columns=5, elem_id="retrieval-clip")
            with gr.Column():
                gal_s = gr.Gallery(label="Safe-CLIP", columns=5, elem_id="retrieval-safeclip")
        with gr.Accordion("Image to text", open=False):
            with gr.Row():
                q_image = ImageInput(label="Image query", type="filepath", height=200)
                go_image = gr.Button("Search captions with the image")
            with gr.Row():
                tab_c = gr.Dataframe(label="CLIP", interactive=False)
                tab_s = gr.Dataframe(label="Safe-CLIP", interactive=False)
        state_r = gr.State(None)
        go_text.click(h.guard(bind(h.search_text, s)), [query, k, reveal_r],
                      [gal_c, gal_s, summary_r, state_r], api_name="search_text",
                      concurrency_limit=4, concurrency_id="retrieval")
        query.submit(h.guard(bind(h.search_text, s)), [query, k, reveal_r],
                     [gal_c, gal_s, summary_r, state_r], api_visibility="private",
                     concurrency_limit=4, concurrency_id="retrieval")
        reveal_r.change(h.guard(bind(h.rerender_text_search, s)), [state_r, reveal_r],
                        [gal_c, gal_s, summary_r], api_visibility="private",
                        concurrency_limit=4, concurrency_id="retrieval")
        go_image.click(h.guard(bind(h.search_image, s)), [q_image, k],
                       [tab_c, tab_s, summary_r], api_name="search_image",
                       concurrency_limit=4, concurrency_id="retrieval")


def _generation_tab(s, world) -> None:
    g = s.generation_settings()
    d, lim = g["defaults"], g["limits"]
    uses_steps = g["uses_steps"]
    with gr.Tab("Generation", id="generation"):
        with gr.Row():
            prompt = gr.Textbox(label="Prompt", scale=3, elem_id="generation-prompt")
            negative = gr.Textbox(label="Negative prompt", scale=2)
        with gr.Row():
            seed = Number(0, label=lim["seed"].label, precision=0, minimum=lim["seed"].lo,
                          maximum=lim["seed"].hi, elem_id="generation-seed")
            gen_name = world.generation.label
            # a one-pass generator has no steps to choose
            steps = slider(lim["steps"], d["steps"], visible=uses_steps)
            guidance = slider(lim["guidance"], d["guidance"], info=None if uses_steps else
                              "1 = plain sample; higher pushes away from the negative prompt")
        with gr.Row():
            go_gen = gr.Button("Generate both", variant="primary", elem_id="generation-go")
            reveal_g = gr.Checkbox(False, label=REVEAL, elem_id="generation-reveal")
        if world.generation.examples:
            gr.Examples(list(world.generation.examples), [prompt])
        notes_g = gr.Markdown()
        with gr.Row():
            with gr.Column():
                img_c = gr.Image(label=f"{gen_name} + CLIP text encoder", type="filepath",
                                 elem_id="generation-clip")
                ver_c = gr.Markdown(elem_id="generation-clip-verdict")
            with gr.Column():
                img_s = gr.Image(label=f"{gen_name} + Safe-CLIP text encoder",
                                 type="filepath", elem_id="generation-safeclip")
                ver_s = gr.Markdown(elem_id="generation-safeclip-verdict")
        state_g = gr.State(None)

        def generate(prompt, negative, seed, steps, guidance, reveal,
                     progress=gr.Progress(track_tqdm=True)):
            return h.generate(s, prompt, negative, seed, steps, guidance, reveal)

        go_gen.click(h.guard(h.gpu(generate, world.generation.gpu_seconds)),
                     [prompt, negative, seed, steps, guidance, reveal_g],
                     [img_c, img_s, ver_c, ver_s, notes_g, state_g], api_name="generate",
                     concurrency_limit=1, concurrency_id=GPU_QUEUE)
        reveal_g.change(h.guard(h.rerender_generation), [state_g, reveal_g],
                        [img_c, img_s, ver_c, ver_s, notes_g], api_visibility="private",
                        concurrency_limit=1, concurrency_id=GPU_QUEUE)


def _captioning_tab(s) -> None:
    c = s.captioning_settings()
    with gr.Tab("Captioning", id="captioning"):
        with gr.Row():
            c_image = ImageInput(label="Image", type="filepath", height=240,
                                 elem_id="caption-image")
            with gr.Column():
                question = gr.Textbox(label="Question", placeholder=c["defaults"].get(
                    "question", "Describe the image."), elem_id="caption-question")
                max_tokens = slider(c["limits"]["max_new_tokens"],
                                    min(24, c["defaults"].get("max_new_tokens", 24)))
                go_cap = gr.Button("Caption with both", variant="primary",
                                   elem_id="caption-go")
        examples = s.example_images()
        if examples:
            gr.Examples(examples, [c_image], label="Example images")
        notes_c = gr.Markdown()
        with gr.Row():
            with gr.Column():
                ans_c = gr.Textbox(label="LLaVA + CLIP vision tower", elem_id="caption-clip")
                flag_c = gr.Markdown()
            with gr.Column():
                ans_s = gr.Textbox(label="LLaVA + Safe-CLIP vision tower",
                                   elem_id="caption-safeclip")
                flag_s = gr.Markdown()

        def caption(image, question, max_tokens, progress=gr.Progress(track_tqdm=True)):
            return h.caption(s, image, question, max_tokens)

        go_cap.click(h.guard(h.gpu(caption, s.preset.captioning.gpu_seconds)),
                     [c_image, question, max_tokens],
                     [ans_c, ans_s, flag_c, flag_s, notes_c], api_name="caption",
                     concurrency_limit=1, concurrency_id=GPU_QUEUE)


def _embedding_tab(s, world) -> None:
    with gr.Tab("Embedding space", id="embedding"):
        _status(s, "embed-status")
        with gr.Row():
            e_text = gr.Textbox(label="Text to place", scale=3, elem_id="embed-query")
            e_image = ImageInput(label="or an image", type="filepath", height=140, scale=1)
            go_emb = gr.Button("Place it", variant="primary", elem_id="embed-go")
        if world.retrieval.examples:
            gr.Examples(list(world.retrieval.examples), [e_text])
        gr.Markdown("Gallery items of each model, drawn along the direction from its safe "
                    "items to its unsafe ones (x) and the main other direction (y). The query "
                    "is the black point. Blue: safe images, teal: safe captions, red: unsafe "
                    "images, orange: unsafe captions.")
        summary_e = gr.Markdown(elem_id="embed-summary")
        with gr.Row():
            plot_kw = dict(x="x", y="y", color="group", color_map=COLOURS,
                           tooltip=["group", "label"], height=380,
                           x_title="← safe · · · unsafe →", y_title="main other direction")
            plot_c = gr.ScatterPlot(label="CLIP", title="CLIP", elem_id="embed-clip", **plot_kw)
            plot_s = gr.ScatterPlot(label="Safe-CLIP", title="Safe-CLIP",
                                    elem_id="embed-safeclip", **plot_kw)
        go_emb.click(h.guard(functools.partial(h.embed_view, s)), [e_text, e_image],
                     [plot_c, plot_s, summary_e], api_name="embed_view",
                     concurrency_limit=4, concurrency_id="retrieval")


def _about_tab(s, world) -> None:
    with gr.Tab("About", id="about"):
        gr.Markdown(PAPER)
        gr.Markdown(f"### Running world\n{s.world.banner}\n\n{world.description}")
        if world.differences:
            gr.Markdown("### How this world differs from the real system\n"
                        + "\n".join(f"- {d}" for d in world.differences))
        metrics = s.metrics()
        rows = metrics_table(metrics)
        if rows:
            gr.Dataframe(rows, headers=["metric (test split)", "CLIP", "Safe-CLIP"],
                         interactive=False, label="Measured retrieval metrics "
                         "(read from the models' metrics.json)")
        others = {r: m for r, m in metrics.items() if r not in ("clip", "safe_clip")}
        if others:
            gr.JSON(others, label="Measured metrics of the generator and captioner")
        gr.Dataframe(models_table(world), headers=["capability", "model", "reference", "kind"],
                     interactive=False, label="Models of this world")
