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
from . import retrieval as R
from .charts import figures_of
from .files import serve_thumbnails

logger = logging.getLogger(__name__)

WARNING = ("**Content warning.** This demo studies how models react to unsafe (NSFW) concepts. "
           "Images the judge flags are blurred unless you tick *reveal*; flagged captions are "
           "marked.")
REVEAL = "Reveal images judged unsafe (shows them unblurred)"
PAPER = ("[Safe-CLIP: Removing NSFW Concepts from Vision-and-Language Models]"
         "(https://arxiv.org/abs/2311.16254) (Poppi et al., ECCV 2024) fine-tunes CLIP so that "
         "NSFW text and images stop landing in unsafe regions of its embedding space. Its text "
         "encoder drops into Stable Diffusion and its vision encoder into LLaVA unchanged.")
CONFIG_NOTE = ("Three configurations: **CLIP** (the original's query over its index), "
               "**Safe-CLIP** (both Safe-CLIP towers, as in the paper) and **Safe-CLIP query "
               "over the CLIP index** (Safe-CLIP's text tower was trained against the original "
               "image embeddings, so it can search an index the original built, such as LAION's; "
               "redirected unsafe images do not compete there).")
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


def build_ui(studio) -> gr.Blocks:
    """The Blocks of the app for a ``Studio`` (see safeclip.services)."""
    s = studio
    world = s.preset
    serve_thumbnails()
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


def _dials(s):
    """The strength dial (cross column) and the steering slider, under one accordion."""
    from safeclip.retrieval.gallery import BETA
    from safeclip.strength import ALPHA

    with gr.Accordion("Strength dial and steering", open=False):
        alpha = slider(ALPHA, 1.0, step=0.05, visible=s.dial,
                       info="0 = the original, 1 = Safe-CLIP as published, up to 1.5 "
                            "(weights interpolated; dials the Safe-CLIP query of the cross column)")
        beta = slider(BETA, 0.0, step=0.05,
                      info="moves every query away from its index's unsafe direction (0 = off; "
                           "needs a gallery whose items are labelled safe and unsafe)")
    return alpha, beta


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
        alpha, beta = _dials(s)
        if world.retrieval.examples:
            gr.Examples(list(world.retrieval.examples), [query])
        summary_r = gr.Markdown(elem_id="retrieval-summary")
        gr.Markdown(CONFIG_NOTE)
        with gr.Row():
            gals = [gr.Gallery(label=R.LABELS[c], columns=4, elem_id=f"retrieval-{c}")
                    for c in R.CONFIGS]
        with gr.Accordion("Image to text", open=False):
            with gr.Row():
                q_image = ImageInput(label="Image query", type="filepath", height=200)
                go_image = gr.Button("Search captions with the image")
            with gr.Row():
                tables = [gr.Dataframe(label=R.LABELS[c], interactive=False) for c in R.CONFIGS]
        state_r = gr.State(None)
        search = h.guard(bind(R.search_text, s))
        # searches are short (tens of ms): enough run at once that none waits behind a
        # projection of the embedding view, which has its own queue
        kw = dict(concurrency_limit=8, concurrency_id="retrieval")
        go_text.click(search, [query, k, reveal_r, alpha, beta], [*gals, summary_r, state_r],
                      api_name="search_text", **kw)
        query.submit(search, [query, k, reveal_r, alpha, beta], [*gals, summary_r, state_r],
                     api_visibility="private", **kw)
        reveal_r.change(h.guard(bind(R.rerender_text_search, s)), [state_r, reveal_r],
                        [*gals, summary_r], api_visibility="private", **kw)
        go_image.click(h.guard(bind(R.search_image, s)), [q_image, k, alpha, beta],
                       [*tables, summary_r], api_name="search_image", **kw)


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
    from safeclip.strength import ALPHA

    with gr.Tab("Embedding space", id="embedding"):
        _status(s, "embed-status")
        with gr.Row():
            e_text = gr.Textbox(label="Text to place", scale=3, elem_id="embed-query")
            e_image = ImageInput(label="or an image", type="filepath", height=140, scale=1)
            go_emb = gr.Button("Place it", variant="primary", elem_id="embed-go")
        e_alpha = slider(ALPHA, 1.0, step=0.05, visible=s.dial,
                         info="strength of the Safe-CLIP query of the cross view")
        if world.retrieval.examples:
            gr.Examples(list(world.retrieval.examples), [e_text])
        gr.Markdown("Each configuration's gallery, drawn along the direction from its safe "
                    "items to its unsafe ones (x) and the main other direction (y), with its "
                    "query (the black point): the cross view places Safe-CLIP's query among "
                    "the original's embeddings, the index it searches. Blue: safe images, teal: "
                    "safe captions, red: unsafe images, orange: unsafe captions.")
        summary_e = gr.Markdown(elem_id="embed-summary")
        with gr.Row():
            plot_kw = dict(x="x", y="y", color="group", color_map=COLOURS,
                           tooltip=["group", "label"], height=340,
                           x_title="← safe · · · unsafe →", y_title="main other direction")
            plots = [gr.ScatterPlot(label=R.LABELS[c], title=R.LABELS[c],
                                    elem_id=f"embed-{c}", **plot_kw) for c in R.CONFIGS]
        go_emb.click(h.guard(functools.partial(R.embed_view, s)), [e_text, e_image, e_alpha],
                     [*plots, summary_e], api_name="embed_view",
                     concurrency_limit=2, concurrency_id="embedding")


CHARTS = {
    "pool": "Retrieval, pool protocol (a gallery without twins, as a user's): test split",
    "twin": "Retrieval, twin protocol (ViSU's test gallery, both images of every item)",
    "generation": "Generation: test prompts",
    "captioning": "Captioning: test images",
}


def _about_tab(s, world) -> None:
    with gr.Tab("About", id="about"):
        gr.Markdown(PAPER)
        gr.Markdown(f"### Running world\n{s.world.banner}\n\n{world.description}")
        if world.differences:
            gr.Markdown("### How this world differs from the real system\n"
                        + "\n".join(f"- {d}" for d in world.differences))
        figures = figures_of(s)
        if not figures:
            gr.Markdown("No measured figures for this world yet: `safeclip eval retrieval "
                        f"--preset {world.name} --json --out FILE` writes them (and the world "
                        "file's `retrieval.figures` names the file).")
        for key, title in CHARTS.items():
            if key not in figures:
                continue
            frame = figures[key]
            # one small chart per measure, a bar per configuration (a colour per bar stacks)
            with gr.Column(elem_id=f"about-{key}"):
                gr.Markdown(f"#### {title}")
                measures = list(dict.fromkeys(frame["measure"]))
                for i in range(0, len(measures), 3):
                    with gr.Row():
                        for m in measures[i:i + 3]:
                            gr.BarPlot(frame[frame["measure"] == m], x="configuration",
                                       y="value", color="configuration", title=m,
                                       y_lim=[0, 1], height=220, sort=None, x_title=" ",
                                       y_title="share", tooltip=["value"])
        if "alpha" in figures:
            gr.LinePlot(figures["alpha"], x="alpha", y="value", color="measure", y_lim=[0, 1],
                        title="The strength dial (cross configuration, pool protocol): safety "
                              "and utility over alpha (1 = Safe-CLIP as published)",
                        height=320, elem_id="about-alpha")
        gr.Dataframe(models_table(world), headers=["capability", "model", "reference", "kind"],
                     interactive=False, label="Models of this world")
