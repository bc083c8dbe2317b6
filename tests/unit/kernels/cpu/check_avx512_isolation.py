#!/usr/bin/env python3
"""Fails if a binary runs AVX-512 code outside the AVX-512 MatMul kernels.

kernels/cpu/matmul_avx512.cc and matmul_bf16dot.cc are the only files compiled with
AVX-512, and each is entered only when the CPU has what it was compiled for. An inline
function or template that one of them instantiates out of line could be the copy the
linker keeps for every caller, and then an AVX2-only CPU would fault (SIGILL) in unrelated
code. This scans the disassembly for zmm registers, mask registers
and xmm/ymm 16-31 (EVEX-only) and names every function outside the allowed ones that
uses them.

usage: check_avx512_isolation.py BINARY [--self-test]
"""
import re
import subprocess
import sys

ALLOWED = re.compile(r"spanserve::kernels::cpu::internal::")
EVEX = re.compile(r"%zmm\d+|%k[1-7]\b|%[xy]mm(1[6-9]|2\d|3[01])\b|\{1to\d+\}")
FUNCTION = re.compile(r"^[0-9a-f]+ <(.*)>:$")


def offenders(disassembly):
    found = {}
    function = None
    for line in disassembly.splitlines():
        m = FUNCTION.match(line)
        if m:
            function = m.group(1)
            continue
        if function and EVEX.search(line) and not ALLOWED.search(function):
            found.setdefault(function, line.strip())
    return found


def self_test():
    good = "0 <spanserve::kernels::cpu::internal::Micro<4, 6>(x)>:\n  1: vfmadd231ps %zmm1,%zmm2,%zmm3\n"
    bad = "0 <std::vector<float>::_M_default_append(unsigned long)>:\n  1: vmovups %zmm0,(%rax)\n"
    assert not offenders(good), "allowed function reported"
    assert offenders(bad), "AVX-512 in std::vector not reported"
    assert offenders("0 <f()>:\n  1: vpxord %ymm17,%ymm17,%ymm17\n")
    assert not offenders("0 <f()>:\n  1: vaddps %ymm1,%ymm15,%ymm15\n")
    print("self-test passed")


def main():
    if "--self-test" in sys.argv:
        self_test()
        return 0
    binary = sys.argv[1]
    disassembly = subprocess.run(["objdump", "-d", "--no-show-raw-insn", "-C", binary],
                                 check=True, capture_output=True, text=True).stdout
    found = offenders(disassembly)
    for function, line in sorted(found.items()):
        print(f"{binary}: AVX-512 outside the AVX-512 kernels in {function}: {line}")
    if found:
        return 1
    print(f"{binary}: AVX-512 only in spanserve::kernels::cpu::internal")
    return 0


if __name__ == "__main__":
    sys.exit(main())
