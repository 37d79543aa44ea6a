"""main.py's training step, as bench.py and peers.py time it: the body of main.py's loop for one batch
(Algorithm 1 with Adam, the warm-up learning rate and the EMA), without the run's plumbing."""
import torch


def train_step(model, optimizer, ema, x0: torch.Tensor, step: int, lr: float, warmup: int, *,
               precision: str = "fp32", **cond) -> torch.Tensor:
    """One step (step = 1, 2, ...) on the batch x0 in `precision`; returns the loss, not read back."""
    with torch.autocast(x0.device.type, dtype=torch.bfloat16, enabled=precision == "bf16"):
        loss = model.loss(x0, **cond)                                     # Alg. 1 lines 3-5
    for group in optimizer.param_groups:
        group["lr"] = lr * min(1.0, step / warmup) if warmup else lr     # main.warmup_lr
    optimizer.zero_grad(set_to_none=True)
    loss.backward()
    optimizer.step()
    if ema is not None:
        ema.update(model)
    return loss.detach()
