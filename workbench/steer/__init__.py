"""Interventions at a TransformerLens hook and their measured effect (issue 31).

- `intervene`: the typed `Intervention` and the hook functions built from it (additive steer,
  orthogonal rescale, projection cap, SAE-latent clamp, zero and mean ablation).
- `effects`: next-token distributions before and after, KL on unrelated text, concept gain,
  generated text side by side, and an ablation's loss change where the latent fires and where not.
- `directions`: the difference-of-means baseline and every latent's output score (Arad et al. 2025).
- `curves`: concept gain against KL over a strength grid, and the gain at matched KL.
- `data`: the light result types (no torch), read by the run kind and the viewer.

The package root imports nothing, so reading a steer run's results never imports TransformerLens.
"""
