"""The memory vocabulary: which categories bytes fall into and which phases of a step are told apart.

Every module that names a category or a phase imports it from here (the harness, the
records, the plan, the composition, the tables and the pictures), so the five categories and
the phase lists are spelled once.

Three types hold "bytes by category"; they share the category names but have different jobs:

* ``Split`` (here): the composition's working value, a NamedTuple built hundreds of
  times per plan (``planner.estimate.memory.gpu_memory``); no validation, so it stays cheap.
  Fields are the categories themselves.
* ``planner.schema.records.CategoryBytes``: a *measured* split in a committed record
  (``data/measurements/**.jsonl``), validated on load (non-negative). Same field names as
  ``Split``: the agreement code compares the two attribute by attribute.
* ``planner.schema.plan.CategorySplit`` (and the category fields of ``PerGpu``): the ``--json``
  contract, keys ``<category>_bytes``. ``split.json_fields()`` gives exactly those keys.

The pydantic two are contracts (committed records, public JSON) and keep their names; ``Split``
is internal and gives the JSON keys through ``json_fields``.
"""

from __future__ import annotations

from typing import Literal, NamedTuple, get_args

#: Where live tensor bytes are counted, as PyTorch's ``MemTracker``
#: (``torch.distributed._tools.mem_tracker``) splits them: module parameters (buffers with
#: them), their gradients, the optimizer's states (fp32 master copies included), tensors saved
#: for backward, and everything else alive (communication buckets, gathered parameters,
#: activation gradients, optimizer scratch).
Category = Literal["parameters", "gradients", "optimizer_states", "activations", "temporaries"]
#: The categories in display and stacking order.
CATEGORIES: tuple[Category, ...] = get_args(Category)

#: The phases of one training step on a GPU that the planner evaluates; the largest total
#: is the peak ``torch.cuda.max_memory_allocated`` reports.
GpuPhase = Literal["forward", "backward", "optimizer_step", "checkpoint_save"]
GPU_PHASES: tuple[GpuPhase, ...] = get_args(GpuPhase)

#: What the harness measures per phase (``harness trace`` and ``harness run``): the GPU phases
#: less the checkpoint save, which it does not trace.
MeasuredPhase = Literal["forward", "backward", "optimizer_step"]
MEASURED_PHASES: tuple[MeasuredPhase, ...] = get_args(MeasuredPhase)

#: The moments of a node's host RAM: loading the model, training (processes and what is
#: offloaded), and rank 0 gathering and serialising a checkpoint on top of training.
HostPhase = Literal["model_load", "train", "checkpoint_save"]
HOST_PHASES: tuple[HostPhase, ...] = get_args(HostPhase)


class Split(NamedTuple):
    """Bytes on one GPU by category at one moment of a step (see the module docstring)."""

    parameters: int = 0
    gradients: int = 0
    optimizer_states: int = 0
    activations: int = 0
    temporaries: int = 0

    @property
    def total(self) -> int:
        return self.parameters + self.gradients + self.optimizer_states + self.activations + self.temporaries

    def json_fields(self) -> dict[str, int]:
        """``{"<category>_bytes": n}``: the keys of ``CategorySplit`` and of ``PerGpu``'s split."""
        return {f"{c}_bytes": getattr(self, c) for c in CATEGORIES}
