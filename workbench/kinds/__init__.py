"""Run kinds: one module per kind (sae, sparsity, heads, arrow), each owning its config dataclass,
its typed result, its `build(cfg, model, data, run, *, progress)` and the viewer page that shows it;
`registry` holds them by name (`workbench.kinds.builtin` registers the four built-in ones).

    from workbench.kinds.registry import get_kind, register_kind
    kind = get_kind("heads")  # Kind(name, config, result, build, folder, page)

A kind of one's own: a module that calls `register_kind(Kind(...))` at import, loaded with
`workbench run <kind> --plugin my_module` or `registry.load_plugin("my_module")`.

This package's __init__ imports nothing: the results base (`workbench.results`) reads the registry,
and every kind imports the results base.
"""
