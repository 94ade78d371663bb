// The Python module reidfast._C. Loading it runs the static TORCH_LIBRARY registrations; it exposes only build
// facts. Kept apart from the kernels so that no kernel file pays for <torch/extension.h>.
#include <Python.h>

#ifndef REIDFAST_CUDA_ARCHS
#define REIDFAST_CUDA_ARCHS ""
#endif
// Written by setup.py (torch version and sources digest); absent in builds that do not go through it.
#if __has_include("reidfast_build_info.h")
#include "reidfast_build_info.h"
#else
#define REIDFAST_TORCH_VERSION ""
#define REIDFAST_SOURCES_HASH ""
#endif

static struct PyModuleDef reidfast_module = {PyModuleDef_HEAD_INIT, "_C",
                                             "reidfast compiled kernels (ops live in torch.ops.reidfast)", -1,
                                             nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&reidfast_module);
  if (module == nullptr) return nullptr;
#ifdef REIDFAST_WITH_CUDA
  PyModule_AddIntConstant(module, "with_cuda", 1);
#else
  PyModule_AddIntConstant(module, "with_cuda", 0);
#endif
  PyModule_AddStringConstant(module, "cuda_archs", REIDFAST_CUDA_ARCHS);
  PyModule_AddStringConstant(module, "torch_version", REIDFAST_TORCH_VERSION);
  PyModule_AddStringConstant(module, "sources_hash", REIDFAST_SOURCES_HASH);
  return module;
}
