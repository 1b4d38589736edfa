"""Step time from FLOPs, collectives, offload traffic and the optimizer step: small pure formulas.

Each returns seconds (or bytes moved per GPU) for one micro-step or one optimizer step; the
composition is ``planner.estimate.timing``. Coefficients (efficiencies, overlap, CPU Adam rate) are
named in ``data/calibration/*.json`` and passed in.
"""

from __future__ import annotations


def compute_efficiency(tokens_per_micro_step: int, efficiency_max: float, tokens_half: float) -> float:
    """Achieved fraction of the GPU's dense peak on the step's matmuls.

    Saturates with the tokens a GPU processes per micro-step: small GEMMs leave tensor cores
    idle (M of each projection's GEMM is the token count). ``efficiency_max`` is the large-GEMM
    plateau, ``tokens_half`` the token count at which half of it is reached.
    """
    t = max(1, tokens_per_micro_step)
    return efficiency_max * t / (t + tokens_half)


def ring_bytes_per_gpu(buffer_bytes: int, world: int, collective: str) -> int:
    """Bytes each GPU sends (= receives) in a ring collective over ``buffer_bytes``.

    NCCL's bus-bandwidth model (nccl-tests doc/PERFORMANCE.md): all-gather and reduce-scatter
    move (n-1)/n of the buffer per GPU, all-reduce twice that. One GPU moves nothing.
    """
    if world <= 1:
        return 0
    factor = 2 if collective == "all_reduce" else 1
    return factor * buffer_bytes * (world - 1) // world


def zero_comm_bytes_per_gpu(zero_stage: int, world: int, param_bytes: int, trainable_param_bytes: int, grad_bytes: int) -> tuple[int, int]:
    """(per micro-step, per optimizer step) collective bytes per GPU for data parallelism + ZeRO.

    ZeRO paper (Rajbhandari et al. 2020, §7): plain data parallelism all-reduces the gradients
    (2 (n-1)/n G) once per optimizer step (DDP's ``no_sync`` / DeepSpeed reduce at the
    accumulation boundary); stage 1 reduce-scatters them instead and all-gathers the updated
    16-bit parameters, both once per step (2 (n-1)/n in all, like data parallelism); stage 2
    reduce-scatters every micro-step into the gradient partitions and all-gathers the updated
    parameters once per step; stage 3 all-gathers the parameters in forward and again in
    backward (the backward gather also serves the checkpointed re-run) and reduce-scatters the
    gradients every micro-step: 2 (n-1)/n W + (n-1)/n G, 1.5x data parallelism.
    ``param_bytes`` is every parameter in its 16-bit (gathered) form, frozen ones included
    (ZeRO-3 gathers a LoRA model's whole base); stages 1-2 partition only what trains, so they
    all-gather ``trainable_param_bytes``.
    """
    ag_trainable = ring_bytes_per_gpu(trainable_param_bytes, world, "all_gather")
    rs_grads = ring_bytes_per_gpu(grad_bytes, world, "reduce_scatter")
    if zero_stage == 3:
        return 2 * ring_bytes_per_gpu(param_bytes, world, "all_gather") + rs_grads, 0
    if zero_stage == 2:
        return rs_grads, ag_trainable
    if zero_stage == 1:
        return 0, rs_grads + ag_trainable
    return 0, ring_bytes_per_gpu(grad_bytes, world, "all_reduce")


def exposed_seconds(busy_seconds: float, hideable_behind_seconds: float, overlap: float) -> float:
    """What of ``busy_seconds`` is not hidden behind ``overlap`` x the other stream's time."""
    return max(0.0, busy_seconds - overlap * hideable_behind_seconds)


def optimizer_bytes_per_element(optimizer: str, param: int, grad: int, master: int, state: int) -> int:
    """HBM bytes one optimizer step touches per trainable element (memory-bound kernels).

    Every optimizer reads the gradient and reads and writes its own copy of the parameter (the
    fp32 master when there is one, which then also writes the 16-bit parameter). AdamW reads
    and writes two moments of ``state`` bytes each; 8-bit AdamW two uint8 moments (the
    blockwise absmax is negligible); SGD without momentum keeps none.
    """
    own = master or param
    moments = {"adamw": 4 * state, "adamw8bit": 4}.get(optimizer, 0)
    return grad + 2 * own + moments + (param if master else 0)


def lora_elementwise_bytes(tokens: int, shapes: list[tuple[int, int]], act: int, adapter: int, dropout: bool, recompute: bool) -> int:
    """HBM traffic of peft's LoRA branch outside its (tiny, memory-bound) matmuls, per micro-step.

    For each adapted linear (in -> out) and token, peft's ``lora.Linear.forward`` casts the input
    to the adapter dtype, applies its own dropout (writing the output and a bool mask), feeds
    ``lora_A`` (which reads that copy again, and once more for its weight gradient) and adds the
    scaled ``lora_B`` output to the frozen result; backward writes the gradient through the
    branch, runs dropout's backward and adds it into the frozen path's input gradient. With
    checkpointing the forward part runs twice. Bytes are per element of X (in) or Y (out).
    """
    mask = 1 if dropout else 0
    fwd_in = act + adapter + mask + adapter  # read X, write cast/dropout copy (+ mask), lora_A reads it
    fwd_out = 3 * act  # read frozen result and scaled B output, write the sum
    bwd_in = 2 * adapter + (mask + adapter + act if dropout else 0) + 2 * act  # dA reads X', dX' written, dropout bwd, add into dX
    bwd_out = act  # dY read by lora_B's gradients
    runs = 2 if recompute else 1
    per_token = sum((runs * fwd_in + bwd_in) * i + (runs * fwd_out + bwd_out) * o for i, o in shapes)
    return tokens * per_token
