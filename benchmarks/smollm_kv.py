"""DuoAttention, RazorAttention and the KV-cache trade-off on SmolLM2-135M-Instruct (issue 28):
30 layers, 9 query heads sharing 3 KV heads each (GQA: 270 query heads, 90 KV heads, the unit every
decision here is about), BPE tokenizer, passkey contexts as whole strings tokenized once.

    python benchmarks/smollm_kv.py --part duo        # gates on <= 512-token passkeys, held-out accuracy 256-2048
    python benchmarks/smollm_kv.py --part razor      # the rule's protected KV heads over --razor-seeds
    python benchmarks/smollm_kv.py --part tradeoff   # exact passkey accuracy at two KV fractions vs random
    python benchmarks/smollm_kv.py --part duo-seeds  # gates over --duo-seeds training seeds: shares, overlap
    python benchmarks/smollm_kv.py                   # all three (the trade-off reads the duo part's gates)

Each part writes its figures into benchmarks/results/smollm_kv.json (merged per part) and prints
markdown. Exact passkey accuracy: a context counts when the teacher-forced argmax at every answer
position is the answer token (the same as greedy decoding reproducing the key). The trade-off's
p-value of a ranking at m KV heads full: (1 + #random rankings at least as good) / (1 + R); R = 99 by
default (smallest p 0.01): 56 minutes on 2 threads without the compensation token and 56 with it
(3370 s / 3337 s measured; `--compensation no|yes` runs one; each is saved as it finishes);
`--n-random 19` on 12 passkeys about 8 + 9.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from dataclasses import asdict, replace
from datetime import date
from pathlib import Path

import torch

NAME = "smollm2-135m-instruct-q4"
OUT = Path(__file__).parent / "results" / "smollm_kv.json"
SINK, WINDOW = 4, 32  # a streaming head keeps 4 sink tokens and the last 32 (the question's tail)
PASSKEY = dict(needle_prefix=" The pass key is ", needle_suffix=". Remember it. ")
KEEP = (25, 50)  # % of KV heads kept full: the paper's ~quarter (MHA) and ~half (GQA)


def _save(part: str, got: dict) -> None:
    data = json.loads(OUT.read_text()) if OUT.exists() else {}
    data[part] = {"date": str(date.today()), "machine": platform.processor() or platform.machine(), **got}
    tmp = OUT.with_suffix(".tmp")
    tmp.write_text(json.dumps(data, indent=1))
    tmp.replace(OUT)


def _load():
    from workbench.corpus import encode_corpus, python_docs_corpus
    from workbench.hub import load_model

    model, tok = load_model(NAME)
    corpus = python_docs_corpus()
    return model, tok, encode_corpus(corpus, tok, "train"), encode_corpus(corpus, tok, "validation")


def _wilson(k: int, n: int) -> list[float]:
    from workbench.probes.intervals import wilson_interval

    lo, hi = wilson_interval(torch.tensor(float(k)), torch.tensor(float(n)))
    return [float(lo), float(hi)]


def _duo_config(args, pk, seed: int = 0):
    from workbench.probes.kv_data import DuoConfig

    return DuoConfig(
        n_contexts=args.duo_contexts,
        batch_size=args.duo_batch,
        steps=args.duo_steps,
        sink=SINK,
        window=WINDOW,
        log_every=10,
        passkey=pk,
        seed=seed,
    )


def _overlap_with_first(sets: list[torch.Tensor]) -> list[float]:
    """Share of the first boolean set's members that each later set also holds."""
    return [float((sets[0] & s).sum() / sets[0].sum()) for s in sets[1:]]


def _exact_hits(model, batch, hooks) -> int:
    """Contexts whose every answer token is the argmax, one at a time (no [L, H, T, T] kept beyond
    one layer's at 2048 tokens)."""
    from workbench.probes.duo import passkey_accuracy

    hits = 0
    for i in range(len(batch.tokens)):
        one = batch._replace(**{f: getattr(batch, f)[i : i + 1] for f in batch._fields})
        with torch.no_grad(), model.hooks(fwd_hooks=hooks):
            hits += round(passkey_accuracy(model(one.tokens), one)[0])
    return hits


