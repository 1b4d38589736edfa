"""harness.memory_phases' accounting of a phase's allocations, on a hand-made profile.

The profiler's timeline files every allocation it cannot tie to a tensor under one key per
device (``Key(device)``), so those are matched by address from the event tree: a ZeRO-3
backward frees forward tensors that way, and matching them by key counted each but the last
again (ZeRO-3 LoRA runs read up to 4.4 MiB of temporaries too high).
"""

from __future__ import annotations

from types import SimpleNamespace

import pytest

torch = pytest.importorskip("torch")
pytestmark = pytest.mark.harness

from torch._C._profiler import _EventType  # noqa: E402
from torch.profiler._memory_profiler import Action, Key  # noqa: E402

from harness.memory_phases import PhaseProfiler  # noqa: E402

MiB = 2**20
CPU = torch.device("cpu")


def _event(t: int, ptr: int, nbytes: int, parent=None):
    alloc = SimpleNamespace(ptr=ptr, alloc_size=nbytes, device=CPU, id=None, allocation_id=None)
    return SimpleNamespace(typed=(_EventType.Allocation, alloc), start_time_ns=t, parent=parent, name="[memory]")


def _profile(events):
    """What torch's MemoryProfile.timeline makes of untied allocations (see its ``timeline``)."""
    key = Key(CPU)
    timeline, live = [], set()
    for e in events:
        a = e.typed[1]
        if a.alloc_size > 0:
            live.add(a.ptr)
            timeline.append((e.start_time_ns, Action.CREATE, (key, 0), a.alloc_size))
        else:
            timeline.append((e.start_time_ns, Action.DESTROY, (key, 0), -a.alloc_size))
            if a.ptr not in live:
                timeline.append((-1, Action.PREEXISTING, (key, 0), -a.alloc_size))
            live.discard(a.ptr)
    timeline.sort(key=lambda x: (x[0], x[1].value))
    mp = SimpleNamespace(timeline=tuple(timeline), _op_tree=SimpleNamespace(dfs=lambda: iter(events)))
    return SimpleNamespace(_memory_profile=lambda: mp)


def test_untied_frees_of_the_baseline_take_back_its_bytes():
    # three forward activations (labelled before the phase) freed untied, then a 4 MiB buffer
    before = {ptr: ("activations", MiB) for ptr in (0x1000, 0x2000, 0x3000)}
    events = [_event(10, 0x1000, -MiB), _event(20, 0x2000, -MiB), _event(30, 0x3000, -MiB), _event(40, 0x9000, 4 * MiB)]
    ph = PhaseProfiler(CPU)._peak(_profile(events), before, {})
    assert ph.peak_bytes == 4 * MiB
    assert ph.at_peak == {"parameters": 0, "gradients": 0, "optimizer_states": 0, "activations": 0, "temporaries": 4 * MiB}
    assert ph.alive_at_end == {0x9000: ("temporaries", 4 * MiB)}


def test_untied_allocations_are_matched_to_their_own_frees():
    # two overlapping untied buffers, then an unknown one alive before the phase is freed
    events = [_event(10, 0xA000, 2 * MiB), _event(20, 0xB000, 3 * MiB), _event(30, 0xA000, -2 * MiB)]
    events += [_event(40, 0xC000, -MiB), _event(50, 0xB000, -3 * MiB)]
    ph = PhaseProfiler(CPU)._peak(_profile(events), {}, {})
    assert ph.peak_bytes == (1 + 2 + 3) * MiB  # the preexisting one counted from the start
    assert ph.alive_at_end == {}


def test_an_untied_buffer_that_survives_takes_its_end_of_phase_label():
    events = [_event(10, 0xA000, 2 * MiB)]
    ph = PhaseProfiler(CPU)._peak(_profile(events), {}, {0xA000: ("gradients", 2 * MiB)})
    assert ph.at_peak["gradients"] == 2 * MiB and ph.alive_at_end == {0xA000: ("gradients", 2 * MiB)}


def test_another_devices_allocations_are_not_counted():
    """A GPU run's profile also records the host's allocations; they are not the GPU's."""
    from torch.profiler._memory_profiler import TensorKey

    gpu = torch.device("cuda", 0)
    host_key = TensorKey._make(7, 0x5000, 7, CPU)
    assert host_key is not None
    events = [_event(10, 0xA000, 2 * MiB)]
    prof = _profile(events)
    mp = prof._memory_profile()
    mp.timeline = ((5, Action.CREATE, (host_key, 0), 8 * MiB), *mp.timeline)
    mp._categories = SimpleNamespace(get=lambda *a: None)
    ph = PhaseProfiler(gpu)._peak(SimpleNamespace(_memory_profile=lambda: mp), {}, {})
    assert ph.peak_bytes == 0  # the 2 MiB untied one is on the CPU too, the 8 MiB tensor as well
    ph = PhaseProfiler(CPU)._peak(SimpleNamespace(_memory_profile=lambda: mp), {}, {})
    assert ph.peak_bytes == 10 * MiB
