"""The IR the passes share: attention sites and their token layouts."""
from __future__ import annotations

import re
from dataclasses import dataclass, field

import torch.fx as fx

RUN_TIME_TEXT = "ditreduce_run_time_text"   # graph meta key: modules of the sites reduced with run-time text


@dataclass(frozen=True)
class Segment:
    """A run of tokens along a sequence: an image lattice (grid) or text (name) or other."""

    kind: str                      # "image" | "text" | "other"
    length: int                    # 0 for a run-time text segment
    grid: tuple[int, ...] | None = None
    name: str | None = None
    run_time: bool = False         # text whose length is only known at run time (per sample, from a mask)


@dataclass
class Layout:
    segments: tuple[Segment, ...]

    @property
    def length(self) -> int:
        return sum(s.length for s in self.segments)

    def image_segments(self) -> list[tuple[int, Segment]]:
        out, pos = [], 0
        for s in self.segments:
            if s.kind == "image":
                out.append((pos, s))
            pos += s.length
        return out

    @property
    def text_tokens(self) -> int:
        return sum(s.length for s in self.segments if s.kind == "text")

    @property
    def run_time(self) -> bool:
        return any(s.run_time for s in self.segments)

    def image_span(self) -> tuple[int, int, str]:
        """(static tokens before the image, static tokens after it, where the run-time segments lie:
        "before", "after", "both" or "" for none) of a layout with one image segment."""
        i = next(j for j, s in enumerate(self.segments) if s.kind == "image")
        before, after = self.segments[:i], self.segments[i + 1:]
        sides = [name for name, segs in (("before", before), ("after", after)) if any(s.run_time for s in segs)]
        side = "both" if len(sides) == 2 else "".join(sides)
        return sum(s.length for s in before), sum(s.length for s in after), side

    def describe(self) -> str:
        parts = []
        for s in self.segments:
            if s.kind == "image":
                parts.append("img " + "x".join(map(str, s.grid)))
            elif s.run_time:
                parts.append("txt per sample")
            elif s.kind == "text":
                parts.append(f"txt {s.length}")
            else:
                parts.append(f"other {s.length}")
        return " | ".join(parts)


@dataclass
class Site:
    """One attention call in the captured graph, canonicalised to aten.scaled_dot_product_attention."""

    node: fx.Node
    module: str                    # module path, e.g. "transformer_blocks.3.attn1"
    block: int | None              # index of the enclosing repeated block
    block_group: str | None        # e.g. "transformer_blocks"
    q_len: int
    kv_len: int
    batch: int
    heads: int
    head_dim: int
    v_dim: int
    kind: str = "self"             # self | cross | joint (set by layout inference)
    layout: Layout | None = None   # q sequence layout
    kv_layout: Layout | None = None
    skip_reason: str | None = None
    lost_at: str | None = None     # the op that stopped layout inference, if any
    origin: str = "sdpa"           # "sdpa" or "matmul-softmax" (canonicalised hand-written attention)
    owners: tuple[str, ...] = ()   # every module whose q/k/v/out projections feed this attention (a module that
    #                                only holds projections while its parent runs the sdpa: Flux, MMDiT code)
    scopes: dict = field(default_factory=dict)  # wider scope -> RegionPlan, or why the site cannot have it
    layout_source: str | None = None  # "override" when the schedule's `layout:` decided the site's layout
    notes: list[str] = field(default_factory=list)  # what the rewrite noted (e.g. cfg: shared run per sample)
    run_time_reason: str | None = None  # the sequence length is only known at run time: why, and where it is set

    @property
    def run_time_text(self) -> bool:
        """Is part of the site's text only known at run time (q_len / kv_len are then -1)?"""
        return any(lay is not None and lay.run_time for lay in (self.layout, self.kv_layout))

    @property
    def name(self) -> str:
        return self.node.name

    @property
    def image(self) -> tuple[int, Segment] | None:
        segs = self.layout.image_segments() if self.layout else []
        return segs[0] if len(segs) == 1 else None

    @property
    def image_tokens(self) -> int:
        return sum(seg.length for _, seg in self.layout.image_segments()) if self.layout else 0

    @property
    def text_tokens(self) -> int:
        return self.layout.text_tokens if self.layout else 0

    @property
    def grid(self) -> tuple[int, ...] | None:
        img = self.image
        return img[1].grid if img else None


def module_of(node: fx.Node) -> str:
    stack = node.meta.get("nn_module_stack") or {}
    if not stack:
        return ""
    path = list(stack.values())[-1][0]
    return _clean_path(path)


def _clean_path(path: str) -> str:
    # export gives plain fqns; dynamo gives L['self'].__dict__['_modules']['x'] forms
    path = re.sub(r"L\['self'\]\.?", "", path)
    path = re.sub(r"(?:\.)?__dict__\['_modules'\]\['([^']+)'\]", r".\1", path)
    path = re.sub(r"\._modules\['([^']+)'\]", r".\1", path)
    return path.strip(".")


def block_of(module: str) -> tuple[str | None, int | None]:
    """The outermost `<name>.<int>` in a module path — the repeated block: ("transformer_blocks", 3)."""
    m = re.search(r"([A-Za-z_]\w*)\.(\d+)(?=\.|$)", module)
    return (module[: m.start(2) - 1], int(m.group(2))) if m else (None, None)


_LIBRARY_FRAMES = ("/torch/", "/ditreduce/passes/", "<frozen ")  # torch's and our own frames; diffusers' count as the model's


def source_of(node: fx.Node) -> str | None:
    """The user's source line that recorded `node`, as "`code` (file.py:12)", from export's stack_trace
    (the innermost frame outside torch and ditreduce); None where export kept no trace."""
    trace = node.meta.get("stack_trace") if isinstance(node, fx.Node) else None
    if not trace:
        return None
    frames = re.findall(r'File "([^"]+)", line (\d+), in [^\n]*\n\s*([^\n]*)', trace)
    for path, line, code in reversed(frames):
        code = re.sub(r"\s{2,}#.*$", "", code.strip())  # a trailing comment
        if code and not any(part in path for part in _LIBRARY_FRAMES):
            return f"`{code}` ({path.rsplit('/', 1)[-1]}:{line})"
    return None


def op_name(node: fx.Node) -> str:
    """aten.repeat for aten.repeat.default: the op without its overload."""
    t = node.target
    name = getattr(t, "__name__", str(t))
    if hasattr(t, "_schema"):
        name = "aten." + t._schema.name.split("::")[-1]
    return name


def where(node: fx.Node) -> str:
    """A node in the user's terms: the op, the source line that wrote it and the module path that ran it,
    e.g. "aten.repeat `k = k.repeat(1, n_rep, 1, 1)` (model.py:40) in blocks.0.attn"."""
    mod = module_of(node) or "the top-level forward"
    src = source_of(node)
    return f"{op_name(node)} {src} in {mod}" if src else f"{op_name(node)} in {mod}"
