"""How much Grad-ECLIP costs next to a plain forward pass, the authors' per-prompt loop and the baselines.

Everything is measured in one run, on the same model and the same inputs, and printed side by side as
ratios to the plain forward (``model.encode_image`` under ``no_grad``) of the same B images:

* Grad-ECLIP image maps for B images x K prompts (K = 1, 10, 100, 1000 by default), with the prompts
  given as precomputed text embeddings (encoding the prompts is reported on its own line);
* Grad-ECLIP image maps of the other explained scores at the same K (``--scores``: the probability among
  the K prompts and the contrast of K pairs by default), with their time over the cosine's;
* a literal per-prompt loop as the authors' code runs it (one image at a time, one forward with the
  graph, one backward per prompt with ``retain_graph``), written here and checked against the
  package's maps; for K above ``--loop-max-k`` its time is extrapolated linearly (it is linear in K by
  construction: T(K) = T(1) + (K - 1) x the measured per-prompt cost) and marked so;
* every registered baseline; text explanations of K captions (ratio to ``encode_text`` of the same
  captions; the probability among them beside the cosine); deletion/insertion curves (images per second);
* peak memory of each case, memory over many consecutive calls (small model), and, with ``--sweep``,
  throughput against the image batch size.

With ``--classifier SPEC`` (a ViT image classifier with random weights, as ``load_model`` names it:
"timm:vit_base_patch16_224", "torchvision:vit_b_16") only the classifier section runs, with ratios to the
classifier's own forward (``model(pixels)`` under ``no_grad``) of the same B images: Grad-ECLIP maps of the
class logit for K classes (``--prompts``, capped at its classes), of the class probability (the softmax over
all classes) at the largest K, and ``explain_image`` with class indices. The aim: all 1,000 classes of an
ImageNet classifier, logit and probability, for at most 1.5x one forward.

Timing: warm-up, then the cases are run round-robin ``--repeats`` times and the median is kept (so a
burst of load elsewhere hits all cases alike). On CUDA the device is synchronised around every call. On
the CPU both wall time and process CPU time are reported; CPU time counts only this process's work
and is the steadier number on a shared machine. "peak MiB" is the memory a call adds at its peak,
measured in its warm-up run: on CUDA ``max_memory_allocated`` above what was allocated before the
call; on the CPU the peak resident set above the resident set before the call, after the C heap's
free pages were returned to the OS (so that memory cached by earlier calls does not hide the peak).

    python benchmarks/speed.py                                    # CPU defaults (ViT-B-16, random weights, B=2)
    python benchmarks/speed.py --device cuda --precision fp16 --batch 32 --sweep 1,2,4,8,16,32,64,128,256
    OMP_NUM_THREADS=1 python benchmarks/speed.py --threads 1 --classifier timm:vit_base_patch16_224
"""

from __future__ import annotations

import argparse
import gc
import json
import math
import os
import platform
import sys
import tracemalloc
import warnings
from dataclasses import dataclass, field
from typing import Any, Callable

import torch
import torch.nn.functional as F

from gradeclip_utils.timing import Case, Meter, run_cases

os.environ.setdefault("HF_HUB_OFFLINE", "1")

MiB = 2 ** 20


# --------------------------------------------------------------------------------------------- models
def tiny_model(device: torch.device, precision: str, like: str = "ViT"):
    """A small CLIP with random weights of the family ``like`` names (as ``--model`` does; for the
    many-calls memory check): open_clip ViT by default, Hugging Face, OpenAI clip, or a ResNet."""
    import open_clip
    from open_clip.model import CLIP, CLIPTextCfg, CLIPVisionCfg

    from gradeclip_utils import wrap_model

    torch.manual_seed(0)
    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    resnet = "RN" in like
    if like.startswith("hf-random:"):
        from transformers import CLIPConfig, CLIPModel

        config = CLIPConfig(projection_dim=32, vision_config=dict(hidden_size=64, intermediate_size=256, num_hidden_layers=3,
                                                                  num_attention_heads=4, image_size=48, patch_size=8),
                            text_config=dict(hidden_size=48, intermediate_size=192, num_hidden_layers=3,
                                             num_attention_heads=4, max_position_embeddings=16))
        return wrap_model(CLIPModel(config).to(device=device, dtype=dtype), name="tiny-benchmark-hf")
    if like.startswith("openai-random:"):
        import warnings as _warnings

        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            from clip.model import CLIP as OpenAICLIP

        model = (OpenAICLIP(32, 64, (1, 1, 1, 1), 8, None, 16, 49408, 64, 1, 3) if resnet
                 else OpenAICLIP(32, 48, 3, 64, 8, 16, 49408, 64, 1, 3))
        return wrap_model(model.to(device=device, dtype=dtype), name="tiny-benchmark-openai")
    if resnet:
        model = CLIP(embed_dim=32, vision_cfg=CLIPVisionCfg(layers=(1, 1, 1, 1), width=8, head_width=64, image_size=64),
                     text_cfg=CLIPTextCfg(context_length=16, vocab_size=49408, width=48, heads=4, layers=3)).eval()
        return wrap_model(model.to(device=device, dtype=dtype), open_clip.image_transform(64, is_train=False),
                          open_clip.tokenizer.SimpleTokenizer(context_length=16), name="tiny-benchmark-resnet")
    vision = CLIPVisionCfg(layers=3, width=64, head_width=16, patch_size=8, image_size=(48, 48))
    text = CLIPTextCfg(context_length=16, vocab_size=49408, width=48, heads=4, layers=3)
    model = CLIP(embed_dim=32, vision_cfg=vision, text_cfg=text).eval()
    model = model.to(device=device, dtype={"fp32": torch.float32, "fp16": torch.float16,
                                           "bf16": torch.bfloat16}[precision])
    preprocess = open_clip.image_transform((48, 48), is_train=False)
    tokenizer = open_clip.tokenizer.SimpleTokenizer(context_length=16)
    return wrap_model(model, preprocess, tokenizer, name="tiny-benchmark-clip")


