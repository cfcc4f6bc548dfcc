"""Is an SAE's dictionary *useful*? Sparse probing and absorption-style scores, offline.

Both follow SAEBench (Karvonen et al. 2025) and, for absorption, Chanin et al. 2024 ("A is for
Absorption"), on concepts labelled automatically on the byte-level corpus instead of hub datasets:

- `sparse_probing`: per binary concept, the k latents with the largest |difference of class means|
  on the train split (SAEBench's `get_top_k_mean_diff_mask`), a logistic probe on those k, test
  accuracy for each k; the baseline is the same probe on all dimensions of the raw activation.
- `absorption`: SAEBench's first-letter eval ("full absorption" rate), where the concept is "the
  current word starts with letter L", read at the word's last byte. Our SAEs and model are far
  below the sizes SAEBench validated it on (its README warns against reading absorption on models
  under 1B parameters or SAEs under 16k latents), so we call it **absorption-style**.

Logistic probes are fitted here (float64 L-BFGS on standardised features, a small L2 penalty):
the workbench does not depend on scikit-learn.
"""

from __future__ import annotations

import string
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field

import torch
from jaxtyping import Bool, Float, Int
from torch import Tensor
from transformer_lens import HookedTransformer

from ..activations import token_rows, validate_hook_name
from .model import SparseAutoencoder

ABSORPTION_CAVEAT = (
    "absorption-style: SAEBench's first-letter absorption rule on a byte-level model; "
    "SAEBench warns against reading absorption on models under 1B parameters or SAEs "
    "under 16k latents, so compare variants with each other, not with published numbers"
)
LETTERS = string.ascii_lowercase


# --- logistic probes ---------------------------------------------------------------------------


@dataclass(frozen=True)
class LogisticProbe:
    """w·x + b > 0 predicts the positive class; w and b act on the raw (unstandardised) features."""

    w: Float[Tensor, " d"]
    b: float

    def scores(self, x: Float[Tensor, "n d"]) -> Float[Tensor, " n"]:
        return x.double() @ self.w + self.b

    def predict(self, x: Float[Tensor, "n d"]) -> Bool[Tensor, " n"]:
        return self.scores(x) > 0


