"""What a compiled kernel issues, read from its SASS (cuobjdump, shipped in the Triton wheel): the main loop's
instructions per iteration and the kind of matrix instruction it runs.

    code = read_sass(report.cubin)              # report: lab/aot.CompileReport of one target
    code.loop_instructions, code.total, code.mma_instruction, code.loop_mix

Loops are found from backward branches (`BRA` to a lower address; the end-of-kernel self-branch is not a loop).
The main loop is the innermost loop that loads global memory (LDG, LDGSTS, a TMA copy); where several are
innermost (loops one after another), the one with a matrix instruction, else the longest. A kernel without such a
loop is straight-line code (loop_instructions 0). Per program a launch then issues about
    trips x loop_instructions + (total - loop_instructions)
instructions per warp (trips from the interpreter trace, lab/sectors.py): the main loop per iteration, everything
else once. For straight-line code with branches (one program takes one branch) the static count over-estimates.
"""
from __future__ import annotations

import functools
import os
import re
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field

_LINE = re.compile(r"^\s*/\*([0-9a-f]{4,})\*/\s+(.*?)\s*;")
_BRANCH = re.compile(r"\bBRA\b(?:\.\S+)?\s+(?:`\(\.L_x_\d+\)\s*)?(0x[0-9a-f]+)")
GLOBAL_LOADS = ("LDG", "LDGSTS", "UTMALDG", "UBLKCP", "UTMAPF")
MATRIX = ("HGMMA", "HMMA", "IMMA", "QGMMA")


@dataclass(frozen=True)
class Instruction:
    address: int
    opcode: str               # e.g. 'HGMMA.64x64x8.F32.TF32', 'LDGSTS.E.BYPASS.128'
    text: str

    @property
    def base(self) -> str:    # 'HGMMA', 'LDGSTS', ...
        return self.opcode.split(".")[0]


@dataclass
class Sass:
    instructions: list
    loops: list                         # (first, last) instruction indices of every loop
    main_loop: tuple | None             # (first, last) or None
    loop_mix: Counter = field(default_factory=Counter)     # base opcode -> count in the main loop

    @property
    def total(self) -> int:
        return len(self.instructions)

    @property
    def loop_instructions(self) -> int:
        return 0 if self.main_loop is None else self.main_loop[1] - self.main_loop[0] + 1

    @property
    def mma_instruction(self) -> str:
        """'wgmma' (HGMMA), 'mma' (HMMA), or 'fma' (no matrix instruction)."""
        bases = {i.base for i in self.instructions}
        return "wgmma" if "HGMMA" in bases else "mma" if "HMMA" in bases else "fma"

    def issued(self, trips: float) -> float:
        """Warp instructions one warp issues in a program whose main loop runs `trips` times."""
        return trips * self.loop_instructions + (self.total - self.loop_instructions)


@functools.lru_cache(maxsize=None)
def _cuobjdump() -> str:
    import triton
    return os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin", "cuobjdump")


def disassemble(cubin: bytes) -> list[Instruction]:
    with tempfile.NamedTemporaryFile(suffix=".cubin") as f:
        f.write(cubin)
        f.flush()
        out = subprocess.run([_cuobjdump(), "-sass", f.name], capture_output=True, text=True, check=True).stdout
    code = []
    for line in out.splitlines():
        m = _LINE.match(line)
        if m:
            text = m.group(2)
            words = text.split()
            opcode = words[1] if words[0].startswith("@") and len(words) > 1 else words[0]
            code.append(Instruction(int(m.group(1), 16), opcode, text))
    return code


def find_loops(code: list[Instruction]) -> list[tuple[int, int]]:
    index = {ins.address: i for i, ins in enumerate(code)}
    loops = []
    for i, ins in enumerate(code):
        m = _BRANCH.search(ins.text) if ins.base == "BRA" else None
        if m:
            target = int(m.group(1), 16)
            if target < ins.address and target in index:
                loops.append((index[target], i))
    return loops


def _contains(outer, inner) -> bool:
    return outer != inner and outer[0] <= inner[0] and inner[1] <= outer[1]


def main_loop(code: list[Instruction], loops) -> tuple[int, int] | None:
    def has(loop, bases):
        return any(code[i].base in bases for i in range(loop[0], loop[1] + 1))
    loading = [lp for lp in loops if has(lp, GLOBAL_LOADS)]
    innermost = [lp for lp in loading if not any(_contains(lp, other) for other in loading)]
    if not innermost:
        return None
    return max(innermost, key=lambda lp: (has(lp, MATRIX), lp[1] - lp[0]))


def read_sass(cubin: bytes) -> Sass:
    code = disassemble(cubin)
    loops = find_loops(code)
    loop = main_loop(code, loops)
    mix = Counter(code[i].base for i in range(loop[0], loop[1] + 1)) if loop else Counter()
    return Sass(code, loops, loop, mix)
