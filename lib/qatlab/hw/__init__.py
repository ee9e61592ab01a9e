"""Hardware cost models: workloads, a systolic-array ASIC and an FPGA dataflow accelerator."""
