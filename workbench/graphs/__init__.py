"""Attribution graphs on the local replacement model (Ameisen et al. 2025; circuit-tracer):

transcoder.py   the per-layer transcoder interface (and its files)
replacement.py  one prompt's frozen tensors and node values
attribute.py    edges by gradient injection in batches (trace / attribute)
graph.py        the Graph: nodes, dense adjacency, safetensors
prune.py        influence, pruning, replacement and completeness scores
heads.py        per-head loadings of edges (each head's OV share)
view.py         the pruned graph as plain lists (results.json, the page, the figure)
"""
