"""Probability distributions genkit needs beyond ``torch.distributions``: the von Mises-Fisher family."""

from genkit.distributions.vmf import HypersphericalUniform, VonMisesFisher, log_bessel_iv, mean_resultant_length

__all__ = ["HypersphericalUniform", "VonMisesFisher", "log_bessel_iv", "mean_resultant_length"]
