"""Output scores of a transcoder's latents (steer.directions.output_scores on its decoder rows).

A transcoder writes at blocks.L.hook_mlp_out with free-norm rows; its latents are scored like an
SAE's at blocks.L.hook_resid_post (the block adds the MLP's output last), each row scaled to unit
norm. Kept apart from sae.transcoder_eval so that the evaluation's imports stay free of steer.
"""

from __future__ import annotations

from types import SimpleNamespace

from jaxtyping import Int
from torch import Tensor

from ..sae.model import SparseAutoencoder
from ..sae.transcoder_eval import MLP_OUT
from .directions import hook_rows, output_scores


def output_score_skip(model, tc: SparseAutoencoder) -> str | None:
    """Why `transcoder_output_scores` cannot score `tc` (the evaluation's skipped stage), or None."""
    if MLP_OUT.fullmatch(tc.cfg.target_hook) is None:
        return f"output scores push at blocks.L.hook_mlp_out; this transcoder writes at {tc.cfg.target_hook!r}"
    if getattr(model.cfg, "parallel_attn_mlp", False):
        return "a parallel attention/MLP block: the MLP's output is not the last term of hook_resid_post"
    if tc.cfg.d_target != model.cfg.d_model:
        return f"the decoder's rows are {tc.cfg.d_target} wide, not d_model={model.cfg.d_model}"
    return None


def transcoder_output_scores(model, tc: SparseAutoencoder, prompts: Int[Tensor, "P T"], **kwargs):
    """`steer.directions.output_scores` of every latent of `tc`: its decoder row, scaled to unit
    norm (a transcoder's rows are free), pushed at blocks.L.hook_resid_post (= pushed at
    hook_mlp_out: the block adds the MLP's output last), by default at the mean norm of the MLP's
    output rows on `prompts` after BOS. kwargs: output_scores' (strength, k, chunk, progress)."""
    if (why := output_score_skip(model, tc)) is not None:
        raise ValueError(f"transcoder: {why}")
    layer = int(MLP_OUT.fullmatch(tc.cfg.target_hook).group(1))
    if kwargs.get("strength") is None:
        kwargs["strength"] = float(hook_rows(model, tc.cfg.target_hook, prompts)[:, 1:].norm(dim=-1).mean())
    W = tc.W_dec.detach()
    unit = W / W.norm(dim=1, keepdim=True).clamp_min(1e-12)
    at_resid = SimpleNamespace(cfg=SimpleNamespace(hook_name=f"blocks.{layer}.hook_resid_post"), W_dec=unit)
    return output_scores(model, at_resid, prompts, **kwargs)
