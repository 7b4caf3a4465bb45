"""A numpy flow-matching sampler that drives an exported recurrent step: the denoising loop with no
PyTorch in it (numpy arrays in, the runtime's graphs for the model).

Two schedules, each reproducing its diffusers scheduler as Wan (and the toy world) configure it:
``"euler"`` (``FlowMatchEulerDiscreteScheduler(shift=s)``) and ``"unipc"``
(``UniPCMultistepScheduler(prediction_type="flow_prediction", use_flow_sigmas=True, flow_shift=s)``:
UniPC-2 with the B(h) = e^h − 1 variant, x0 prediction, a first-order last step and zero final sigma).
Like :func:`rehyat.generation.sampler.generate_latents`, every denoising step sweeps the whole latent
video chunk by chunk with fresh states (docs/method.md §8), and classifier-free guidance runs the conditional
and unconditional branches as the two batch elements of one exported call (export with ``batch=2``).
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np

TRAIN_TIMESTEPS = 1000
SCHEDULES = ("unipc", "euler")


def _shift(sigmas: np.ndarray, shift: float) -> np.ndarray:
    return shift * sigmas / (1 + (shift - 1) * sigmas)


def euler_schedule(steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps [steps], sigmas [steps + 1]) of diffusers' ``FlowMatchEulerDiscreteScheduler``."""
    sigma_min = _shift(np.float64(1.0 / TRAIN_TIMESTEPS), shift)
    sigmas = np.linspace(1.0, sigma_min, steps)
    sigmas = _shift(sigmas, shift).astype(np.float32)
    timesteps = (sigmas * TRAIN_TIMESTEPS).astype(np.float32)
    return timesteps, np.concatenate([sigmas, [0.0]]).astype(np.float32)


def unipc_schedule(steps: int, shift: float) -> tuple[np.ndarray, np.ndarray]:
    """(timesteps [steps] as the integers the model sees, sigmas [steps + 1]) of diffusers'
    ``UniPCMultistepScheduler`` with flow sigmas."""
    sigmas = _shift(np.linspace(1.0, 1.0 / TRAIN_TIMESTEPS, steps + 1)[:-1], shift)
    if abs(sigmas[0] - 1) < 1e-6:
        sigmas[0] -= 1e-6
    timesteps = (sigmas * TRAIN_TIMESTEPS).astype(np.int64).astype(np.float32)
    return timesteps, np.concatenate([sigmas, [0.0]]).astype(np.float32)


