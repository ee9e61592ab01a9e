"""qatlab: quantization-aware training, integer models and their hardware cost.

Layering (nothing lower imports anything higher):
``quant`` (math) <- ``nn`` (autograd, modules) <- ``intmodel`` <- ``kernels``/``hw``/export
<- ``train`` <- ``workbook``.
"""

__version__ = "0.1.0"
