"""Data-parallel training over processes started by torchrun, PyTorch's launcher:
`torchrun --nproc_per_node N main.py DDPM ...`. One process is one rank; without torchrun there is one
(errors.world reads which, without torch).

Every rank holds the same data and draws the same random numbers (seed, shuffle, augmentation, and
Algorithm 1's timesteps and noise for the whole batch), exactly as one process would. It runs the
network on its own rows of the batch only (rows()) and DistributedDataParallel (Li et al. 2020,
arXiv:2006.15704) averages the gradients, so every rank takes the same Adam step as one process
with the whole batch would, and loss.csv logs the same global-batch losses. Rank 0 writes the run
folder; the others only train. gloo on CPUs, NCCL on GPUs.
"""
import datetime
import os

import torch
import torch.distributed as dist
from torch.nn.parallel import DistributedDataParallel

from plumbing.errors import DataError, cause, world

TIMEOUT = datetime.timedelta(hours=1)  # the other ranks wait this long while rank 0 samples and saves an epoch
RENDEZVOUS = datetime.timedelta(minutes=2)  # and this long for each other at the start


def start(device: torch.device) -> torch.device:
    """Join the other ranks (torchrun's rendezvous) and return this rank's device: GPU LOCAL_RANK on CUDA."""
    if device.type == "cuda":
        device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0)))
        torch.cuda.set_device(device)
    rank, size = world()
    host, port = os.environ.get("MASTER_ADDR", "127.0.0.1"), os.environ.get("MASTER_PORT", "29500")
    if not port.isdigit() or not 0 < int(port) < 65536:
        raise DataError(f"MASTER_PORT={port} is not a port number (1..65535): start main.py with torchrun")
    hosting = rank == 0 and os.environ.get("TORCHELASTIC_USE_AGENT_STORE") != "True"  # torchrun hosts its own
    again = (f"start all {size} processes together (torchrun --nproc_per_node {size} main.py ...), or unset RANK "
             "and WORLD_SIZE to train in one process")
    store = None
    try:  # each rank says it has come; all wait for all, RENDEZVOUS at most
        store = dist.TCPStore(host, int(port), size, hosting, timeout=RENDEZVOUS, wait_for_workers=False)
        store.set(f"came/{rank}", "1")
        store.wait([f"came/{r}" for r in range(size)], RENDEZVOUS)
    except (RuntimeError, ValueError) as e:  # DistStoreError (a RuntimeError): a rank never came
        missing = [r for r in range(size) if not store.check([f"came/{r}"])] if store is not None else [0]
        raise DataError(f"rank {rank} of {size} waited {RENDEZVOUS.seconds} s at {host}:{port}, and rank"
                        f"{'s' * (len(missing) > 1)} {', '.join(map(str, missing))} never came ({cause(e)}): "
                        f"{again}") from e
    dist.init_process_group("nccl" if device.type == "cuda" else "gloo", store=store, rank=rank, world_size=size,
                            timeout=TIMEOUT)
    return device


def stop(finished: bool = False) -> None:
    """Leave the process group. finished: the run ended normally on every rank, so all meet first, and no rank
    closes its connections while another still talks over them (gloo aborts a process whose peer left)."""
    if dist.is_initialized():
        if finished:
            dist.barrier()
        dist.destroy_process_group()


def rows(B: int, rank: int, size: int) -> slice | None:
    """This rank's rows of a batch of B: size nearly equal runs in rank order (None: one process, all)."""
    return None if size == 1 else slice(rank * B // size, (rank + 1) * B // size)


def wrap(net: torch.nn.Module, device: torch.device, size: int) -> torch.nn.Module:
    """The network as the ranks train it: DDP averages its gradients in backward (one process: itself)."""
    if size == 1:
        return net
    return DistributedDataParallel(net, device_ids=[device] if device.type == "cuda" else None,
                                   forward_sync_buffers=False)  # rank 0 samples alone between epochs


def unwrap(net: torch.nn.Module) -> torch.nn.Module:
    """The network inside DDP, whose state_dict the checkpoint holds."""
    return net.module if isinstance(net, DistributedDataParallel) else net


def batch_losses(shares: list, size: int) -> list:
    """The global-batch losses of these steps from each rank's shares (they add up to the batch mean),
    read back in one host sync (and one all_reduce) for all of them."""
    values = torch.stack(shares).float()
    if size > 1:
        dist.all_reduce(values)
    return values.tolist()


def from_rank0(value: str, options: tuple, device: torch.device, size: int) -> str:
    """Rank 0's value, one of options, on every rank (e.g. the precision its timed check chose)."""
    if size == 1:
        return value
    index = torch.tensor([options.index(value) if dist.get_rank() == 0 else 0], device=device)
    dist.broadcast(index, src=0)
    return options[int(index.item())]