class _UniPC:
    """The multistep UniPC-2 (bh2) update on numpy arrays, step by step as diffusers orders it."""

    def __init__(self, sigmas: np.ndarray) -> None:
        self.sigmas = sigmas.astype(np.float32)
        self.outputs: list[np.ndarray] = []  # converted model outputs (x0 predictions), newest last
        self.last_sample: np.ndarray | None = None
        self.order = 0

    def _lambda(self, index: int) -> np.float32:
        sigma = self.sigmas[index]
        with np.errstate(divide="ignore"):
            return np.log(np.float32(1) - sigma) - np.log(sigma)

    @staticmethod
    def _coefficients(h: np.float32) -> tuple[np.float32, np.float32, np.float32]:
        """hh = −h (x0 prediction), h·φ1 = e^hh − 1 and B(h) = e^hh − 1 (the "bh2" variant)."""
        hh = -h
        return hh, np.expm1(hh), np.expm1(hh)

    def step(self, index: int, model_output: np.ndarray, sample: np.ndarray) -> np.ndarray:
        sigmas, steps = self.sigmas, len(self.sigmas) - 1
        x0 = sample - sigmas[index] * model_output
        if index > 0 and self.last_sample is not None:  # corrector UniC with the previous order
            sample = self._correct(index, x0, sample)
        self.outputs = [*self.outputs[-1:], x0]
        self.order = min(min(2, steps - index), self.order + 1)
        self.last_sample = sample
        return self._predict(index, sample)

    def _predict(self, index: int, x: np.ndarray) -> np.ndarray:
        sigma_t, sigma_s0 = self.sigmas[index + 1], self.sigmas[index]
        alpha_t = np.float32(1) - sigma_t
        lambda_s0 = self._lambda(index)
        h = self._lambda(index + 1) - lambda_s0
        _, h_phi_1, b_h = self._coefficients(h)
        m0 = self.outputs[-1]
        x_t = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        if self.order == 2:
            rk = (self._lambda(index - 1) - lambda_s0) / h
            d1 = (self.outputs[-2] - m0) / rk
            x_t = x_t - alpha_t * b_h * (np.float32(0.5) * d1)
        return x_t.astype(np.float32)

    def _correct(self, index: int, model_t: np.ndarray, x_t: np.ndarray) -> np.ndarray:
        sigma_t, sigma_s0 = self.sigmas[index], self.sigmas[index - 1]
        alpha_t = np.float32(1) - sigma_t
        lambda_s0 = self._lambda(index - 1)
        h = self._lambda(index) - lambda_s0
        hh, h_phi_1, b_h = self._coefficients(h)
        m0, x = self.outputs[-1], self.last_sample
        h_phi_k = h_phi_1 / hh - 1
        if self.order == 1:
            rhos_c = np.array([0.5], dtype=np.float32)
            corr = 0.0
        else:
            rk = (self._lambda(index - 2) - lambda_s0) / h
            b = [h_phi_k / b_h, (h_phi_k / hh - np.float32(0.5)) * 2 / b_h]
            matrix = np.array([[1.0, 1.0], [rk, 1.0]], dtype=np.float32)
            rhos_c = np.linalg.solve(matrix, np.array(b, dtype=np.float32)).astype(np.float32)
            corr = rhos_c[0] * ((self.outputs[-2] - m0) / rk)
        x_corr = sigma_t / sigma_s0 * x - alpha_t * h_phi_1 * m0
        return (x_corr - alpha_t * b_h * (corr + rhos_c[-1] * (model_t - m0))).astype(np.float32)


def sample_latents(
    model: Callable[[np.ndarray, np.ndarray, np.ndarray], np.ndarray],
    noise: np.ndarray,
    context: np.ndarray,
    negative_context: np.ndarray | None = None,
    *,
    steps: int = 20,
    guidance_scale: float = 4.0,
    shift: float = 3.0,
    schedule: str = "unipc",
) -> np.ndarray:
    """Denoise ``noise`` [B, C, F, H, W] to clean latents with ``model(latents, timestep, context)``
    (e.g. ``ExportedStep(folder).forward``), following ``generate_latents``: float32 latents, one
    model call per step, CFG when ``guidance_scale > 1`` with the branches stacked on the batch
    ([cond ‖ uncond], so the model's batch is 2·B)."""
    if schedule not in SCHEDULES:
        raise ValueError(f"schedule must be one of {SCHEDULES}, got {schedule!r}")
    if steps < 1:
        raise ValueError(f"steps must be >= 1, got {steps}")
    guided = guidance_scale > 1.0
    if guided and negative_context is None:
        raise ValueError("guidance_scale > 1 needs negative_context")
    latents = np.asarray(noise, dtype=np.float32)
    batch = latents.shape[0]
    context = np.asarray(context, dtype=np.float32)
    if guided:
        context = np.concatenate([context, np.asarray(negative_context, dtype=np.float32)])
    timesteps, sigmas = (unipc_schedule if schedule == "unipc" else euler_schedule)(steps, shift)
    solver = _UniPC(sigmas) if schedule == "unipc" else None
    for index, t in enumerate(timesteps):
        inputs = np.concatenate([latents, latents]) if guided else latents
        prediction = model(inputs, np.full(len(inputs), t, dtype=np.float32), context)
        if guided:
            cond, uncond = prediction[:batch], prediction[batch:]
            prediction = uncond + np.float32(guidance_scale) * (cond - uncond)
        prediction = prediction.astype(np.float32)
        if solver is None:
            latents = (latents + (sigmas[index + 1] - sigmas[index]) * prediction).astype(np.float32)
        else:
            latents = solver.step(index, prediction, latents)
    return latents