def random_model(spec: str, device: torch.device, precision: str):
    """A model with random weights in any family: an open_clip name ("ViT-B-16", "RN50"),
    "hf-random:B-16" / "hf-random:B-32" (a transformers CLIPModel of that ViT's configuration), or
    "openai-random:ViT-B/16" / "openai-random:RN50" (a model of OpenAI's clip package, its own init)."""
    from gradeclip_utils import load_model, wrap_model

    dtype = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    torch.manual_seed(0)
    if spec.startswith("hf-random:"):
        from transformers import CLIPConfig, CLIPModel

        patch = {"B-16": 16, "B-32": 32}[spec.split(":", 1)[1]]
        config = CLIPConfig(projection_dim=512, vision_config=dict(patch_size=patch, image_size=224),
                            text_config=dict(max_position_embeddings=77))
        config._attn_implementation = "sdpa"
        model = CLIPModel(config).to(device=device, dtype=dtype)
        return wrap_model(model, name=spec)
    if spec.startswith("openai-random:"):
        import warnings as _warnings

        with _warnings.catch_warnings():
            _warnings.simplefilter("ignore")
            from clip.model import CLIP

        arch = spec.split(":", 1)[1]
        if arch == "RN50":
            model = CLIP(1024, 224, (3, 4, 6, 3), 64, None, 77, 49408, 512, 8, 12)
        else:
            patch = {"ViT-B/16": 16, "ViT-B/32": 32}[arch]
            model = CLIP(512, 224, 12, 768, patch, 77, 49408, 512, 8, 12)
        return wrap_model(model.to(device=device, dtype=dtype), name=spec)
    return load_model(spec, pretrained=None, device=device, precision=precision)


def unit_targets(count: int, dim: int, seed: int, device: torch.device) -> torch.Tensor:
    generator = torch.Generator().manual_seed(seed)
    return F.normalize(torch.randn(count, dim, generator=generator), dim=-1).to(device)


CAPTION_WORDS = ("a photo of a dog playing with a red ball on the green grass near two small children and "
                 "an old wooden fence under a cloudy sky in the late afternoon light").split()


def captions(count: int) -> list[str]:
    """K captions of 4 to 24 words (varied lengths, as real caption sets have)."""
    return [" ".join(CAPTION_WORDS[(i * 7) % 5:(i * 7) % 5 + 4 + (i * 5) % 21]) for i in range(count)]


