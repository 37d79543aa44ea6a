"""v-prediction: Salimans & Ho 2022, "Progressive Distillation for Fast Sampling of Diffusion Models",
arXiv:2202.00512, Sec. 4 and App. D.

The process is DDPM's (ddpm.py): the same forward process q(x_t | x_0) (Ho et al. eq. 4), the same
samplers. Only what the network predicts changes. With a_t = sqrt(alpha_bar_t), s_t = sqrt(1 - alpha_bar_t),
so that x_t = a_t x_0 + s_t eps and a_t^2 + s_t^2 = 1:

  target          v = a_t eps - s_t x_0                   (Salimans & Ho Sec. 4, "v-parameterisation")
  back to eps     eps = s_t x_t + a_t v                   (as a_t^2 + s_t^2 = 1)
  back to x_0     x_0 = a_t x_t - s_t v

Why: predicting eps, the estimate x0_hat = (x_t - s_t eps_hat) / a_t divides by a_t, which is about 0.006 at
t = T for the linear schedule, so a small error in eps_hat becomes a large one in x0_hat where the noise is
strong; v stays well scaled at every t. The loss ||v - v_hat||^2 equals (1 + SNR_t) ||x_0 - x0_hat||^2 with
SNR_t = a_t^2 / s_t^2, the "SNR+1" weighting of the paper's Sec. 4.
"""
from torch import Tensor

from ddpm import DDPM, extract


class VPredictionDDPM(DDPM):
    """DDPM whose network net(x_t, t) outputs v. With --cond mask its network also sees the mask, concatenated
    to x_t as for COND (no guidance)."""
    conditions = ("mask",)

    def target(self, x0: Tensor, t: Tensor, eps: Tensor) -> Tensor:
        """Salimans & Ho Sec. 4: v = sqrt(alpha_bar_t) eps - sqrt(1 - alpha_bar_t) x_0."""
        alpha_bar = extract(self.alpha_bar, t, x0)
        return alpha_bar.sqrt() * eps - (1 - alpha_bar).sqrt() * x0

    def predict_eps(self, x_t: Tensor, t: Tensor, **cond) -> Tensor:
        """eps_hat = sqrt(1 - alpha_bar_t) x_t + sqrt(alpha_bar_t) v_hat, so every DDPM sampler draws from v."""
        alpha_bar = extract(self.alpha_bar, t, x_t)
        return (1 - alpha_bar).sqrt() * x_t + alpha_bar.sqrt() * self.net(x_t, t, **cond)

    def min_snr_weight(self, t: Tensor) -> Tensor:
        """Min-SNR-gamma for a v loss (Hang et al. 2023, Sec. 3.4): w_t = min(SNR_t, gamma) / (SNR_t + 1), since
        ||v - v_hat||^2 is (SNR_t + 1) ||x_0 - x0_hat||^2 and min-SNR asks for min(SNR_t, gamma) ||x_0 - x0_hat||^2."""
        snr = self.alpha_bar[t] / (1 - self.alpha_bar[t])
        return snr.clamp(max=self.min_snr_gamma) / (snr + 1)
