// DRPOSE_HD marks the inline maths that both the C++ (CPU) kernels and the CUDA kernels call:
// `__host__ __device__` under nvcc, nothing for the host compiler. A header of per-element maths
// (csrc/*_math.h) includes this and marks every function DRPOSE_HD, so the CPU tests run the
// exact code a GPU runs; only indexing and launch differ between <op>_cpu.cpp and <op>_cuda.cu.
#pragma once

#ifndef DRPOSE_HD
#if defined(__CUDACC__)
#define DRPOSE_HD __host__ __device__
#else
#define DRPOSE_HD
#endif
#endif
