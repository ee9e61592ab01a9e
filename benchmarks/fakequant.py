"""fake_quantize forward+backward vs torch's native fused op (ratio in the same run).

    python benchmarks/fakequant.py [--size 4096] [--repeats 15]
"""
import argparse
import json

from workbook.bench import fakequant, machine

if __name__ == "__main__":
    ap = argparse.ArgumentParser()
    ap.add_argument("--size", type=int, default=4096)
    ap.add_argument("--repeats", type=int, default=15)
    a = ap.parse_args()
    print(json.dumps({"machine": machine()}))
    for row in fakequant(a.size, a.repeats):
        print(json.dumps(row))
