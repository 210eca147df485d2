"""Multi-process DiT: the transformer blocks of each model call shared by several processes (one per GPU, or CPU
processes with gloo) through torch.distributed.

Rank 0 is the process that owns the model (ComfyUI); the others are workers started by `group.WorkerGroup`, each
loading the same checkpoint itself (`loading.LoadSpec`). Per call rank 0 sends the block inputs, every rank runs
its share (`plan.py`: Ulysses token shards with an all-to-all over heads around self-attention (`ulysses.py`),
and/or batch rows, i.e. the conditional and unconditional passes, on different ranks), and rank 0 gathers the
result (`blocks.py`). Patches of rank 0's weights reach the workers as the effective tensors (`blocks.PatchState`).
"""
