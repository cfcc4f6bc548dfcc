"""The "graph" run kind: the attribution graph of one prompt (workbench.graphs) on the local
replacement model: transcoders where a folder of them is given, every other MLP an error node.
results.json holds the scores and the stored (loosely pruned) graph with its per-head loadings;
graph.safetensors the whole graph (dense adjacency, node values, direct reads)."""

from __future__ import annotations

import time
from dataclasses import dataclass
from typing import ClassVar

from ..fielddoc import FieldError, doc
from ..graphs.graph import GRAPH_FILE
from ..graphs.view import GraphView, view_from_dict
from ..results import ResultsError, _plain, take

FOLDER = "graph"
PAGE = "workbench.viewer.graph_page"


@dataclass(frozen=True)
class GraphRunConfig:
    """The prompt, the transcoders and the pruning of one attribution graph."""

    prompt: str = doc("def add(a, b):\n    return a + b", "the prompt (the model's tokenizer; BOS put first)")
    transcoders: str = doc("", "folder of layer_<L>.safetensors transcoders; empty: every MLP is an error node")
    transcoder_runs: str = doc("", "comma-separated run names whose feature pages the features link to, one per layer")
    heads_run: str = doc("", "a heads run the head loadings link to (empty: no links)")
    max_n_logits: int = doc(10, "logit targets at most")
    desired_logit_prob: float = doc(0.95, "logit targets until their cumulative probability reaches this")
    node_threshold: float = doc(0.8, "share of influence the pruned graph's nodes hold (the page's default)")
    edge_threshold: float = doc(0.98, "share of edge score its edges hold (the page's default)")
    store_node_threshold: float = doc(0.9, "node share stored for the prune slider (its loosest setting)")
    store_edge_threshold: float = doc(0.99, "edge share stored for the prune slider")
    max_view_edges: int = doc(3000, "stored edges at most (the highest-scoring)")
    batch_size: int = doc(256, "targets per backward pass")
    save_adjacency: bool = doc(True, "write the whole graph to graph.safetensors (4500 nodes: 80 MB)")

    def __post_init__(self):
        for name in ("desired_logit_prob", "node_threshold", "edge_threshold", "store_node_threshold"):
            if not 0 < getattr(self, name) <= 1:
                raise FieldError(name, f"{name}={getattr(self, name)}: expected a share in (0, 1]")
        if self.store_node_threshold < self.node_threshold or self.store_edge_threshold < self.edge_threshold:
            raise FieldError("store_node_threshold", "the stored thresholds must be at least the shown ones")
        if self.max_n_logits < 1 or self.batch_size < 1:
            raise FieldError("max_n_logits", "max_n_logits and batch_size must be >= 1")


@dataclass
class GraphRunResult:
    """One prompt's attribution graph: its targets, scores and the stored graph."""

    KIND: ClassVar[str] = "graph"
    SCHEMA: ClassVar[int] = 1

    prompt: str
    logit_tokens: list[str]  # the logit targets' labels, most probable first
    logit_probs: list[float]
    n_features: int  # active features (graph nodes)
    n_errors: int
    n_nodes: int
    replacement: float  # circuit-tracer's replacement score of the whole graph
    completeness: float
    pruned_replacement: float  # the same at node_threshold / edge_threshold
    pruned_completeness: float
    node_threshold: float
    edge_threshold: float
    seconds: float  # the graph's build (trace, pruning, loadings)
    view: GraphView
    transcoders: str = ""  # the folder they came from ("" none: MLPs are error nodes)
    transcoder_runs: list[str] | None = None  # per layer, the run a feature's page lives in
    heads_run: str = ""

    def to_dict(self) -> dict:
        return _plain(self) | {"view": _plain(self.view)}

    @classmethod
    def from_dict(cls, d: dict, where: str = "results") -> GraphRunResult:
        if not isinstance(d, dict) or "view" not in d:
            raise ResultsError(f"{where} lacks view (a GraphRunResult)")
        out = take(cls, {**d, "view": None}, where)
        try:
            out.view = view_from_dict(d["view"], f"{where}.view")
        except ValueError as e:
            raise ResultsError(str(e)) from e
        return out


def build(cfg: GraphRunConfig, model, data, run, *, progress: bool = True) -> GraphRunResult:
    """Trace the prompt, prune it, load the stored edges onto heads, write graph.safetensors."""
    import torch

    from ..graphs.attribute import trace
    from ..graphs.heads import head_loadings
    from ..graphs.prune import graph_scores, prune
    from ..graphs.transcoder import load_transcoders
    from ..graphs.view import make_view

    lm, tok = model.model, data.tokenizer
    dtype = next(lm.parameters()).dtype
    tcs = load_transcoders(cfg.transcoders, dtype) if cfg.transcoders else {}
    ids = [tok.bos_token_id] + tok.encode(cfg.prompt)
    if len(ids) > lm.cfg.n_ctx:
        raise FieldError("prompt", f"prompt: {len(ids)} tokens with BOS, the model's context is {lm.cfg.n_ctx}")
    t0 = time.perf_counter()
    kw = dict(max_n_logits=cfg.max_n_logits, desired_logit_prob=cfg.desired_logit_prob)
    graph, lin = trace(
        lm, torch.tensor(ids), tcs, bos=tok.bos_token_id, batch_size=cfg.batch_size, progress=progress, **kw
    )
    stored = prune(graph, cfg.store_node_threshold, cfg.store_edge_threshold)
    shown = prune(graph, cfg.node_threshold, cfg.edge_threshold)
    t_idx, s_idx = stored.edge_mask.nonzero(as_tuple=True)
    loads = head_loadings(lm, lin, graph, t_idx, s_idx, progress=progress)
    del lin
    view, _ = make_view(graph, stored, tok.token_str, loads, cfg.max_view_edges)
    full, pruned = graph_scores(graph), graph_scores(graph, graph.dense() * shown.edge_mask)
    seconds = time.perf_counter() - t0
    if cfg.save_adjacency:
        graph.save(run.file(GRAPH_FILE))
    runs = [r.strip() for r in cfg.transcoder_runs.split(",")] if cfg.transcoder_runs else None
    return GraphRunResult(
        prompt=cfg.prompt,
        logit_tokens=[tok.token_str(int(i)) for i in graph.logit_tokens],
        logit_probs=graph.logit_probs.tolist(),
        n_features=graph.n_features,
        n_errors=graph.n_errors,
        n_nodes=graph.n_nodes,
        replacement=full.replacement,
        completeness=full.completeness,
        pruned_replacement=pruned.replacement,
        pruned_completeness=pruned.completeness,
        node_threshold=cfg.node_threshold,
        edge_threshold=cfg.edge_threshold,
        seconds=seconds,
        view=view,
        transcoders=cfg.transcoders,
        transcoder_runs=runs,
        heads_run=cfg.heads_run,
    )
