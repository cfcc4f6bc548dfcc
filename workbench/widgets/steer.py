"""SteerPanel: steer one SAE feature by a strength slider on your prompt and see the next-token
bars before and after and the generations side by side; with a steer run's result, its concept
gain against KL curves too. The same builder as the viewer's API (`viewer.steer.steer_response`)
and the same figures (`workbench.figures.steer`)."""

from __future__ import annotations

import html

import ipywidgets as W

from ..figures import steer as stf
from ..figures.sae import empty_figure
from ..steer.data import NextTokenChange
from .base import FigurePane, _Dashboard


class SteerPanel(_Dashboard):
    """`model`, `sae`, `tokenizer`: what is steered; `result`: a SteerRunResult whose curves are
    shown below (optional); `scores`: the run's OutputScores (`steer.directions.load_output_scores`
    of its output_scores.safetensors), whose value and rank for the chosen feature are shown."""

    def __init__(
        self, model, sae, tokenizer, feature: int = 0, strength: float = 8.0, result=None, prompt: str = "", scores=None
    ):
        self.model, self.sae, self.tok, self.result, self.scores = model, sae, tokenizer, result, scores
        if scores is not None and len(scores.score) != sae.cfg.d_sae:
            raise ValueError(f"scores: {len(scores.score)} output scores for an SAE of {sae.cfg.d_sae} latents")
        n = sae.cfg.d_sae
        self.feature = W.BoundedIntText(value=feature, min=0, max=n - 1, description="feature")
        self.strength = W.FloatSlider(value=strength, min=-40.0, max=40.0, step=0.5, description="strength c")
        self.prompt = W.Textarea(value=prompt or "def f(x):\n    return ", layout=W.Layout(width="100%"))
        self.button = W.Button(description="steer")
        self.error = W.HTML()
        self.score = W.HTML()
        self.generations = W.HTML()
        self.panes = {"next": FigurePane(empty_figure("choose a feature and a strength, then steer"))}
        children = [W.HBox([self.feature, self.strength, self.button]), self.score, self.prompt, self.error]
        children += [self.panes["next"].widget, self.generations]
        if result is not None:
            for i, c in enumerate(result.concepts):
                self.panes[f"curve-{i}"] = FigurePane(stf.gain_kl_figure(c))
                children.append(self.panes[f"curve-{i}"].widget)
        self.button.on_click(lambda _: self.run())
        self.feature.observe(lambda _: self._show_score(), names="value")
        self._show_score()
        self.last: dict | None = None
        self.widget = W.VBox(children)

    def _show_score(self) -> None:
        if self.scores is None:
            return
        s = self.scores.score
        f = int(self.feature.value)
        rank = int((s > s[f]).sum()) + 1  # 1: the highest score of the dictionary
        self.score.value = f"output score of feature {f}: {float(s[f]):.3f} nats (rank {rank} of {len(s)})"

    def run(self) -> dict | None:
        """Steer with the current controls; returns the response (None with the error shown)."""
        from ..viewer.steer import steer_response
        from ..viewer.store import ApiError

        body = {"feature": int(self.feature.value), "strength": float(self.strength.value), "prompt": self.prompt.value}
        try:
            d = steer_response(self.model, self.sae, self.tok, body)
        except ApiError as e:
            self.error.value = f'<p class="error">{html.escape(str(e))}</p>'
            return None
        self.error.value = ""
        change = NextTokenChange(**d["next_token"])
        self.panes["next"].set(stf.next_token_bars(change, self.tok))
        self.generations.value = d["html"]
        self.last = d
        return d
