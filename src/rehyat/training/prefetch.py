"""Stage-2 batches read one step ahead: while a step trains, a background thread reads the next step's
micro-batches from the latent dataset (and pins them, on CUDA), so the accelerator does not wait for
the disk; from a preloaded dataset it gathers them on the device instead. The order is :class:`~rehyat.training.data.SampleOrder`'s, exactly as without prefetching;
a read that fails raises in the training loop at the step that needed it."""

from __future__ import annotations

from collections.abc import Iterator
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass

import torch
from torch import Tensor

from rehyat.training.data import LatentDataset, PreloadedDataset, SampleOrder


@dataclass
class MicroBatch:
    """One micro-batch of a rank: its dataset indices and tensors (on the host, pinned on CUDA; on the
    device already when the dataset is preloaded)."""

    indices: list[int]
    latents: Tensor
    prompt_embeds: Tensor
    conditioning: dict[str, Tensor]

    def to(self, device: torch.device) -> MicroBatch:
        """This micro-batch on ``device`` (a non-blocking copy from pinned memory), when its turn comes:
        one micro-batch on the device at a time, however many a step accumulates."""
        move = lambda t: t.to(device, non_blocking=True)  # noqa: E731
        conditioning = {name: move(t) for name, t in self.conditioning.items()}
        return MicroBatch(self.indices, move(self.latents), move(self.prompt_embeds), conditioning)


class StepBatches:
    """The micro-batches of steps ``start``, ``start + 1``, … of one rank, each step's read in a background
    thread while the previous step trains; each goes to the device with :meth:`MicroBatch.to`. Iterate it
    once per step; :meth:`close` (or ``with``) stops the thread."""

    def __init__(
        self,
        dataset: LatentDataset | PreloadedDataset,
        order: SampleOrder,
        *,
        rank: int,
        accumulation: int,
        device: torch.device,
        start: int,
        stop: int,
    ) -> None:
        self.dataset, self.order = dataset, order
        self.rank, self.accumulation, self.device = rank, accumulation, torch.device(device)
        self._steps = iter(range(start, stop))
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="rehyat-batches")
        self._pending: Future | None = None
        self._submit()

    def _submit(self) -> None:
        step = next(self._steps, None)
        self._pending = None if step is None else self._pool.submit(self._read, step)

    def _read(self, step: int) -> list[MicroBatch]:
        pin = self.device.type == "cuda"
        if pin and self.device.index is not None:
            torch.cuda.set_device(self.device)  # this thread's context: the rank's GPU, not GPU 0
        batches = []
        for micro in range(self.accumulation):
            indices = self.order.indices(step, micro, self.rank)
            latents, prompt_embeds = self.dataset.batch(indices)
            conditioning = self.dataset.conditioning(indices)
            if pin and latents.device.type == "cpu":  # a preloaded dataset's are on the device already
                latents, prompt_embeds = latents.pin_memory(), prompt_embeds.pin_memory()
                conditioning = {name: t.pin_memory() for name, t in conditioning.items()}
            batches.append(MicroBatch(indices, latents, prompt_embeds, conditioning))
        return batches

    def __iter__(self) -> Iterator[list[MicroBatch]]:
        return self

    def __next__(self) -> list[MicroBatch]:
        if self._pending is None:
            raise StopIteration
        batches = self._pending.result()
        self._submit()
        return batches

    def close(self) -> None:
        if self._pending is not None:
            self._pending.cancel()
        self._pool.shutdown(wait=True, cancel_futures=True)

    def __enter__(self) -> StepBatches:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()
