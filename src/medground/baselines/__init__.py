"""Methods that produce a heatmap per sample without a diffusion model (position priors, BioViL)."""
