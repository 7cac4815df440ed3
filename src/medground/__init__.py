"""medground: zero-shot phrase grounding in chest X-rays from a frozen latent diffusion model's
cross-attention during DDIM inversion (Vilouras et al., arXiv 2404.12920)."""

from medground.config import GroundingConfig, preset
from medground.grounder import Grounder, GroundingResult
from medground.models.ldm import LatentDiffusionModel, load_model

__all__ = ["GroundingConfig", "Grounder", "GroundingResult", "LatentDiffusionModel", "load_model", "preset"]
__version__ = "0.1.0"
