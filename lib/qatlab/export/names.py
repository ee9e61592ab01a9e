"""The exported graph's interface: its input and output names and its batch dimension.

The builder (:mod:`.qdq`) writes them and the runner (:mod:`.session`) reads them,
so they live below both.
"""

from __future__ import annotations

INPUT_NAME = "input"  # float32 [N, *input_shape]
LOGITS_NAME = "logits"  # float32 [N, classes]: the dequantized output codes
CODES_NAME = "codes"  # the last QuantizeLinear's integer codes
BATCH_DIM = "N"  # the symbolic batch dimension of every graph input and output

__all__ = ["BATCH_DIM", "CODES_NAME", "INPUT_NAME", "LOGITS_NAME"]