def duo_part(args) -> dict:
    from workbench.probes.attention_restrict import keep_full_hooks, keep_top
    from workbench.probes.duo import duo_gates, passkey_batch
    from workbench.probes.gqa import expand_kv
    from workbench.probes.kv_data import PasskeyConfig
    from workbench.probes.kv_tradeoff import n_full_heads

    model, tok, train, val = _load()
    bos = tok.bos_token_id
    pk = PasskeyConfig(seq_len=args.duo_len, **PASSKEY)
    cfg = _duo_config(args, pk)
    duo = duo_gates(model, cfg, haystack=train, bos=bos, tokenizer=tok)
    gates = torch.tensor(duo.kv_alphas)
    _save("duo", {"config": asdict(cfg), "seconds": duo.seconds, "kv_alphas": duo.kv_alphas, "eval": "not yet"})
    L, H = model.cfg.n_layers, model.cfg.n_heads
    print(f"Duo: {cfg.steps} steps x {cfg.batch_size} contexts of {pk.seq_len} tokens in {duo.seconds:.0f} s")
    print(f"gates per KV head {tuple(gates.shape)} ({duo.n_kv_heads} KV heads, {duo.n_query_heads} query heads)")
    policies = {"full": torch.ones(L, H, dtype=torch.bool), "streaming": torch.zeros(L, H, dtype=torch.bool)}
    for pct in KEEP:
        m = n_full_heads(pct, gates.numel())  # 25% of 90 = 23, as the trade-off's (round(22.5) is 22)
        policies[f"duo {pct}%"] = expand_kv(keep_top(gates, m), H)
    rows = {}
    for T, n in zip(args.eval_lens, args.eval_n):
        batch = passkey_batch(n, replace(pk, seq_len=T), val, bos=bos, tokenizer=tok, seed=1000 + T, split="eval")
        for name, keep in policies.items():
            hooks = [] if name == "full" else keep_full_hooks(model, keep, SINK, WINDOW)
            start = time.perf_counter()
            hits = _exact_hits(model, batch, hooks)
            rows[f"{name} @ {T}"] = {
                "T": T,
                "policy": name,
                "n": n,
                "exact": hits / n,
                "wilson95": _wilson(hits, n),
                "seconds": time.perf_counter() - start,
            }
            r = rows[f"{name} @ {T}"]
            print(f"| {T} | {name} | {hits}/{n} = {r['exact']:.2f} [{r['wilson95'][0]:.2f}, {r['wilson95'][1]:.2f}] |")
    shares = {str(t): float((gates >= t).double().mean()) for t in (0.25, 0.5, 0.75)}
    print(f"share of KV heads whose gate is >= 0.25 / 0.5 / 0.75: {shares}")
    return {
        "config": asdict(cfg),
        "seconds": duo.seconds,
        "kv_alphas": duo.kv_alphas,
        "n_kv_heads": duo.n_kv_heads,
        "n_query_heads": duo.n_query_heads,
        "final_loss": duo.loss[-1],
        "final_distance": duo.distance[-1],
        "gate_share_at_least": shares,
        "eval": rows,
    }


def duo_seeds_part(args) -> dict:
    """The gates over training seeds (each seed draws its own fitting contexts and their order): per
    seed the share of KV heads kept, the overlap of its top 25% / 50% with the first seed's, and exact
    passkey accuracy at the first eval length with the top 25% / 50% full, on one held-out batch,
    beside full attention's on the same batch."""
    from workbench.probes.attention_restrict import keep_full_hooks, keep_top
    from workbench.probes.duo import duo_gates, passkey_batch
    from workbench.probes.gqa import expand_kv
    from workbench.probes.intervals import t_interval
    from workbench.probes.kv_data import PasskeyConfig
    from workbench.probes.kv_tradeoff import n_full_heads

    model, tok, train, val = _load()
    bos, H = tok.bos_token_id, model.cfg.n_heads
    pk = PasskeyConfig(seq_len=args.duo_len, **PASSKEY)
    T, n = args.eval_lens[0], args.eval_n[0]
    batch = passkey_batch(n, replace(pk, seq_len=T), val, bos=bos, tokenizer=tok, seed=1000 + T, split="eval")
    full_hits = _exact_hits(model, batch, [])  # the bar the seeds' picks are held to, on the same batch
    print(f"full attention @ {T}: {full_hits}/{n}")
    per_seed, tops = [], {}
    for seed in args.duo_seeds:
        cfg = _duo_config(args, pk, seed)
        duo = duo_gates(model, cfg, haystack=train, bos=bos, tokenizer=tok, progress=False)
        gates = torch.tensor(duo.kv_alphas)
        row = {"seed": seed, "seconds": duo.seconds, "kv_alphas": duo.kv_alphas, "exact": {}}
        row["share_at_least_0.5"] = float((gates >= 0.5).double().mean())
        for pct in KEEP:
            m = n_full_heads(pct, gates.numel())
            kv_keep = keep_top(gates, m)
            tops.setdefault(pct, []).append(kv_keep.flatten())
            hits = _exact_hits(model, batch, keep_full_hooks(model, expand_kv(kv_keep, H), SINK, WINDOW))
            row["exact"][f"duo {pct}%"] = hits / n
        per_seed.append(row)
        share = row["share_at_least_0.5"]
        print(f"seed {seed}: {duo.seconds:.0f} s; gate >= 0.5: {share:.3f}; exact @ {T}: {row['exact']}")

    def summary(values: list[float]) -> dict:  # shares and accuracies: the t interval clamped to [0, 1]
        mean, lo, hi = t_interval(torch.tensor(values))
        return {"values": values, "mean": float(mean), "t95": [max(0.0, float(lo)), min(1.0, float(hi))]}

    out = {
        "T": T,
        "n": n,
        "seeds": per_seed,
        "full": full_hits / n,
        "full_wilson": _wilson(full_hits, n),
        "share_at_least_0.5": summary([r["share_at_least_0.5"] for r in per_seed]),
    }
    for pct in KEEP:
        out[f"exact duo {pct}%"] = summary([r["exact"][f"duo {pct}%"] for r in per_seed])
        # the KV heads the first seed keeps, against each other seed's
        out[f"top {pct}% overlap with seed {args.duo_seeds[0]}"] = _overlap_with_first(tops[pct])
    print("| seeds | gate >= 0.5 (t 95%) | exact duo 25% | exact duo 50% | top-25% overlap with the first seed |")
    print("|---|---|---|---|---|")
    f = lambda d: f"{d['mean']:.3f} [{d['t95'][0]:.3f}, {d['t95'][1]:.3f}]"  # noqa: E731
    overlap = out[f"top 25% overlap with seed {args.duo_seeds[0]}"]
    print(
        f"| {len(per_seed)} | {f(out['share_at_least_0.5'])} | {f(out['exact duo 25%'])} | {f(out['exact duo 50%'])} "
        f"| {', '.join(f'{v:.2f}' for v in overlap)} |"
    )
    return out


