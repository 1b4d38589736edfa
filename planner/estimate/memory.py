"""The one place that composes the formulas into memory per GPU and per node.

Per GPU, four phases of a training step are evaluated — forward, backward, optimizer step and
checkpoint save — each as a split into the categories that PyTorch's ``MemTracker`` uses
(parameters, gradients, optimizer states, activations, temporaries). The largest phase total
is the peak that ``torch.cuda.max_memory_allocated`` reports; the caching allocator's reserve
and the CUDA context come on top as overhead. Per node, the host holds the processes, what is
offloaded, and the spikes of loading the model and of saving a checkpoint.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

from planner.estimate.memo import per_setup
from planner.formulas import activations as act
from planner.formulas import params as prm
from planner.formulas.allocator import reserved_bytes
from planner.formulas.counts import ParamCounts, count_params
from planner.formulas.dtypes import (
    adapter_bytes_per_elem,
    optimizer_state_bytes,
    optimizer_step_temp_bytes,
)
from planner.formulas.dtypes import spec_dtypes as dtypes
from planner.formulas.fsdp import fsdp2_terms
from planner.formulas.grads import layer_grad_bytes
from planner.formulas.zero import (
    allreduce_copy_bytes,
    offloaded_optimizer_bytes_per_elem,
    prefetch_bucket_elems,
    reduce_bucket_elems,
    reduce_buckets_bytes,
    shard,
    zero3_live_params_bytes,
    zero3_released_bytes,
    zero3_retained_params_bytes,
)
from planner.schema.calibration import Calibration
from planner.schema.catalog import Architecture
from planner.schema.memory import GPU_PHASES, GpuPhase, HostPhase, Split
from planner.schema.spec import TrainingSpec
from planner.units import ceil_div

__all__ = ["GpuMemory", "HostMemory", "ParamCounts", "Split", "gpu_memory", "host_memory", "param_counts"]


@dataclass(frozen=True)
class GpuMemory:
    phases: dict[GpuPhase, Split]
    peak_phase: GpuPhase
    peak_allocated_bytes: int
    peak_reserved_bytes: int
    cuda_context_bytes: int
    activation_items: list[act.Saved] = field(default_factory=list)

    @property
    def split(self) -> Split:
        return self.phases[self.peak_phase]

    @property
    def peak_bytes(self) -> int:
        return self.peak_reserved_bytes + self.cuda_context_bytes


class HostMemory(NamedTuple):
    process_bytes: int
    offloaded_optimizer_bytes: int
    offloaded_parameters_bytes: int
    model_load_bytes: int
    checkpoint_save_bytes: int

    @property
    def phases(self) -> dict[HostPhase, int]:
        train = self.process_bytes + self.offloaded_optimizer_bytes + self.offloaded_parameters_bytes
        return {
            "model_load": self.process_bytes + self.model_load_bytes,
            "train": train,
            "checkpoint_save": train + self.checkpoint_save_bytes,
        }

    @property
    def peak_bytes(self) -> int:
        return max(self.phases.values())


def param_counts(arch: Architecture, spec: TrainingSpec) -> ParamCounts:
    """Parameter counts and byte sizes (``formulas.counts.count_params``, memoised per model and setup)."""
    return per_setup(arch, spec, "param_counts", lambda: count_params(arch, spec))


def gpu_memory(arch: Architecture, spec: TrainingSpec, cal: Calibration) -> GpuMemory:
    """Per-GPU memory in each phase of a step; see the module docstring."""
    dt = dtypes(spec)
    pc = param_counts(arch, spec)
    n, zero, ds = spec.world_size, spec.zero_stage, spec.deepspeed
    offload_opt = spec.offload in ("optimizer", "all")
    L = arch.num_hidden_layers

    # -- parameters: ZeRO-3 shards all but the small persistent ones; --offload all moves the
    #    shards to host memory and streams them in.
    fsdp = fsdp2_terms(arch, spec) if spec.sharding in ("fsdp2", "fsdp1") else None
    if fsdp is not None:
        # FSDP2 keeps every parameter sharded (no persistence threshold); what it gathers is
        # counted below as resident while running (unsharded parameters) and as all-gather /
        # reduce-scatter buffers (temporaries).
        resident, live = ceil_div(pc.weights_bytes, n), 0
        live_top = live_top_layers = live
    elif zero == 3:
        # every parameter has its 1/n partition (``ds_tensor``); the persisted (small) ones
        # also stay whole in ``p.data`` (one rank: the partition is the whole tensor)
        resident = pc.persistent_bytes + ceil_div(pc.weights_bytes, n) if n > 1 else pc.weights_bytes
        if spec.offload == "all":
            resident = pc.persistent_bytes
        # A gather materialises the whole tensor (the all-gather output) beside this rank's own
        # partition, so what can be gathered is every non-persisted parameter in full; with one
        # rank and the parameters on the GPU, p.data is the partition itself and nothing is
        # gathered (harness runs: the gathered bytes of two ranks equal the whole model's).
        not_local = pc.weights_bytes - pc.persistent_bytes if (n > 1 or spec.offload == "all") else 0
        live = zero3_live_params_bytes(
            pc.largest_module_bytes,
            prefetch_bucket_elems(arch, ds) * dt.weight,
            ds.stage3_max_live_parameters * dt.weight,
            not_local,
        )
        # around the turn from forward to backward DeepSpeed also keeps what it will reuse soon,
        # but not what the step's trace never uses again (see zero3_released_bytes)
        after_fwd, after_head = zero3_released_bytes(arch, spec, dt.weight) if not_local else (0, 0)
        reuse = ds.stage3_max_reuse_distance
        live_top = max(live, zero3_retained_params_bytes(reuse, spec.grad_ckpt, dt.weight, not_local - after_fwd))
        live_top_layers = max(live, zero3_retained_params_bytes(reuse, spec.grad_ckpt, dt.weight, not_local - after_fwd - after_head))
    else:
        resident, live = pc.weights_bytes, 0
        live_top = live_top_layers = live

    # -- gradients of trainable parameters, produced layer by layer through backward (top layer
    #    first, the input embedding last) and held until the optimizer step. Stages 2/3 keep a
    #    1/n partition (reduce-scatter through the buckets); with the optimizer offloaded those
    #    partitions live on the host. NB: DeepSpeed's contiguous-gradient buffers keep the
    #    partition allocated between steps; counted here from backward on.
    g = dt.grad
    head = pc.grad_bytes_head
    grads_all = (0 if offload_opt else ceil_div(pc.grad_bytes_total, n)) if zero >= 2 else pc.grad_bytes_total
    # Gradients that stay allocated outside backward: ZeRO-3 keeps its gradient partitions in
    # one flat buffer allocated at init (stage3.py ``grad_partitions_flat_buffer``, on the GPU
    # unless the optimizer is offloaded); with gradient accumulation the summed gradients of
    # earlier micro batches stay allocated through the next ones.
    # FSDP: one decoder layer's gradient as held (the gradient dtype); an FSDP1 unit that mixes
    # frozen and LoRA weights under use_orig_params has a gradient of its whole FlatParameter.
    layer_grad_held = pc.grad_bytes_per_layer
    grad_elem = dt.grad if spec.method == "full" else adapter_bytes_per_elem(spec)
    if fsdp is not None:
        layer_grad_held = fsdp.layer_grad * grad_elem // dt.act
        grads_all = ceil_div(pc.grad_bytes_total + L * (layer_grad_held - pc.grad_bytes_per_layer), n)
    standing = grads_all if (spec.grad_accum > 1 or (zero == 3 and fsdp is None)) else 0
    if fsdp is not None and spec.sharding == "fsdp1" and spec.fsdp_no_sync and spec.grad_accum > 1 and n > 1:
        # Accumulation under FSDP1's no_sync(): the post-backward hook returns before the
        # reduce-scatter (torch/distributed/fsdp/_runtime_utils.py ``_post_backward_hook``), so
        # every unit's unsharded gradient (compute dtype) stays from the first micro batch's
        # backward until the sync micro batch reduces it ("FSDP will accumulate the full model
        # gradients (instead of gradient shards) until the eventual sync", FSDP.no_sync).
        standing = L * fsdp.layer_grad + fsdp.root_grad_all

    # Reduce buckets: allocated whole (reduce_bucket_size elements), for ZeRO-3 at init; one
    # GPU reduces nothing under ZeRO 0/3, but ZeRO 1/2 allocate theirs at the start of every
    # backward whatever the rank count (stage_1_and_2.py ``setup_buckets``), and harness runs
    # find them still held at the step.
    ddp = spec.sharding == "ddp"
    if ddp:
        # torch DDP (no DeepSpeed): the reducer allocates its flat buckets (25 MiB each) over every
        # trainable gradient when it is built (torch/csrc/distributed/c10d/reducer.cpp
        # ``initialize_buckets``), and with ``gradient_as_bucket_view=False`` (its default) they
        # are a second copy of the gradients, held in every phase; with the view the gradients
        # are the buckets, allocated for good. One GPU: no DDP, nothing.
        buckets = standing_buckets = pc.grad_bytes_total if (n > 1 and spec.ddp_grad_copy) else 0
        if n > 1 and not spec.ddp_grad_copy:
            standing = grads_all
    else:
        buckets = reduce_buckets_bytes(zero, reduce_bucket_elems(arch, ds), g, ds) if (n > 1 or zero in (1, 2)) and fsdp is None else 0
        standing_buckets = buckets if zero == 3 else 0

    # -- optimizer: fp32 master (mixed precision) + moments, sharded from stage 1 on.
    opt_full = pc.trainable * dt.master + optimizer_state_bytes(spec.optimizer, dt, pc.trainable)
    torch_states = spec.sharding in ("ddp", "fsdp1") and dt.master == 0 and spec.method != "full" and spec.optimizer == "adamw"
    if torch_states:
        # torch.optim keeps each moment in its parameter's dtype (torch/optim/adamw.py
        # ``_init_group``: ``torch.zeros_like(p, memory_format=torch.preserve_format)``): fp32
        # LoRA adapters get fp32 moments over a bf16 base
        opt_full = 2 * (pc.lora * adapter_bytes_per_elem(spec) + pc.modules_to_save * dt.weight)
    opt = 0 if offload_opt else shard(opt_full, n, zero >= 1)
    # Optimizer-step scratch: the fp32 gradient copy ZeRO makes for its master partition and
    # foreach AdamW's sqrt buffer, for one sub-group (stage 3) or the whole partition.
    step_elems = ceil_div(pc.trainable, n) if zero >= 1 else pc.trainable
    if zero == 3 and fsdp is None:  # FSDP2 steps the whole shard with one foreach AdamW
        step_elems = min(step_elems, ds.sub_group_size)
    step_temp = 0
    step_grads = grads_all
    if not offload_opt:
        # Mixed precision steps the fp32 masters on an fp32 copy of the 16-bit gradients, alive
        # through the update, next to the optimizer's own scratch. ZeRO makes that copy from a
        # flat 16-bit one (stage_1_and_2.py / stage3.py ``self.flatten(grads).to(fp32)``), which
        # is freed before the update starts: whichever of the two is larger sets the peak.
        # Under ZeRO 1-3 the copy is the fp32 partition's ``.grad`` (a gradient, as harness runs
        # label it): stages 1/2 free their 16-bit partition once it is made
        # (stage_1_and_2.py ``averaged_gradients[i] = None``), stage 3 keeps its flat buffer.
        fp32_grads = 4 * step_elems if dt.master else 0
        flat16 = g * step_elems if (dt.master and zero >= 1) else 0
        scratch = optimizer_step_temp_bytes(spec.optimizer, dt, step_elems, cal.value("optimizer_scratch_states"))
        if torch_states:  # one moment's worth per scratch state, in the moments' dtypes
            scratch = int(cal.value("optimizer_scratch_states") * opt_full // 2)
        if spec.sharding != "deepspeed" and spec.adamw_impl == "fused":
            # torch's fused AdamW updates every tensor in one kernel (torch/optim/adam.py
            # ``_fused_adam`` -> ``torch._fused_adam_``): no state-sized temporary
            scratch = 0
        if zero >= 1 and fsdp is None and fp32_grads:
            # (stage 1 too: over two ranks its full 16-bit gradients are gone by the step, and
            # only the fp32 partition is held; with accumulation the summed gradients stay)
            step_grads = fp32_grads + (standing if zero == 3 else buckets + standing)
            step_temp = max(flat16, scratch)
        elif zero == 0 and fsdp is None and fp32_grads and cal.value("optimizer_per_tensor_step") >= 0.5:
            # DeepSpeed without ZeRO and with an optimizer other than its FusedAdam (e.g.
            # torch's AdamW, as harness runs on CPU use) wraps it in FP16_UnfusedOptimizer:
            # every parameter's fp32 gradient copy is made (and held, beside the 16-bit
            # gradients) before the step, which then updates one fp32 master at a time, so the
            # scratch is that of the largest parameter (fp16/unfused_optimizer.py). With
            # FusedAdam (a config's "AdamW" on CUDA) FP16_Optimizer flattens the fp32 copies
            # into one gradient: the composition below (fp16/fused_optimizer.py).
            step_grads = grads_all + fp32_grads
            largest = prm.largest_trainable_elems(arch, spec, pc.trainable, pc.largest_module_bytes, dt.weight)
            step_temp = optimizer_step_temp_bytes(spec.optimizer, dt, largest, cal.value("optimizer_scratch_states"))
        else:
            step_temp = fp32_grads + max(flat16, scratch)

    # Without ZeRO, DeepSpeed all-reduces the 16-bit gradients at the accumulation boundary, at
    # the end of backward (engine.py ``_backward_epilogue`` -> ``allreduce_gradients`` ->
    # ``allreduce_bucket``), through one flat copy of up to 5e8 elements (MEMORY_OPT_ALLREDUCE_SIZE)
    # beside the gradients; it is gone by the step. Harness runs over two ranks: the end of
    # backward is then the phase's peak (7b-tiny full: exactly gradients + one copy).
    allreduce_copy = 0
    if zero == 0 and n > 1 and fsdp is None and not offload_opt and not ddp:
        allreduce_copy = allreduce_copy_bytes(grads_all, g)
    dequant = 0
    if spec.method == "qlora":  # bnb dequantizes one weight to 16 bit for each matmul
        dequant = prm.qlora_dequant_bytes(arch, dt.act)

    # -- activations.
    full_mask = cal.value("dropout_mask_full_width") >= 0.5
    layer = act.layer_inventory(arch, spec, dt, full_mask)
    layer_bytes = act.total(layer)
    # Saved bytes by stage (index -1: held to the layer's end) and their running sums, so a
    # moment's "saved before stage k" is one lookup.
    by_stage = [0] * (len(act.LAYER_STAGES) + 1)
    stage_of_item = {}
    for x in layer:
        st = act.stage_of(x)
        stage_of_item[x.name] = (st, x.bytes)
        by_stage[st] += x.bytes  # st == -1 lands in the last slot
    before = [0]
    for st in range(len(act.LAYER_STAGES)):
        before.append(before[-1] + by_stage[st])

    def saved_before(freed_from: int, also_freed: tuple[str, ...] = ()) -> int:
        """This layer's saved bytes while stages from ``freed_from`` on are not (yet / any more) held."""
        kept = by_stage[-1] + (before[freed_from] if freed_from >= 0 else before[-1])
        for name in also_freed:
            st, nbytes = stage_of_item.get(name, (len(act.LAYER_STAGES), 0))
            if 0 <= st < (freed_from if freed_from >= 0 else len(act.LAYER_STAGES)):
                kept -= nbytes
        return kept

    stage_grads = per_setup(arch, spec, "stage_grads", lambda: {st: layer_grad_bytes(arch, spec, (st,)) for st in act.LAYER_STAGES})
    model_items = act.model_level_saved(arch, spec, dt, full_mask)
    first_unsaved = act.first_layer_unsaved_bytes(arch, spec, dt, full_mask)
    model_bytes = act.total(model_items) - first_unsaved
    ckpt_in = act.layer_checkpoint_input(arch, spec, dt).bytes
    per_layer_saved = ckpt_in if spec.grad_ckpt else layer_bytes

    layer_moments = act.layer_backward_moments(arch, spec, dt)
    # Autocast caches a bf16 copy of every trainable fp32 weight until the outermost autocast
    # exits (torch/amp/autocast_mode.py; accelerate wraps the whole forward): with
    # checkpointing those copies are not among the saved tensors, so they come on top.
    autocast_cache = 0
    if spec.precision == "amp-bf16" and spec.method == "full":
        lm_head = prm.vocab(arch, spec.added_tokens) * arch.hidden_size * dt.act
        autocast_cache = lm_head + (L * act.autocast_weight_cast_bytes(arch, dt) if spec.grad_ckpt else 0)
    fwd_loss = Split(
        parameters=resident,
        gradients=standing,
        optimizer_states=opt,
        activations=L * per_layer_saved + model_bytes + act.loss_forward_transient(arch, spec, dt) + autocast_cache,
        temporaries=live_top + dequant + standing_buckets,
    )
    # Inside the top layer's forward: the layers below saved, this one's transients on top.
    head_items = ("final_norm", "lm_head", "logits", "log_softmax_fp32")
    below_fwd = act.total([x for x in model_items if not x.name.startswith(head_items)]) - first_unsaved

    def fwd_layer(m: act.BackwardMoment) -> Split:
        if spec.grad_ckpt:  # nothing of this layer is saved but its input
            current = ckpt_in
        else:  # this layer's saved tensors up to the moment (the probabilities not yet made)
            current = saved_before(m.freed_from, ("attn.probs",) if m.name == "attention" else ())
        acts = (L - 1) * per_layer_saved + current + below_fwd + m.temporaries + autocast_cache
        if fsdp is not None:  # root and this layer gathered, its all-gather output alive
            return Split(resident + fsdp.root + fsdp.layer, standing, opt, acts, fsdp.layer + dequant)
        return Split(resident, standing, opt, acts, live_top + dequant + standing_buckets)

    if fsdp is not None:  # the root stays gathered; the last layer's all-gather output is kept
        fwd_loss = Split(resident + fsdp.root, standing, opt, fwd_loss.activations, fsdp.layer + dequant)
    fwd_moments = [fwd_loss, *(fwd_layer(m) for m in act.layer_forward_moments(arch, spec, dt))]
    if fsdp is not None:
        # gathering the top layer: the previous layer's all-gather output is still referenced
        # until this one's has been waited on (two buffers), the layers below saved
        acts = L * per_layer_saved + below_fwd + autocast_cache
        fwd_moments.append(Split(resident + fsdp.root + fsdp.layer, standing, opt, acts, 2 * fsdp.layer + dequant))
    fwd = max(fwd_moments, key=lambda x: x.total)
    # The training loop keeps only the loss (HF Trainer's ``compute_loss`` drops ``outputs``):
    # the logits die with the forward; log_softmax keeps its fp32 output for backward. A loop
    # that keeps ``outputs`` (``keep_outputs``) holds the logits through the whole backward.
    logits = act.total([x for x in model_items if x.name == "logits"])
    returned = spec.tokens_per_micro_batch * prm.vocab(arch, spec.added_tokens) * act.returned_logits_elem_bytes(spec, dt)
    kept_logits = returned if spec.keep_outputs else 0
    saved_model = model_bytes - logits + kept_logits
    # Inside the layers' backward the head's saved tensors (final norm, lm_head input,
    # log-probabilities) are gone; what the embedding end keeps stays.
    below = below_fwd + kept_logits
    # A tied, trainable embedding gets two gradient contributions; autograd sums them in its
    # input buffer before the weight's AccumulateGrad, so lm_head's (V x h) waits there as a
    # temporary through the layers' backward, and at the end it, the embedding's and their sum
    # coexist (three V x h) before the sum becomes the gradient.
    tied = 0
    if arch.tie_word_embeddings and spec.method == "full":
        tied = prm.embedding_params(arch, spec.added_tokens) * (dt.act if fsdp is not None else dt.grad)

    def layer_moment(k: int, m: act.BackwardMoment, grads_before: int) -> Split:
        """The k-th layer from the bottom (k layers still to do) at moment m of its backward."""
        kept = saved_before(m.freed_from, m.also_freed)
        # Checkpointing re-runs the layer and keeps its input until the layer's backward ends.
        # With an fp32 residual stream (amp-bf16, fp32) the norm's ``.to(float32)`` is a no-op,
        # so the tensor it keeps is that input itself.
        current = (ckpt_in + kept - (ckpt_in if dt.resid == 4 else 0)) if spec.grad_ckpt else kept
        done = sum(stage_grads[st] for st in act.LAYER_STAGES[m.freed_from :])
        grads = held(grads_before + done)
        acts = (k - 1) * per_layer_saved + current + below
        if fsdp is not None:
            return fsdp_backward(k, acts, m.temporaries + tied, done)
        gathered = live_top_layers if k == L else live
        return Split(resident, max(grads, standing), opt, acts, gathered + dequant + m.temporaries + tied + buckets)

    def fsdp_backward(k: int, acts: int, temps: int, layer_grads: int) -> Split:
        """FSDP2 in the k-th layer's backward: root and this layer gathered, one all-gather and
        one reduce-scatter buffer; the layers above reduced to shards, the last of them still
        a temporary (the reduce-scatter output is added into the sharded gradient when the
        next one starts); lm_head's gradient and this layer's (in the compute dtype)
        unsharded until their reduce-scatter."""
        assert fsdp is not None
        reduced = ceil_div(layer_grad_held, n) if k < L else 0
        sharded = max(ceil_div((L - k) * layer_grad_held, n) - reduced, standing)
        # this layer's gradient in the compute dtype, as far as it is made (a whole FlatParameter
        # gets its gradient once every view's is made: at the layer's end)
        current = fsdp.layer_grad if layer_grads == layer_grad_held else layer_grads * dt.act // grad_elem
        grads = sharded + fsdp.root_grad + current
        return Split(resident + fsdp.root + fsdp.layer, grads, opt, acts, fsdp.layer + fsdp.reduce_scatter + reduced + dequant + temps)

    def recompute_end(k: int) -> Split:
        """The k-th layer from the bottom at the end of its re-run (checkpointing only)."""
        extra_acts, temps = act.recompute_end_bytes(arch, spec, dt)
        current = ckpt_in + layer_bytes - (ckpt_in if dt.resid == 4 else 0)
        acts = (k - 1) * per_layer_saved + current + below + extra_acts
        if fsdp is not None:
            return fsdp_backward(k, acts, temps + tied, 0)
        grads = held(head + (L - k) * pc.grad_bytes_per_layer)
        gathered = live_top_layers if k == L else live
        return Split(resident, max(grads, standing), opt, acts, gathered + dequant + temps + tied + buckets)

    def held(grads: int) -> int:
        """Gradient bytes on this GPU: ZeRO 2/3 keep a 1/n partition (none with the optimizer offloaded)."""
        return (0 if offload_opt else ceil_div(grads, n)) if zero >= 2 else grads

    loss_acts, loss_grads = L * per_layer_saved + saved_model, act.loss_backward_transient(arch, spec)
    layer_moments_all = [
        # the top layer (all others still saved) and the bottom one (gradients nearly complete)
        *(layer_moment(L, m, head) for m in layer_moments),
        *(layer_moment(1, m, head + (L - 1) * pc.grad_bytes_per_layer) for m in layer_moments),
        *([recompute_end(L), recompute_end(1)] if spec.grad_ckpt else []),
    ]
    if fsdp is None:
        moments = [
            # the loss gradient: everything saved plus the fp32 gradients of log_softmax
            Split(resident, standing, opt, loss_acts, live_top + loss_grads + standing_buckets),
            *layer_moments_all,
            # the embedding gradient closes backward
            Split(
                resident, max(standing, grads_all - (ceil_div(tied, n) if zero >= 2 else tied)), opt, kept_logits, live + buckets + 3 * tied
            ),
            # then ZeRO-0's all-reduce over several GPUs
            Split(resident, max(standing, grads_all), opt, kept_logits, live + buckets + allreduce_copy),
        ]
    else:
        # the root's backward ends: a tied embedding's contributions summed (the bottom layer's
        # reduce-scatter input still held), then every root gradient unsharded next to its own
        layers_sharded = max(ceil_div(L * layer_grad_held, n), standing)
        resid_grad = dt.resid * spec.tokens_per_micro_batch * arch.hidden_size
        moments = [
            Split(resident + fsdp.root, standing, opt, loss_acts, fsdp.layer + loss_grads),
            *layer_moments_all,
            # the end of a layer's backward: all its gradients made, its saved tensors freed
            fsdp_backward(1, below, resid_grad, layer_grad_held),
            fsdp_backward(L, (L - 1) * per_layer_saved + below, resid_grad, layer_grad_held),
            Split(resident + fsdp.root, layers_sharded + fsdp.root_grad, opt, 0, 3 * tied + fsdp.reduce_scatter),
            Split(resident + fsdp.root, layers_sharded + fsdp.root_grad_all, opt, 0, fsdp.root_reduce_scatter),
        ]
    bwd = max(moments, key=lambda x: x.total)
    step = Split(resident, step_grads, opt, 0, step_temp + standing_buckets)
    save = Split(resident, standing, opt, 0, (live if zero == 3 else 0) + standing_buckets)
    phases: dict[GpuPhase, Split] = {"forward": fwd, "backward": bwd, "optimizer_step": step, "checkpoint_save": save}
    peak_phase = max(GPU_PHASES, key=lambda p: phases[p].total)
    allocated = phases[peak_phase].total
    reserved = reserved_bytes(allocated, cal.value("allocator_reserve_fraction"))
    items = [act.Saved(f"layer.{x.name}", x.bytes) for x in layer] + model_items
    return GpuMemory(
        phases=phases,
        peak_phase=peak_phase,
        peak_allocated_bytes=allocated,
        peak_reserved_bytes=reserved,
        cuda_context_bytes=cal.bytes("cuda_context_bytes"),
        activation_items=items,
    )