# ------------------------------------------------------------------------------ the authors' loop
def authors_loop(model, pixels: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Grad-ECLIP as the authors' code computes it: for each image, one forward pass of the whole
    tower with the autograd graph (every block computed explicitly, the last block's attention output
    the tensor differentiated against), then, for each prompt, ``autograd.grad`` of that prompt's
    cosine with ``retain_graph=True``. Returns maps (B, K, h, w). Written over the adapter's captures,
    so it runs for every family; the loosened attention is computed here from the captured q and k."""
    adapter = model.adapter
    blocks = list(range(adapter.num_image_blocks))
    last = blocks[-1]
    maps = []
    for image in pixels:
        trace = adapter.trace_image(image[None], blocks)
        capture = trace.blocks[last]
        grid = trace.grid
        cosine = (F.normalize(trace.embedding.float(), dim=-1) @ targets.T)[0]
        q_cls, k_patch = F.normalize(capture.q[0, :1].float(), dim=-1), F.normalize(capture.k[0, 1:].float(), dim=-1)
        sim = (q_cls * k_patch).sum(-1)
        span = sim.max() - sim.min()
        loosened = (sim - sim.min()) / span if span > 0 else torch.zeros_like(sim)
        per_prompt = []
        for index in range(targets.shape[0]):
            grad = torch.autograd.grad(cosine[index], capture.token_output, retain_graph=True)[0]
            emap = ((grad[0].float() * capture.v[0, 1:].float()).sum(-1) * loosened).relu()
            per_prompt.append(emap.reshape(int(grid[0]), int(grid[1])))
        maps.append(torch.stack(per_prompt))
        del cosine, trace, capture
    return torch.stack(maps)


# ----------------------------------------------------------------------------------------- printing
def fmt_ratio(value: float | None) -> str:
    return "" if value is None else f"{value:8.2f}x"


def fmt_mib(value: float | None) -> str:
    return "" if value is None else f"{value / MiB:9.1f}"


def print_table(cases: list[Case], base: Case, show_cpu: bool, title: str) -> None:
    print(f"\n{title}")
    header = f"{'case':44s} {'K':>5s} {'wall s':>9s} {'wall/plain':>10s}"
    if show_cpu:
        header += f" {'cpu s':>9s} {'cpu/plain':>10s}"
    header += f" {'peak MiB':>9s}  note"
    print(header)
    print("-" * len(header))
    for case in cases:
        line = f"{case.name:44s} {'' if case.k is None else case.k:>5} {case.wall:9.3f} {fmt_ratio(case.wall / base.wall):>10s}"
        if show_cpu:
            line += f" {case.cpu:9.3f} {fmt_ratio(case.cpu / base.cpu):>10s}"
        note = case.note + (" [1 run]" if case.single else "")
        line += f" {fmt_mib(case.peak):>9s}  {note}"
        print(line)


# --------------------------------------------------------------------------------------------- main
def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="ViT-B-16",
                        help="random weights in any family: an open_clip name (ViT-B-16, RN50), hf-random:B-16, "
                             "openai-random:ViT-B/16 or openai-random:RN50; or 'tiny' for a quick check of the script")
    parser.add_argument("--device", default="cpu", help="cpu or cuda[:n]")
    parser.add_argument("--precision", default="fp32", choices=("fp32", "fp16", "bf16"))
    parser.add_argument("--batch", type=int, default=None, help="images B (default: 2 on the CPU, 32 on CUDA)")
    parser.add_argument("--size", type=int, default=None, help="image side in pixels (default: the model's)")
    parser.add_argument("--prompts", default="1,10,100,1000", help="the K values for Grad-ECLIP image maps")
    parser.add_argument("--loop-max-k", type=int, default=None,
                        help="largest K run through the per-prompt loop (default: 100 on the CPU, 1000 on CUDA); "
                             "larger K are extrapolated")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per case after one warm-up")
    parser.add_argument("--slow", type=float, default=60.0,
                        help="a case whose warm-up takes longer than this many seconds is not repeated")
    parser.add_argument("--threads", type=int, default=None, help="torch CPU threads")
    parser.add_argument("--baselines", default="all", help="'all', 'none' or comma-separated method names")
    parser.add_argument("--baseline-prompts", type=int, default=1, help="K for the baselines")
    parser.add_argument("--rise-masks", type=int, default=None, help="RISE masks (default: 32 on the CPU, 2000 on CUDA)")
    parser.add_argument("--captions", type=int, default=None, help="K captions for text explanations "
                                                                    "(default: 20 on the CPU, 1000 on CUDA)")
    parser.add_argument("--text-layers", type=int, default=8, help="text blocks explained (the authors: last 8)")
    parser.add_argument("--encode-prompts", type=int, default=None,
                        help="prompts encoded in the text-encoding line (default: 100 on the CPU, 1000 on CUDA)")
    parser.add_argument("--perturbation-batch", type=int, default=128, help="frames per forward in deletion/insertion")
    parser.add_argument("--memory-calls", type=int, default=1000, help="consecutive calls for the memory check (0: skip)")
    parser.add_argument("--sweep", default="", help="comma-separated batch sizes for the throughput sweep")
    parser.add_argument("--sweep-prompts", type=int, default=100, help="K in the throughput sweep")
    parser.add_argument("--skip", default="", help="comma-separated sections to skip: loop,baselines,text,perturbation")
    parser.add_argument("--scores", default="probability,contrast",
                        help="explained scores timed beside the cosine's Grad-ECLIP rows (comma-separated: logit, "
                             "probability, contrast; '' for none); the contrast explains K pairs (2K target rows)")
    parser.add_argument("--classifier", default=None,
                        help="time a ViT image classifier instead (random weights, a load_model name such as "
                             "timm:vit_base_patch16_224 or torchvision:vit_b_16): its classes for --prompts")
    parser.add_argument("--json", default=None, help="also write the results to this JSON file")
    return parser.parse_args(argv)


@dataclass
class Bench:
    """What every section of the benchmark measures on: the parsed arguments, the device, the model (random
    weights), the B images, the K-prompt targets and the defaults that depend on the device."""

    args: argparse.Namespace
    device: torch.device
    model: Any
    pixels: torch.Tensor
    targets: dict[int, torch.Tensor]
    size: tuple[int, int]
    meter: Meter
    generator: torch.Generator
    batch: int
    loop_max_k: int
    rise_masks: int
    caption_count: int
    encode_count: int
    prompt_counts: list[int]
    skip: set[str]
    results: dict[str, Any] = field(default_factory=dict)

    @property
    def cuda(self) -> bool:
        return self.device.type == "cuda"

    @property
    def adapter(self) -> Any:
        return self.model.adapter

    @property
    def kmax(self) -> int:
        return max(self.prompt_counts)

    @property
    def clocks(self) -> list[tuple[str, Callable[[Case], float]]]:
        """The clocks reported: wall time, and on the CPU the process's CPU time."""
        return [("wall", lambda c: c.wall)] + ([] if self.cuda else [("cpu", lambda c: c.cpu)])

    def explained(self, fn: Callable[[], Any]) -> Callable[[], Any]:
        """``fn`` run under ``explaining`` (the model's lock and state), as every caller runs methods."""
        from gradeclip_utils.session import explaining

        def call():
            with explaining(self.model.model):
                return fn()
        return call

    def plain_forward(self) -> Any:
        with torch.no_grad():
            return self.adapter.native_encode_image(self.pixels)


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


def setup(args: argparse.Namespace) -> Bench:
    """The model, the inputs and the device-dependent defaults; prints the header."""
    device = torch.device(args.device)
    cuda = device.type == "cuda"
    if cuda and not torch.cuda.is_available():
        raise SystemExit("--device cuda asked for, but torch sees no CUDA device")
    if args.threads:
        torch.set_num_threads(args.threads)
    batch = args.batch or (32 if cuda else 2)
    if args.model == "tiny":  # a small random model for a quick run of the script itself
        model = tiny_model(device, args.precision)
    else:
        model = random_model(args.model, device, args.precision)
    adapter = model.adapter
    size = (args.size, args.size) if args.size else adapter.image_size
    generator = torch.Generator().manual_seed(0)
    pixels = torch.randn(batch, 3, *size, generator=generator).to(device)
    prompt_counts = [int(k) for k in args.prompts.split(",") if k]
    targets = {k: unit_targets(k, adapter.embed_dim, seed=k, device=device) for k in prompt_counts}
    bench = Bench(args=args, device=device, model=model, pixels=pixels, targets=targets, size=size,
                  meter=Meter(device), generator=generator, batch=batch,
                  loop_max_k=args.loop_max_k or (1000 if cuda else 100),
                  rise_masks=args.rise_masks or (2000 if cuda else 32),
                  caption_count=args.captions or (1000 if cuda else 20),
                  encode_count=args.encode_prompts or (1000 if cuda else 100), prompt_counts=prompt_counts,
                  skip=set(filter(None, args.skip.split(","))))
    bench.results["settings"] = {**vars(args), "batch": batch, "device": str(device)}
    bench.results["cases"] = []
    print(f"model {args.model} ({model.family}, random weights), {args.precision}, device {device}"
          f"{' (' + torch.cuda.get_device_name(device) + ')' if cuda else ''}, {batch} images of {size[0]}x{size[1]}, "
          f"torch {torch.__version__}, {torch.get_num_threads()} CPU threads, {platform.processor() or platform.machine()}")
    print(f"repeats: warm-up + median of {args.repeats}; ratios are to the plain forward of the same {batch} images")
    return bench


def check_loop(bench: Bench) -> None:
    """The per-prompt loop and the batched maps compute the same maps (else the timings would compare
    different computations)."""
    from gradeclip_utils.methods.grad_eclip import image_maps
    from gradeclip_utils.session import explaining

    check_k = min(10, bench.kmax)
    targets = bench.targets[bench.kmax][:check_k]
    with explaining(bench.model.model):
        fast = image_maps(bench.adapter, bench.pixels[:2], targets).maps
        slow = authors_loop(bench.model, bench.pixels[:2], targets)
    scale = float(slow.abs().max())
    relative = float((fast.float() - slow.float()).abs().max()) / max(scale, 1e-12)
    print(f"check: per-prompt loop maps vs batched maps ({fast.shape[0]} images x {check_k} prompts): "
          f"max |diff| / max |map| = {relative:.1e}")
    if scale == 0 or relative > (1e-4 if bench.args.precision == "fp32" else 5e-2):
        raise SystemExit("the per-prompt loop and the batched maps disagree (or are all zero): timings would "
                         "compare different computations")


#: the name of the cosine's batched Grad-ECLIP rows (the explained scores' rows add ", <score>")
GRAD_ECLIP_MAPS = "Grad-ECLIP maps (batched)"


def score_rows(bench: Bench, pairs: dict[int, torch.Tensor]) -> list[Case]:
    """Grad-ECLIP maps of the other explained scores beside the cosine's, at each K: the probability among
    the K prompts, and the contrast of K pairs (2K target rows) with ``pairs[k]``."""
    from gradeclip_utils.methods.grad_eclip import image_maps

    cases = []
    for name in filter(None, bench.args.scores.split(",")):
        for k in bench.prompt_counts:
            if name == "probability" and k < 2:
                continue  # the probability among one prompt is 1: refused
            targets = pairs[k] if name == "contrast" else bench.targets[k]
            cases.append(Case(f"{GRAD_ECLIP_MAPS}, {name}", "image", bench.explained(
                lambda targets=targets, name=name: image_maps(bench.adapter, bench.pixels, targets, score=name)), k=k,
                note="K pairs (2K target rows)" if name == "contrast" else ""))
    return cases


def baseline_cases(bench: Bench) -> list[Case]:
    """Every registered baseline (``--baselines``) through the runner, with the options a run gives it."""
    from gradeclip_utils.config import ExplainConfig, applied_settings
    from gradeclip_utils.methods import IMAGE_METHODS, get_spec
    from gradeclip_utils.session import run_image_method

    args = bench.args
    names = sorted(IMAGE_METHODS) if args.baselines == "all" else args.baselines.split(",")
    kb, dim = args.baseline_prompts, bench.adapter.embed_dim
    base_targets = unit_targets(kb, dim, seed=7, device=bench.device)
    # what the methods take from a run's settings (the evaluation's names), and a class set for those with one
    settings = {"rise_masks": bench.rise_masks}
    classes = unit_targets(80, dim, seed=8, device=bench.device)
    last = bench.adapter.num_image_blocks - 1
    cases = []
    for name in names:
        if name == "grad_eclip":
            continue
        spec = get_spec(name)
        options = spec.options_from(settings, classes=classes)
        notes = [f"{options[o]} {o}" for o in spec.run_options if o in options]
        if spec.class_set is not None:
            notes.append(f"{spec.class_set}: a class set of {classes.shape[0]} embeddings")
        config = ExplainConfig(method=name, options=options, **applied_settings(name, {"layers": [last]}))
        # the runner: under explaining, the maps moved to the CPU and checked, as every caller runs methods
        cases.append(Case(f"baseline: {name}", "baseline",
                          lambda config=config: run_image_method(bench.model, config, bench.pixels, base_targets),
                          k=kb, note=", ".join(notes)))
    return cases


def image_section(bench: Bench) -> tuple[list[Case], Case, dict[int, Case]]:
    """Times the image cases: the plain forward (the base of the ratios), Grad-ECLIP maps at each K (the
    cosine, then the other explained scores), the public API, the per-prompt loop and the baselines."""
    from gradeclip_utils.explain import explain_image
    from gradeclip_utils.methods.grad_eclip import image_maps

    base = Case("plain forward: model.encode_image", "image", bench.plain_forward)
    image_cases = [base]
    for k in bench.prompt_counts:
        image_cases.append(Case(GRAD_ECLIP_MAPS, "image", bench.explained(
            lambda k=k: image_maps(bench.adapter, bench.pixels, bench.targets[k])), k=k))
    pairs = {k: unit_targets(2 * k, bench.adapter.embed_dim, seed=10_000 + k, device=bench.device)
             for k in bench.prompt_counts}
    image_cases.extend(score_rows(bench, pairs))
    image_cases.append(Case("explain_image (public API, embeddings)", "image",
                            lambda: explain_image(bench.model, bench.pixels, bench.targets[bench.kmax],
                                                  batch_size=bench.batch, progress=False), k=bench.kmax))
    loop_cases: dict[int, Case] = {}
    if "loop" not in bench.skip:
        for k in sorted({1, *[k for k in bench.prompt_counts if k <= bench.loop_max_k]}):
            loop_cases[k] = Case("per-prompt loop (authors' code)", "image", bench.explained(
                lambda k=k: authors_loop(bench.model, bench.pixels, bench.targets[bench.kmax][:k])), k=k)
        image_cases.extend(loop_cases.values())
    if "baselines" not in bench.skip and bench.args.baselines != "none":
        image_cases.extend(baseline_cases(bench))
    log(f"image cases ({len(image_cases)}):")
    run_cases(image_cases, bench.meter, bench.args.repeats, bench.args.slow, log)
    return image_cases, base, loop_cases


def extrapolate_loop(bench: Bench, loop_cases: dict[int, Case]) -> dict[int, tuple[float, float]]:
    """The per-prompt loop's (wall, cpu) at each K above ``--loop-max-k``, linear in K from K = 1 and the
    largest K run: T(K) = T(1) + (K - 1) x the per-prompt cost."""
    extrapolated: dict[int, tuple[float, float]] = {}
    if loop_cases:
        k_hi = max(loop_cases)
        low, high = loop_cases[1], loop_cases[k_hi]
        if k_hi > 1:
            per_wall = (high.wall - low.wall) / (k_hi - 1)
            per_cpu = (high.cpu - low.cpu) / (k_hi - 1)
            for k in bench.prompt_counts:
                if k not in loop_cases:
                    extrapolated[k] = (low.wall + (k - 1) * per_wall, low.cpu + (k - 1) * per_cpu)
    return extrapolated


def print_image_results(bench: Bench, image_cases: list[Case], base: Case, loop_cases: dict[int, Case],
                        extrapolated: dict[int, tuple[float, float]]) -> None:
    """The image table, the extrapolated loop lines, the targets and the scores' ratios to the cosine."""
    print_table(image_cases, base, not bench.cuda, f"Image side: {bench.batch} images, prompts as text embeddings")
    for k, (wall, cpu) in sorted(extrapolated.items()):
        line = (f"{'per-prompt loop (authors code), extrapolated':44s} {k:>5} {wall:9.3f} "
                f"{fmt_ratio(wall / base.wall):>10s}")
        if not bench.cuda:
            line += f" {cpu:9.3f} {fmt_ratio(cpu / base.cpu):>10s}"
        print(line + f" {'':>9s}  T(1) + (K-1) x per-prompt cost from K=1 and K={max(loop_cases)}")
    grad = {c.k: c for c in image_cases if c.name == GRAD_ECLIP_MAPS}
    clocks = bench.clocks
    print("\nTargets (ratios measured above)" + ("" if bench.cuda else "; wall / CPU time"))
    for k, bound in ((100, 1.5), (1000, 2.0)):
        if k in grad:
            values = " / ".join(f"{get(grad[k]) / get(base):.2f}x" for _, get in clocks)
            ok = all(get(grad[k]) / get(base) <= bound for _, get in clocks)
            print(f"  K={k:<5d} Grad-ECLIP <= {bound}x plain forward: {values}  {'PASS' if ok else 'FAIL'}")
    for k, bound in ((100, 5.0), (1000, 20.0)):
        if k in grad and (k in loop_cases or k in extrapolated):
            speedups = []
            for index, (_, get) in enumerate(clocks):
                loop_time = get(loop_cases[k]) if k in loop_cases else extrapolated[k][index]
                speedups.append(loop_time / get(grad[k]))
            kind = "measured" if k in loop_cases else "extrapolated"
            values = " / ".join(f"{s:.1f}x" for s in speedups)
            print(f"  K={k:<5d} faster than the per-prompt loop ({kind}) by >= {bound:.0f}x: {values}  "
                  f"{'PASS' if all(s >= bound for s in speedups) else 'FAIL'}")
    scored = [c for c in image_cases if c.name.startswith(f"{GRAD_ECLIP_MAPS}, ") and c.k in grad]
    if scored:
        print("\nExplained scores: Grad-ECLIP maps of each score over the cosine's at the same K"
              + ("" if bench.cuda else " (wall / CPU time)"))
        for case in scored:
            values = " / ".join(f"{get(case) / get(grad[case.k]):.2f}x" for _, get in clocks)
            print(f"  K={case.k:<5d} {case.name.split(', ', 1)[1]:12s} {values}")
    bench.results["cases"] += [case.record(base) for case in image_cases]
    bench.results["score_ratios"] = [{"score": c.name.split(", ", 1)[1], "k": c.k, "wall": c.wall / grad[c.k].wall,
                                      "cpu": c.cpu / grad[c.k].cpu} for c in scored]
    bench.results["loop_extrapolated"] = {k: {"wall": w, "cpu": c} for k, (w, c) in extrapolated.items()}


def text_section(bench: Bench, base: Case) -> None:
    """Text explanations of K captions (ratios to encode_text of the same captions; the probability among
    the captions beside the cosine), and the cost of encoding prompts."""
    from gradeclip_utils.methods.grad_eclip import token_relevance
    from gradeclip_utils.prompts import encode_texts

    args, adapter, count = bench.args, bench.adapter, bench.caption_count
    texts = captions(count)
    tokens = bench.model.tokenize(texts)
    with torch.no_grad():
        image_targets = F.normalize(adapter.encode_image(bench.pixels).float(), dim=-1)

    def plain_text():
        with torch.no_grad():
            return adapter.native_encode_text(tokens)

    def words(layers: int, images: torch.Tensor, score: str = "cosine") -> Callable[[], Any]:
        return bench.explained(lambda: token_relevance(adapter, tokens, images, layers=layers, score=score))

    text_base = Case("plain forward: model.encode_text", "text", plain_text, k=count)
    text_cases = [text_base,
                  Case(f"Grad-ECLIP words, last {args.text_layers} blocks, {bench.batch} images", "text",
                       words(args.text_layers, image_targets), k=count),
                  Case(f"Grad-ECLIP words, last block, {bench.batch} images", "text", words(1, image_targets), k=count),
                  Case(f"Grad-ECLIP words, last {args.text_layers} blocks, 1 image", "text",
                       words(args.text_layers, image_targets[:1]), k=count)]
    if "probability" in args.scores.split(",") and count > 1:
        text_cases.append(Case(f"Grad-ECLIP words, probability, {bench.batch} img", "text",
                               words(args.text_layers, image_targets, "probability"), k=count,
                               note=f"last {args.text_layers} blocks"))
    encode = Case("encode prompts: encode_texts (tokenise + encode)", "text",
                  lambda: encode_texts(bench.model, captions(bench.encode_count)), k=bench.encode_count)
    log("text cases:")
    run_cases(text_cases + [encode], bench.meter, args.repeats, args.slow, log)
    print_table(text_cases, text_base, not bench.cuda,
                f"Text side: {count} captions (ratios to encode_text of the same captions)")
    print(f"{'encode prompts: encode_texts':44s} {bench.encode_count:>5} {encode.wall:9.3f} "
          f"{fmt_ratio(encode.wall / base.wall):>10s}"
          + ("" if bench.cuda else f" {encode.cpu:9.3f} {fmt_ratio(encode.cpu / base.cpu):>10s}")
          + f" {fmt_mib(encode.peak):>9s}  ratio to the plain IMAGE forward of {bench.batch} images; "
            "not part of the map cost when prompts are given as embeddings")
    bench.results["cases"] += [case.record(text_base) for case in text_cases + [encode]]


def perturbation_section(bench: Bench) -> None:
    """Deletion and insertion curves of the Grad-ECLIP maps: images and frames per second."""
    from gradeclip_utils.metrics.faithfulness import perturbation_curves
    from gradeclip_utils.methods.grad_eclip import image_maps
    from gradeclip_utils.session import explaining

    batch, classifier = bench.batch, bench.targets[bench.kmax]
    with explaining(bench.model.model):
        out = image_maps(bench.adapter, bench.pixels, classifier)
    labels = out.scores.argmax(dim=-1).tolist()
    maps = out.maps[torch.arange(batch), torch.tensor(labels)].float().cpu()
    mean, std = bench.model.normalization

    def curves():
        return perturbation_curves(bench.adapter, bench.pixels, maps, classifier, labels, mean=mean, std=std,
                                   batch_size=bench.args.perturbation_batch)

    perturb = Case("deletion + insertion curves", "perturbation", curves, k=classifier.shape[0])
    plain = Case("plain forward", "perturbation", bench.plain_forward)
    log("perturbation case:")
    run_cases([plain, perturb], bench.meter, bench.args.repeats, bench.args.slow, log)
    points = len(curves().fractions)
    frames = 2 * points
    print(f"\nDeletion/insertion: {batch} images x {frames} scored frames (deletion and insertion, "
          f"{points} points each), classifier of {classifier.shape[0]} classes, "
          f"{bench.args.perturbation_batch} frames per forward")
    print(f"  {perturb.wall:.3f} s wall = {perturb.wall / plain.wall:.1f}x the plain forward of the {batch} images; "
          f"{batch / perturb.wall:.2f} images/s, {batch * frames / perturb.wall:.1f} frames/s; the plain "
          f"forward runs {batch / plain.wall:.1f} images/s, so the curves cost "
          f"{perturb.wall / (frames * plain.wall):.2f}x their {frames} forwards per image; "
          f"peak {fmt_mib(perturb.peak).strip()} MiB")
    bench.results["perturbation"] = {"wall": perturb.wall, "images_per_s": batch / perturb.wall,
                                     "frames_per_image": frames, "peak_bytes": perturb.peak}


def sweep_section(bench: Bench) -> None:
    """Throughput against the image batch size (``--sweep``), K = ``--sweep-prompts`` prompts."""
    from gradeclip_utils.methods.grad_eclip import image_maps

    sizes = [int(b) for b in bench.args.sweep.split(",") if b]
    if not sizes:
        return
    print(f"\nThroughput against the image batch (K = {bench.args.sweep_prompts} prompts as embeddings)")
    print(f"{'B':>5s} {'plain img/s':>12s} {'maps img/s':>12s} {'maps/plain':>10s} {'peak MiB':>9s}")
    sweep_targets = unit_targets(bench.args.sweep_prompts, bench.adapter.embed_dim, seed=11, device=bench.device)
    bench.results["sweep"] = []
    for b in sizes:
        images = torch.randn(b, 3, *bench.size, generator=bench.generator).to(bench.device)
        try:
            plain = Case("plain", "sweep", lambda: bench.adapter.native_encode_image(images))
            maps_case = Case("maps", "sweep",
                             bench.explained(lambda: image_maps(bench.adapter, images, sweep_targets)))
            run_cases([plain, maps_case], bench.meter, bench.args.repeats, bench.args.slow, log)
        except torch.cuda.OutOfMemoryError:
            print(f"{b:5d}  out of memory: the sweep stops here")
            break
        print(f"{b:5d} {b / plain.wall:12.1f} {b / maps_case.wall:12.1f} {maps_case.wall / plain.wall:9.2f}x "
              f"{fmt_mib(maps_case.peak):>9s}")
        bench.results["sweep"].append({"batch": b, "plain_images_per_s": b / plain.wall,
                                       "maps_images_per_s": b / maps_case.wall, "peak_bytes": maps_case.peak})
        del images


def memory_section(bench: Bench) -> None:
    """Memory over ``--memory-calls`` consecutive explain_image calls on a small model of the family."""
    from gradeclip_utils.explain import explain_image

    args, meter = bench.args, bench.meter
    small = tiny_model(bench.device, args.precision, like=args.model)
    small_pixels = torch.randn(2, 3, *small.adapter.image_size, generator=bench.generator).to(bench.device)
    small_targets = unit_targets(100, small.adapter.embed_dim, seed=3, device=bench.device)
    checkpoints = sorted({c for c in (10, 100, 500) if c < args.memory_calls} | {args.memory_calls})
    readings, python_heap = {}, {}
    tracemalloc.start()
    for call in range(1, args.memory_calls + 1):
        explain_image(small, small_pixels, small_targets, progress=False)
        if call in checkpoints:
            gc.collect()
            meter.sync()
            readings[call] = meter.in_use()
            python_heap[call] = tracemalloc.get_traced_memory()[0]
    tracemalloc.stop()
    with warnings.catch_warnings():  # isinstance on some module objects warns about deprecated names
        warnings.simplefilter("ignore")
        live = sum(1 for obj in gc.get_objects() if isinstance(obj, torch.Tensor))
    first, final = checkpoints[0], checkpoints[-1]
    kind = "CUDA memory allocated" if bench.cuda else "process RSS"
    print(f"\nMemory over {args.memory_calls} consecutive explain_image calls (small {small.family} model, 2 images "
          "x 100 prompts): "
          + ", ".join(f"after {c}: {readings[c] / MiB:.1f} MiB" for c in checkpoints) + f" ({kind}); growth from "
          f"call {first} to {final}: {(readings[final] - readings[first]) / MiB:+.2f} MiB; Python heap growth "
          f"{(python_heap[final] - python_heap[first]) / 1024:+.1f} KiB; live tensors after: {live}")
    bench.results["memory"] = {"calls": args.memory_calls, "readings_bytes": readings,
                               "python_heap_bytes": python_heap, "live_tensors": live}


# ---------------------------------------------------------------------------------------- classifier
#: the aim for a classifier: all its classes (ImageNet's 1,000), logit and probability, within this of a forward
CLASSIFIER_BOUND = 1.5


def classifier_section(args: argparse.Namespace) -> dict[str, Any]:
    """Explaining a ViT classifier's classes against its own forward of the same images (``--classifier``)."""
    from gradeclip_utils import explain_image, load_model
    from gradeclip_utils.methods.grad_eclip import image_maps
    from gradeclip_utils.session import explaining

    device = torch.device(args.device)
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    loaded = load_model(args.classifier, pretrained=None, device=device, precision=args.precision)
    model, adapter = loaded.model, loaded.adapter
    if not getattr(adapter, "is_classifier", False):
        raise SystemExit(f"--classifier {args.classifier} is not an image classifier ({adapter.family})")
    cuda = device.type == "cuda"
    batch = args.batch or (32 if cuda else 2)
    size = (args.size, args.size) if args.size else adapter.image_size
    pixels = torch.randn(batch, 3, *size, generator=torch.Generator().manual_seed(0)).to(device, adapter.dtype)
    counts = sorted({min(int(k), adapter.num_classes) for k in args.prompts.split(",") if k})
    kmax, rows = counts[-1], torch.eye(adapter.num_classes, device=device)

    def explained(k: int, score: str = "logit") -> Callable[[], Any]:
        def call():
            with explaining(model):
                return image_maps(adapter, pixels, rows[:k], score=score)
        return call

    def forward():
        with torch.no_grad():
            return adapter.native_encode_image(pixels)

    base = Case("plain forward: model(pixels)", "image", forward)
    cases = [base] + [Case("Grad-ECLIP maps, class logit", "image", explained(k), k=k) for k in counts]
    cases.append(Case("Grad-ECLIP maps, class probability", "image", explained(kmax, "probability"), k=kmax))
    cases.append(Case("explain_image (public API, class indices)", "image",
                      lambda: explain_image(loaded, pixels, list(range(kmax)), batch_size=batch, progress=False), k=kmax))
    print(f"classifier {args.classifier} ({adapter.family}, {adapter.num_classes} classes, random weights), "
          f"{args.precision}, device {device}, {batch} images of {size[0]}x{size[1]}, torch {torch.__version__}, "
          f"{torch.get_num_threads()} CPU threads; warm-up + median of {args.repeats}, ratios to its forward")
    run_cases(cases, Meter(device), args.repeats, args.slow, log)
    print_table(cases, base, not cuda, f"Classifier: {batch} images, class indices as targets")
    clocks = [("wall", lambda c: c.wall)] + ([] if cuda else [("cpu", lambda c: c.cpu)])
    print(f"\nTarget: all {kmax} classes explained for <= {CLASSIFIER_BOUND}x one forward"
          + ("" if cuda else " (wall / CPU time)"))
    for case in [c for c in cases[1:] if c.k == kmax]:  # the logit's and the probability's maps, the public API
        ratios = [get(case) / get(base) for _, get in clocks]
        values = " / ".join(f"{r:.2f}x" for r in ratios)
        verdict = "PASS" if all(r <= CLASSIFIER_BOUND for r in ratios) else "FAIL"
        print(f"  {case.name:44s} K={case.k:<5d} {values}  {verdict}")
    return {"settings": {**vars(args), "batch": batch, "device": str(device)},
            "cases": [case.record(base) for case in cases]}


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.classifier:
        results = classifier_section(args)
        if args.json:
            with open(args.json, "w") as handle:
                json.dump(results, handle, indent=2, default=str)
        return 0
    bench = setup(args)
    check_loop(bench)
    image_cases, base, loop_cases = image_section(bench)
    print_image_results(bench, image_cases, base, loop_cases, extrapolate_loop(bench, loop_cases))
    if "text" not in bench.skip:
        text_section(bench, base)
    if "perturbation" not in bench.skip:
        perturbation_section(bench)
    sweep_section(bench)
    if args.memory_calls > 0:
        memory_section(bench)
    if args.json:
        with open(args.json, "w") as handle:
            json.dump(bench.results, handle, indent=2, default=str)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