def razor_part(args) -> dict:
    from workbench.probes.kv_data import RazorConfig
    from workbench.probes.razor import razor_scores

    model, tok, _, _ = _load()
    res, shares, chosen = None, [], []
    start = time.perf_counter()
    for s in range(args.razor_seeds):
        r = razor_scores(model, RazorConfig(seed=s), bos=tok.bos_token_id)
        shares.append(r.protected_share)
        chosen.append(torch.tensor(r.protected_kv).flatten())
        res = res or r
    t = torch.tensor(shares, dtype=torch.float64)
    half = float(2.776 * t.std() / len(t) ** 0.5) if len(t) == 5 else float("nan")  # t(0.975, 4)
    # the share is the rule's by construction; what a context seed can change is which heads
    overlap = _overlap_with_first(chosen)
    every = int(torch.stack(chosen).all(0).sum())
    print(f"Razor: protected share of the {res.n_kv_heads} KV heads per seed {shares}; mean {float(t.mean()):.3f}")
    print(f"Razor: seed 0's protected KV heads also protected on seeds 1..: {overlap}; on every seed: {every}")
    return {
        "protected_share": shares,
        "mean": float(t.mean()),
        "t95_half_width": half,
        "overlap_with_seed0": overlap,
        "protected_on_every_seed": every,
        "protected_kv_per_seed": [torch.nonzero(c).flatten().tolist() for c in chosen],
        "n_kv_heads": res.n_kv_heads,
        "n_query_heads": res.n_query_heads,
        "seed0": res.to_dict(),
        "seconds": time.perf_counter() - start,
    }


def _fmt(p: float | None) -> str:
    return "-" if p is None else f"{p:.3f}"


def _tradeoff_config(args, compensation: bool):
    from workbench.probes.kv_data import PasskeyConfig, TradeoffConfig

    return TradeoffConfig(
        fractions=KEEP,
        sink=SINK,
        window=WINDOW,
        compensation=compensation,
        n_random=args.n_random,
        max_tie_orders=args.max_tie_orders,
        seq_len=args.tradeoff_len,
        n_passkey=args.n_passkey,
        n_needle=1,  # the curve also measures needle copying and text loss; kept minimal here
        needle_len=10,
        n_text=1,
        passkey=PasskeyConfig(seq_len=args.tradeoff_len, **PASSKEY),  # as the result records it
    )


def _command(args) -> str:
    return "python benchmarks/smollm_kv.py " + " ".join(
        f"--{k.replace('_', '-')} {' '.join(map(str, v)) if isinstance(v, list) else v}" for k, v in vars(args).items()
    )