def host_memory(arch: Architecture, spec: TrainingSpec, cal: Calibration, save_bytes: int) -> HostMemory:
    """Host RAM of one node (the one with rank 0, which gathers checkpoints).

    Offloaded optimizer (DeepSpeed ZeRO-Offload, Ren et al. 2021, §4): fp32 master partition,
    two fp32 Adam moments (DeepSpeedCPUAdam) and the fp32 gradient partition: 16 bytes per
    trainable element, split over all ranks. Offloaded parameters: the 16-bit partitions.
    Loading: without ZeRO-3 init every rank materialises the whole model; with it, one
    checkpoint shard at a time. Saving: rank 0 gathers the whole 16-bit state dict on the host
    (DeepSpeed ``_zero3_consolidated_16bit_state_dict``, which accelerate's ``get_state_dict``
    calls, also for LoRA) and safetensors serialises one shard in memory before writing it.
    """
    dt = dtypes(spec)
    pc = param_counts(arch, spec)
    n, ranks = spec.world_size, spec.gpus_per_node
    process = ranks * cal.bytes("host_process_bytes")
    offload_opt = 0
    if spec.offload in ("optimizer", "all"):
        # fp32 master + two fp32 moments + fp32 gradient; ZeRO-3 also pins its 16-bit gradient
        # partition buffer on the host (stage3.py grad_partitions_flat_buffer).
        per_elem = offloaded_optimizer_bytes_per_elem(spec.zero_stage, dt.grad)
        offload_opt = ranks * ceil_div(pc.trainable * per_elem, n)
    offload_params = ranks * ceil_div(pc.weights_bytes, n) if spec.offload == "all" else 0
    if spec.zero_stage == 3 or spec.method == "qlora":
        load = ranks * min(cal.bytes("load_shard_bytes"), pc.weights_bytes)
    else:
        load = ranks * pc.weights_bytes
    # The consolidated state dict holds every parameter in the dtype it is trained in (NF4 data
    # for a QLoRA base, fp32 for peft's adapters).
    gathered = pc.weights_bytes if spec.zero_stage == 3 else 0
    save = gathered + min(cal.bytes("save_shard_bytes"), save_bytes)
    return HostMemory(
        process_bytes=process,
        offloaded_optimizer_bytes=offload_opt,
        offloaded_parameters_bytes=offload_params,
        model_load_bytes=load,
        checkpoint_save_bytes=save,
    )
