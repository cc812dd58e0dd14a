"""Where a sample stands on the noise schedule, and the clean image it predicts.

Every SD sampler calls the UNet on a variance-preserving sample x = sqrt(a) x0 + sqrt(1 - a) eps, a the
schedule's alphas_cumprod at the step (the Euler family scales its own sigma-space sample to that before
the call). With the UNet's output (eps, or v for v-prediction models) x0 and eps follow. SAG degrades the
predicted x0; the denoising strip and live previews show it.
"""

from __future__ import annotations

import torch


def alpha_bar(scheduler, timestep, dtype, device) -> torch.Tensor:
    """alphas_cumprod at the step being taken: from the sampler's own sigma where it keeps one and the
    timestep is fractional (the Euler family between the schedule's integer steps), else at the integer
    timestep the UNet is called with."""
    step = getattr(scheduler, "step_index", None)
    t = float(timestep.flatten()[0]) if torch.is_tensor(timestep) else float(timestep)
    if step is not None and getattr(scheduler, "sigmas", None) is not None and t != round(t):
        sigma = float(scheduler.sigmas[step])
        return torch.tensor(1.0 / (1.0 + sigma * sigma), dtype=dtype, device=device)
    return scheduler.alphas_cumprod[int(round(t))].to(device, dtype)


def clean_and_noise(sample: torch.Tensor, output: torch.Tensor, alpha: torch.Tensor,
                    prediction_type: str) -> tuple[torch.Tensor, torch.Tensor]:
    """(x0, eps) from a variance-preserving sample and the UNet's output at noise level `alpha`."""
    if prediction_type == "v_prediction":
        return alpha.sqrt() * sample - (1 - alpha).sqrt() * output, alpha.sqrt() * output + (1 - alpha).sqrt() * sample
    return (sample - (1 - alpha).sqrt() * output) / alpha.sqrt(), output