def tradeoff_part(args, got: dict) -> dict:
    from workbench.probes.kv_data import RazorConfig
    from workbench.probes.kv_tradeoff import tradeoff_curve
    from workbench.probes.razor import razor_scores

    model, tok, _, val = _load()
    bos = tok.bos_token_id
    rankings = {"razor": razor_scores(model, RazorConfig(), bos=bos).ranking()}
    if "duo" in got:
        rankings["duo_alpha"] = got["duo"]["kv_alphas"]

    # each setting is its own entry, so that one can be rerun (or run alone) and the other kept; an
    # entry kept from an earlier command must share this one's settings but the compensation token
    def settings(cfg: dict) -> dict:
        return {k: v for k, v in cfg.items() if k != "compensation"}

    now = settings(json.loads(json.dumps(asdict(_tradeoff_config(args, False)))))  # tuples as the file's lists
    out = {}
    for key, old in got.get("tradeoff", {}).items():
        if key in ("without compensation", "with compensation"):
            if settings(old["result"]["config"]) == now:
                out[key] = old
            else:
                print(f"dropping the saved '{key}' entry: its settings differ from this command's")
    for comp in {"no": (False,), "yes": (True,), "both": (False, True)}[args.compensation]:
        cfg = _tradeoff_config(args, comp)
        start = time.perf_counter()
        res = tradeoff_curve(model, rankings, cfg, bos=bos, haystack=val, tokenizer=tok)
        secs = time.perf_counter() - start
        key = "with compensation" if comp else "without compensation"
        out[key] = {"date": str(date.today()), "seconds": secs, "command": _command(args), "result": res.to_dict()}
        _save("tradeoff", out)  # kept even if the next setting is cut short
        print(f"\n{key}: {secs:.0f} s; all heads full: passkey exact {res.full_value['passkey_acc']:.3f}")
        print(f"({res.n_kv_heads} KV heads ranked, {res.n_query_heads} query heads; R = {cfg.n_random})")
        cols = "ranking | % KV heads full | KV cache | passkey exact | random mean [min, max] | p | Holm p | verdict"
        print(f"| {cols} |")
        print("|---|---|---|---|---|---|---|---|")
        band = res.random_band["passkey_acc"]
        for name in rankings:
            c = res.curves[name]
            for i, pct in enumerate(res.fractions):
                print(
                    f"| {name} | {pct:g} ({res.n_full[i]}) | {c['kv_fraction'][i]:.3f} | {c['passkey_acc'][i]:.3f} | "
                    f"{band['mean'][i]:.3f} [{band['min'][i]:.3f}, {band['max'][i]:.3f}] | "
                    f"{res.p_values[name]['passkey_acc'][i]:.3f} | {_fmt(res.p_adjusted[name]['passkey_acc'][i])} | "
                    f"{res.verdicts[name]['passkey_acc'][i]} |"
                )
    return out  # each setting records its own command and config


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--part", choices=("duo", "razor", "tradeoff", "duo-seeds", "all"), default="all")
    ap.add_argument("--duo-steps", type=int, default=100)
    ap.add_argument("--duo-len", type=int, default=384, help="fitting contexts' tokens (at most 512)")
    ap.add_argument("--duo-batch", type=int, default=2)
    ap.add_argument("--duo-contexts", type=int, default=32)
    ap.add_argument("--duo-seeds", type=int, nargs="+", default=[0, 1, 2], help="training seeds of --part duo-seeds")
    ap.add_argument("--eval-lens", type=int, nargs="+", default=[256, 512, 1024, 2048])
    ap.add_argument("--eval-n", type=int, nargs="+", default=[16, 8, 4, 4], help="held-out contexts per length")
    ap.add_argument("--razor-seeds", type=int, default=5)
    ap.add_argument("--n-random", type=int, default=99, help="random rankings per trade-off point")
    ap.add_argument("--max-tie-orders", type=int, default=3)
    ap.add_argument("--tradeoff-len", type=int, default=256)
    ap.add_argument("--n-passkey", type=int, default=16)
    ap.add_argument("--compensation", choices=("no", "yes", "both"), default="both", help="trade-off settings to run")
    args = ap.parse_args()
    if len(args.eval_n) != len(args.eval_lens):
        ap.error(f"--eval-n needs one count per --eval-lens ({len(args.eval_lens)}), got {len(args.eval_n)}")
    if args.part == "duo-seeds" and len(args.duo_seeds) < 2:
        ap.error(f"--duo-seeds: at least 2 seeds for an interval, got {args.duo_seeds}")
    if args.duo_len > 512:
        ap.error(f"--duo-len: at most 512 tokens (issue 28), got {args.duo_len}")
    print(f"torch threads {torch.get_num_threads()}")
    got = json.loads(OUT.read_text()) if OUT.exists() else {}
    for part in ("duo", "razor", "tradeoff", "duo-seeds"):
        if args.part == part or (args.part == "all" and part != "duo-seeds"):
            start = time.perf_counter()
            parts = {"duo": duo_part, "razor": razor_part, "duo-seeds": duo_seeds_part}
            res = parts[part](args) if part != "tradeoff" else tradeoff_part(args, got)
            res["wall_seconds"] = time.perf_counter() - start
            res["command"] = _command(args)
            _save(part, res)
            got[part] = res


if __name__ == "__main__":
    main()