def fit_logistic(
    x: Float[Tensor, "n d"], y: Bool[Tensor, " n"], l2: float = 1e-4, max_iter: int = 100, balanced: bool = False
) -> LogisticProbe:
    """Logistic regression: mean (optionally class-balanced) cross-entropy + l2/2·|w|² on
    standardised features, minimised with L-BFGS in float64; the weights are mapped back to the
    raw features so callers can read the probe direction in activation space."""
    if x.ndim != 2 or y.shape != (len(x),):
        raise ValueError(f"x, y: expected [n, d] and [n], got {tuple(x.shape)} and {tuple(y.shape)}")
    if not (y.any() and (~y).any()):
        raise ValueError("y: a probe needs both classes in its training data")
    x = x.detach().double()
    mu, sd = x.mean(0), x.std(0).clamp_min(1e-8)
    xs = (x - mu) / sd
    t = y.double()
    weight = torch.ones_like(t)
    if balanced:  # each class weighs half, whatever its count
        weight = torch.where(y, 0.5 / t.mean(), 0.5 / (1 - t.mean()))
    w = torch.zeros(x.shape[1], dtype=torch.float64, requires_grad=True)
    b = torch.zeros((), dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w, b], lr=1.0, max_iter=max_iter, line_search_fn="strong_wolfe")

    def closure():
        opt.zero_grad()
        loss = (
            weight * torch.nn.functional.binary_cross_entropy_with_logits(xs @ w + b, t, reduction="none")
        ).mean() + 0.5 * l2 * w.pow(2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w_raw = w.detach() / sd
    return LogisticProbe(w_raw, float(b.detach() - (w_raw * mu).sum()))


def f1_score(pred: Bool[Tensor, " n"], y: Bool[Tensor, " n"]) -> float:
    tp = float((pred & y).sum())
    denom = float(pred.sum() + y.sum())
    return 2 * tp / denom if denom else 0.0


def top_k_mean_diff(z: Float[Tensor, "n F"], y: Bool[Tensor, " n"], k: int, signed: bool = False) -> Int[Tensor, " k"]:
    """The k columns with the largest |mean over positives − mean over negatives| (SAEBench's
    sparse-probing selection); `signed` ranks by the difference itself (latents that fire *for* y)."""
    diff = z[y].double().mean(0) - z[~y].double().mean(0)
    return torch.argsort(diff if signed else diff.abs(), descending=True)[:k]


# --- byte-level concepts -------------------------------------------------------------------------


def _is_letter(c: int) -> bool:
    return 65 <= c <= 90 or 97 <= c <= 122


def _line_labels(line: list[int]) -> tuple[list[bool], list[bool], list[bool]]:
    """For one line of bytes: inside a Python code sample (a doctest line '>>> '/'... ' or one
    indented by 4+ spaces), inside a string literal, inside the line's leading indentation."""
    text = bytes(line)
    code = text.startswith((b">>> ", b"... ")) or text.startswith(b"    ")
    in_code = [code] * len(line)
    indent, string_ = [], []
    leading = True
    quote = None
    for i, c in enumerate(line):
        leading = leading and c == 32
        indent.append(leading)
        prev = line[i - 1] if i else 32
        nxt = line[i + 1] if i + 1 < len(line) else 32
        is_quote = c in (34, 39) and not (c == 39 and _is_letter(prev) and _is_letter(nxt))  # not an apostrophe
        if quote is None:
            string_.append(False)
            if is_quote:
                quote = c
        elif c == quote:
            string_.append(False)
            quote = None
        else:
            string_.append(True)
    return in_code, string_, indent


def byte_concepts(tokens: Int[Tensor, "n seq"], bos_token_id: int = 256) -> dict[str, Bool[Tensor, "n seq"]]:
    """Binary concepts at every byte position of byte-level windows (BOS at position 0 is False
    everywhere). Each is read from the window's own bytes up to (and, for word ends and sentence
    gaps, one byte after) the position; the window's first line counts from the window's start."""
    if tokens.ndim != 2:
        raise ValueError(f"tokens: expected [n, seq] byte windows, got shape {tuple(tokens.shape)}")
    names = (
        "python_code",
        "string_literal",
        "in_parentheses",
        "uppercase",
        "digit",
        "line_start",
        "after_sentence_end",
        "word_start",
        "indentation",
    )
    out = {name: torch.zeros(tokens.shape, dtype=torch.bool) for name in names}
    for r, row in enumerate(tokens.tolist()):
        body = row[1:] if row and row[0] == bos_token_id else row
        off = len(row) - len(body)
        if any(not 0 <= c < 256 for c in body):
            raise ValueError(f"tokens: window {r} holds ids outside 0..255 (not a byte-level window)")
        labels = {name: [False] * len(body) for name in names}
        depth, start = 0, 0
        for i, c in enumerate(body):
            prev = body[i - 1] if i else None
            labels["uppercase"][i] = 65 <= c <= 90
            labels["digit"][i] = 48 <= c <= 57
            labels["line_start"][i] = prev == 10
            labels["after_sentence_end"][i] = prev in (46, 33, 63) and c in (32, 10)
            labels["word_start"][i] = _is_letter(c) and not (prev is not None and _is_letter(prev))
            if c == 41:
                depth = max(0, depth - 1)
            labels["in_parentheses"][i] = depth > 0 and c != 40
            if c == 40:
                depth += 1
            if c == 10 or i == len(body) - 1:
                end = i if c == 10 else i + 1
                code, str_, ind = _line_labels(body[start:end])
                labels["python_code"][start:end] = code
                labels["string_literal"][start:end] = str_
                labels["indentation"][start:end] = ind
                start = i + 1
        for name in names:
            out[name][r, off:] = torch.tensor(labels[name], dtype=torch.bool)
    return out


def word_ends(
    tokens: Int[Tensor, "n seq"], bos_token_id: int = 256
) -> tuple[Bool[Tensor, "n seq"], Int[Tensor, "n seq"]]:
    """Last bytes of whole words (maximal runs of ASCII letters that start after the window's
    first byte and end before its last) and, there, the word's first letter as 0..25 (else -1)."""
    is_end = torch.zeros(tokens.shape, dtype=torch.bool)
    first = torch.full(tokens.shape, -1, dtype=torch.long)
    for r, row in enumerate(tokens.tolist()):
        start = None
        for i, c in enumerate(row):
            letter = c != bos_token_id and _is_letter(c)
            if letter and start is None:
                start = i
            elif not letter and start is not None:
                if start > 1:  # a word at position 1 may have begun before the window
                    is_end[r, i - 1] = True
                    first[r, i - 1] = ord(chr(row[start]).lower()) - 97
                start = None
    return is_end, first


# --- sparse probing ----------------------------------------------------------------------------------


@dataclass(frozen=True)
class ProbingConfig:
    """Sparse probing and absorption-style settings (defaults: SAEBench's, where it has one)."""

    ks: tuple[int, ...] = (1, 2, 5, 10, 20, 50)  # latents per sparse probe
    n_per_class: int = 500  # sparse probing: positions per class in each of train and test (balanced)
    l2: float = 1e-4  # L2 penalty of every logistic probe (on standardised features)
    max_iter: int = 100  # L-BFGS iterations per probe
    seed: int = 0  # which positions the balanced splits draw
    # absorption-style (SAEBench absorption_first_letter)
    max_main_latents: int = 10  # k-sparse probing of the main latents stops at this k
    f1_jump: float = 0.03  # ... and as soon as one more latent raises test F1 by less than this
    probe_cos_threshold: float = 0.025  # the top-projecting latent's decoder row: cos with the probe ≥ this
    projection_threshold: float = 0.4  # ... and its projection ≥ this fraction of the probe projection
    fraction_cos_threshold: float = 0.1  # absorption fraction: candidate absorbers need cos ≥ this
    fraction_max_absorbers: int = 3  # ... and at most this many of them are counted
    min_positives: int = 20  # letters with fewer test positives are left out

    def __post_init__(self) -> None:
        if not self.ks or min(self.ks) < 1:
            raise ValueError(f"ks={self.ks}: expected positive latent counts")
        if self.n_per_class < 2:
            raise ValueError(f"n_per_class={self.n_per_class} must be at least 2")
        if not 1 <= self.max_main_latents:
            raise ValueError(f"max_main_latents={self.max_main_latents} must be at least 1")


def balanced_split(
    y: Bool[Tensor, " n"], train: Bool[Tensor, " n"], n_per_class: int, seed: int = 0
) -> tuple[Int[Tensor, " a"], Int[Tensor, " b"]]:
    """Row indices of a balanced train set (rows with `train`) and test set (the others): up to
    n_per_class positives and as many negatives in each, drawn at random (seeded)."""
    gen = torch.Generator().manual_seed(seed)

    def draw(mask):
        pos, neg = mask & y, mask & ~y
        m = min(int(pos.sum()), int(neg.sum()), n_per_class)
        pick = lambda s: s.nonzero().squeeze(1)[torch.randperm(int(s.sum()), generator=gen)[:m]]  # noqa: E731
        return torch.cat([pick(pos), pick(neg)])

    return draw(train), draw(~train)


@dataclass
class SparseProbingResult:
    tasks: list[str]
    ks: list[int]
    sae_accuracy: dict[str, dict[int, float]]  # task -> k -> test accuracy of the k-latent probe
    llm_accuracy: dict[str, float]  # task -> test accuracy of the probe on the raw activation
    n_train: dict[str, int]
    n_test: dict[str, int]

    def mean_accuracy(self) -> dict[int, float]:
        return {k: sum(self.sae_accuracy[t][k] for t in self.tasks) / len(self.tasks) for k in self.ks}

    def mean_llm_accuracy(self) -> float:
        return sum(self.llm_accuracy.values()) / len(self.tasks)

    def to_dict(self) -> dict:
        return {**asdict(self), "mean_accuracy": self.mean_accuracy(), "mean_llm_accuracy": self.mean_llm_accuracy()}


def sparse_probing(
    acts: Float[Tensor, "n d"],
    encode: Callable[[Tensor], Tensor],
    labels: Mapping[str, Bool[Tensor, " n"]],
    train: Bool[Tensor, " n"],
    cfg: ProbingConfig = ProbingConfig(),
) -> SparseProbingResult:
    """Per task: balanced train/test rows, the top-k latents by |difference of class means| on
    train, a logistic probe on them, its test accuracy for each k; the baseline probe reads all
    of `acts`. `encode` maps activation rows to latents (an SAE's inference encoding)."""
    sae_acc, llm_acc, n_tr, n_te = {}, {}, {}, {}
    tasks = []
    for task, y in labels.items():
        if y.shape != (len(acts),):
            raise ValueError(f"labels[{task!r}]: expected shape ({len(acts)},), got {tuple(y.shape)}")
        tr, te = balanced_split(y, train, cfg.n_per_class, cfg.seed)
        if len(tr) < 4 or len(te) < 4:
            continue  # a concept absent from one split cannot be probed
        tasks.append(task)
        with torch.no_grad():
            z_tr, z_te = encode(acts[tr]).double(), encode(acts[te]).double()
        llm_acc[task] = float(
            (fit_logistic(acts[tr], y[tr], cfg.l2, cfg.max_iter).predict(acts[te]) == y[te]).double().mean()
        )
        sae_acc[task] = {}
        for k in cfg.ks:
            idx = top_k_mean_diff(z_tr, y[tr], min(k, z_tr.shape[1]))
            probe = fit_logistic(z_tr[:, idx], y[tr], cfg.l2, cfg.max_iter)
            sae_acc[task][k] = float((probe.predict(z_te[:, idx]) == y[te]).double().mean())
        n_tr[task], n_te[task] = len(tr), len(te)
    if not tasks:
        raise ValueError("labels: no task has both classes in both splits")
    return SparseProbingResult(tasks, list(cfg.ks), sae_acc, llm_acc, n_tr, n_te)


# --- absorption-style ------------------------------------------------------------------------------


@dataclass
class LetterAbsorption:
    letter: str
    main_latents: list[int]  # the letter's k-sparse-probing latents
    f1_by_k: list[float]  # test F1 of the k-sparse probe, k = 1, 2, ...
    num_probe_true_positives: int
    num_full_absorption: int
    full_absorption_rate: float
    mean_absorption_fraction: float


@dataclass
class AbsorptionResult:
    letters: list[LetterAbsorption] = field(default_factory=list)
    caveat: str = ABSORPTION_CAVEAT

    def mean_full_absorption(self) -> float:
        return sum(r.full_absorption_rate for r in self.letters) / max(1, len(self.letters))

    def mean_absorption_fraction(self) -> float:
        return sum(r.mean_absorption_fraction for r in self.letters) / max(1, len(self.letters))

    def to_dict(self) -> dict:
        return {
            **asdict(self),
            "mean_full_absorption": self.mean_full_absorption(),
            "mean_absorption_fraction": self.mean_absorption_fraction(),
        }


def main_latents(
    z_tr: Float[Tensor, "a F"],
    y_tr: Bool[Tensor, " a"],
    z_te: Float[Tensor, "b F"],
    y_te: Bool[Tensor, " b"],
    cfg: ProbingConfig,
) -> tuple[list[int], list[float]]:
    """k-sparse probing for one concept's main latents: the top-k latents by (signed) difference
    of class means, a logistic probe on them, its test F1; k grows from 1 while F1 rises by at
    least cfg.f1_jump, up to cfg.max_main_latents (SAEBench's feature-split rule)."""
    order = top_k_mean_diff(z_tr, y_tr, min(cfg.max_main_latents, z_tr.shape[1]), signed=True)
    f1s: list[float] = []
    chosen = 1
    for k in range(1, len(order) + 1):
        idx = order[:k]
        probe = fit_logistic(z_tr[:, idx], y_tr, cfg.l2, cfg.max_iter, balanced=True)
        f1s.append(f1_score(probe.predict(z_te[:, idx]), y_te))
        if k > 1:
            if f1s[-1] - f1s[-2] < cfg.f1_jump:
                break
            chosen = k
    return order[:chosen].tolist(), f1s


def absorption(
    acts: Float[Tensor, "n d"],
    encode: Callable[[Tensor], Tensor],
    W_dec: Float[Tensor, "F d"],
    first_letter: Int[Tensor, " n"],
    train: Bool[Tensor, " n"],
    cfg: ProbingConfig = ProbingConfig(),
    letters: str = LETTERS,
) -> AbsorptionResult:
    """Absorption-style scores per letter, SAEBench's first-letter rule (Chanin et al. 2024).

    Rows are word-end positions; `first_letter` is the word's first letter (0..25). For each
    letter L with at least cfg.min_positives test positives:
    1. a logistic probe for "starts with L" on the raw activations (train rows, class-balanced);
       p̂ is its unit weight vector;
    2. the main latents: `main_latents` on the SAE latents (train rows fit, test rows score F1);
    3. on the test rows that start with L and that the probe gets right (probe true positives),
       a row is *fully absorbed* when every main latent is 0, the latent with the largest probe
       projection a_i·cos(W_dec,i, p̂) has cos ≥ cfg.probe_cos_threshold (0.025), the probe
       projection x·p̂ is positive, and that latent's projection is at least
       cfg.projection_threshold (0.4, SAEBench's reading of "most") of x·p̂;
    4. full_absorption_rate = fully absorbed / probe true positives (SAEBench's
       `full_absorption_rate`); mean_absorption_fraction is SAEBench's absorption fraction (the
       share of x·p̂ carried by up to 3 non-main latents with cos ≥ 0.1, not by the main ones).
    Source: SAEBench sae_bench/evals/absorption (feature_absorption_calculator.py, eval_output.py).
    """
    if W_dec.shape[1] != acts.shape[1]:
        raise ValueError(f"W_dec: expected rows of width {acts.shape[1]}, got {tuple(W_dec.shape)}")
    if not letters or any(c not in LETTERS for c in letters):
        raise ValueError(f"letters={letters!r}: expected lowercase ASCII letters")
    if first_letter.shape != (len(acts),) or train.shape != (len(acts),):
        raise ValueError(
            f"first_letter, train: expected shape ({len(acts)},), got {tuple(first_letter.shape)} "
            f"and {tuple(train.shape)}"
        )
    result = AbsorptionResult()
    with torch.no_grad():
        z = encode(acts).double()
    x = acts.detach().double()
    W = W_dec.detach().double()
    for letter in letters:
        y = first_letter == LETTERS.index(letter)
        if int((y & ~train).sum()) < cfg.min_positives or int((y & train).sum()) < 2:
            continue
        probe = fit_logistic(x[train], y[train], cfg.l2, cfg.max_iter, balanced=True)
        p = probe.w / probe.w.norm()
        main, f1s = main_latents(z[train], y[train], z[~train], y[~train], cfg)
        te = ~train
        tp = te & y & probe.predict(x)
        cos = (W @ p) / W.norm(dim=1).clamp_min(1e-12)
        zt, proj_x = z[tp], x[tp] @ p
        lat_proj = zt * cos  # [m, F] each latent's share of the probe projection
        main_off = (zt[:, main] < 1e-8).all(1)
        top = lat_proj.max(1)
        top_cos = cos[top.indices]
        full = (
            main_off
            & (top_cos >= cfg.probe_cos_threshold)
            & (proj_x > 0)
            & (top.values >= cfg.projection_threshold * proj_x)
        )
        n_tp = int(tp.sum())
        result.letters.append(
            LetterAbsorption(
                letter,
                main,
                f1s,
                n_tp,
                int(full.sum()),
                int(full.sum()) / max(1, n_tp),
                _absorption_fraction(lat_proj, proj_x, main, cos, cfg),
            )
        )
    return result


def _absorption_fraction(lat_proj: Tensor, proj_x: Tensor, main: list[int], cos: Tensor, cfg: ProbingConfig) -> float:
    """SAEBench's absorption fraction, averaged over the probe true positives."""
    if len(proj_x) == 0:
        return 0.0
    main_proj = lat_proj[:, main].sum(1)
    cand = lat_proj.clone()
    cand[:, main] = 0.0
    cand[:, cos < cfg.fraction_cos_threshold] = 0.0
    cand = cand.clamp_min(0.0)
    absorbers = cand.topk(min(cfg.fraction_max_absorbers, cand.shape[1]), dim=1).values.sum(1)
    frac = torch.zeros_like(proj_x)
    active = (main_proj < proj_x) & (absorbers >= cfg.projection_threshold * proj_x)
    full = active & (main_proj <= 0)
    partial = active & ~full
    absorbed = torch.minimum(absorbers, proj_x - main_proj)
    frac[full] = 1.0
    frac[partial] = (absorbed / (absorbed + main_proj))[partial].clamp(0.0, 1.0)
    return float(frac.mean())


# --- on a model's activations ---------------------------------------------------------------------


@dataclass
class SAEEvals:
    sparse_probing: SparseProbingResult
    absorption: AbsorptionResult

    def to_dict(self) -> dict:
        return {"sparse_probing": self.sparse_probing.to_dict(), "absorption": self.absorption.to_dict()}


@torch.no_grad()
def hook_activations(
    model: HookedTransformer, hook_name: str, tokens: Int[Tensor, "n seq"], batch_size: int = 32
) -> Float[Tensor, "n seq d"]:
    """One row per token (`activations.token_rows`: a hook_z's heads side by side, as its SAE reads them)."""
    validate_hook_name(model, hook_name)
    out = []
    for chunk in tokens.split(batch_size):
        _, cache = model.run_with_cache(chunk, names_filter=hook_name)
        out.append(token_rows(cache[hook_name], hook_name).float())
    return torch.cat(out)


def evaluate_usefulness(
    model: HookedTransformer,
    sae: SparseAutoencoder,
    hook_name: str,
    tokens: Int[Tensor, "n seq"],
    cfg: ProbingConfig = ProbingConfig(),
    bos_token_id: int = 256,
) -> SAEEvals:
    """Sparse probing on `byte_concepts` and absorption-style scores on `word_ends`, for one SAE
    at `hook_name` of a byte-level model, on byte windows `tokens` (even windows train, odd test)."""
    acts = hook_activations(model, hook_name, tokens)
    seq_train = (torch.arange(len(tokens)) % 2 == 0)[:, None].expand(tokens.shape)
    valid = torch.ones(tokens.shape, dtype=torch.bool)
    valid[:, 0] = False
    flat = acts[valid]
    train = seq_train[valid]
    labels = {name: y[valid] for name, y in byte_concepts(tokens, bos_token_id).items()}

    def encode(x):
        return sae.encode(x.to(sae.W_enc.dtype)).float()

    probing = sparse_probing(flat, encode, labels, train, cfg)
    ends, first = word_ends(tokens, bos_token_id)
    absorb = absorption(acts[ends], encode, sae.W_dec.detach(), first[ends], seq_train[ends], cfg)
    return SAEEvals(probing, absorb)
